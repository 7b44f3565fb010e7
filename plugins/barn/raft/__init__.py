"""The raft Barn backend: the Barn state machine replicated with pysyncobj (patched: _vendor/pysyncobj/syncobj.py)."""
