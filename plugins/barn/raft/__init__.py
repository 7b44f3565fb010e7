"""The raft Barn backend: the Barn state machine replicated with pysyncobj (patched: see syncobj.py)."""
