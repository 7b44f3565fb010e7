"""Admission plugins: rules a job must pass before anything of it is stored (runink_admit)."""
