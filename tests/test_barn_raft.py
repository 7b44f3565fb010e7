"""The raft Barn: three real server processes on loopback pass the Barn conformance suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from barn_cluster import Cluster

from runink.core.interfaces.barn import BarnBackend
from runink.testing import BarnConformance
from runink.testing.barn import COMPACTION_HISTORY


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    group = Cluster(Path(tmp_path_factory.mktemp("barn")), history=COMPACTION_HISTORY)
    group.start()
    group.leader()
    yield group
    group.stop()


class TestRaftBarn(BarnConformance):
    driver_name = "raft"

    @pytest.fixture
    def barn(self, cluster: Cluster) -> Iterator[BarnBackend]:
        client = cluster.client()
        yield client
        client.close()
