"""Default plugins, each registered through an entry point exactly as a third-party one would be."""
