"""pysyncobj 0.3.17's syncobj.py, patched (see the header of syncobj.py); MIT, see LICENSE here."""
