"""pytest plugin (entry point ``pytest11: runink``): fixtures for plugin authors.

``runink_plugins``: a fresh plugin manager with the installed plugins, for the test;
call ``runink_plugins.register(obj, name)`` to add one for this test only.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runink.core.plugins import PluginManager
from runink.testing.plugins import plugin_manager


@pytest.fixture
def runink_plugins() -> Iterator[PluginManager]:
    with plugin_manager() as manager:
        yield manager
