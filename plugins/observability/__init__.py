"""Observability: metric and log exporters (hook plugins)."""
