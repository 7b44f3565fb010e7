"""Scheduling: default filter/score hook plugins and scheduler policy drivers."""
