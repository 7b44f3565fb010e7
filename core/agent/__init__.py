"""The Runi agent: runs on each worker node the tasks the control plane assigns to it."""

from runink.core.agent.agent import Agent, Control

__all__ = ["Agent", "Control"]
