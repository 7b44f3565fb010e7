"""Third-party code kept in the tree, each under its upstream licence (out of ruff; mypy skips it)."""
