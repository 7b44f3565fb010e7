"""The committed code generated from core/server/proto/agent.proto is what grpc_tools makes of
it now: regenerated into a temporary folder with the command core/server/proto/README.md
gives, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

grpc_tools = pytest.importorskip("grpc_tools")
from grpc_tools import protoc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "core" / "server" / "proto"
GENERATED = ("agent_pb2.py", "agent_pb2.pyi", "agent_pb2_grpc.py")


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    include = str(Path(protoc.__file__).parent / "_proto")  # protobuf's own .proto files
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{include}",
            f"-Irunink/core/server/proto={PROTO}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            "runink/core/server/proto/agent.proto",
        ]
    )
    assert status == 0
    made = tmp_path / "runink" / "core" / "server" / "proto"
    assert sorted(p.name for p in made.iterdir()) == sorted(GENERATED)
    for name in GENERATED:
        assert (made / name).read_bytes() == (PROTO / name).read_bytes(), (
            f"core/server/proto/{name} is stale: regenerate it (core/server/proto/README.md)"
        )


def test_the_generated_code_imports_as_part_of_runink() -> None:
    from runink.core.server.proto import CONNECT, agent_pb2, agent_pb2_grpc

    assert agent_pb2.DESCRIPTOR.package == "runink.agent.v1"
    assert agent_pb2.DESCRIPTOR.name == "runink/core/server/proto/agent.proto"
    assert agent_pb2_grpc.AgentServiceStub.__module__ == "runink.core.server.proto.agent_pb2_grpc"
    service = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
    assert f"/{service.full_name}/{service.methods_by_name['Connect'].name}" == CONNECT
