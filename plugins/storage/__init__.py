"""Storage drivers for local files (entry-point group ``runink.storage``): csv, jsonl, parquet."""
