"""LLM annotator drivers (entry-point group ``runink.annotators``) land here."""
