"""Barn backends: memory (one process) and raft (pysyncobj)."""
