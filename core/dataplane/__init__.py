"""The data plane: what runs inside a slice (source -> contract -> steps -> sinks, streamed)."""
