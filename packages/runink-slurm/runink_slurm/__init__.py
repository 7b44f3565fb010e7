"""runink-slurm: a Runink executor driver that runs each task as a Slurm batch job.

Select it in runink.toml with ``[executor] driver = "slurm"``; see README.md for its options.
"""

__version__ = "0.1.0"
