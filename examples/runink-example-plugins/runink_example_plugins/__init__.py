"""Example third-party plugins for Runink (see README.md)."""
