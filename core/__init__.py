"""Minimal core of Runink: hook specifications, plugin manager, driver interfaces, config, CLI."""
