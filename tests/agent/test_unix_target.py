"""gRPC's own limit on unix socket paths (105 bytes, below the kernel's 107): the agent's
servers and clients reach a longer path through a short link to its directory, so a
63-character driver name under the kubelet's plugin directory, or a deep test directory,
still binds and dials, and the socket is where the kubelet looks for it."""

from __future__ import annotations

import os
import socket
import stat
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from sriovlib.agent.api import pluginregistration_pb2 as reg
from sriovlib.agent.api import pluginregistration_pb2_grpc as reg_grpc
from sriovlib.agent.kubelet import GRPC_UNIX_PATH_MAX, unix_target


class Info(reg_grpc.RegistrationServicer):
    def GetInfo(self, request: reg.InfoRequest, context: Any) -> reg.PluginInfo:
        return reg.PluginInfo(type="DRAPlugin", name="long.example.com")


def deep(tmp_path: Path, length: int) -> Path:
    """A socket path of exactly *length* bytes under *tmp_path*."""
    name = "s.sock"
    room = length - len(os.fsencode(tmp_path)) - len(name) - 2
    assert room > 0
    directory = tmp_path / ("d" * room)
    directory.mkdir()
    path = directory / name
    assert len(os.fsencode(path)) == length
    return path


@pytest.mark.parametrize("length", [GRPC_UNIX_PATH_MAX, GRPC_UNIX_PATH_MAX + 1, 106, 180])
def test_a_long_socket_path_is_bound_there_and_answers(tmp_path: Path, length: int) -> None:
    path = deep(tmp_path, length)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    reg_grpc.add_RegistrationServicer_to_server(Info(), server)  # type: ignore[no-untyped-call]
    assert server.add_insecure_port(unix_target(path)) != 0
    server.start()
    try:
        assert stat.S_ISSOCK(os.lstat(path).st_mode)  # at the path itself, not at the link
        with grpc.insecure_channel(unix_target(path)) as channel:
            stub = reg_grpc.RegistrationStub(channel)  # type: ignore[no-untyped-call]
            assert stub.GetInfo(reg.InfoRequest(), timeout=5).name == "long.example.com"
        if length <= 107:  # what the kernel takes: a kubelet dials the path itself
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(os.fspath(path))
    finally:
        server.stop(0).wait()


def test_a_short_path_is_used_as_it_is(tmp_path: Path) -> None:
    assert unix_target(tmp_path / "x.sock") == f"unix://{tmp_path / 'x.sock'}"


def test_without_the_link_grpc_refuses_the_path(tmp_path: Path) -> None:
    """What the link is for: gRPC itself will not bind 106 bytes."""
    path = deep(tmp_path, 106)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    with pytest.raises(RuntimeError):
        server.add_insecure_port(f"unix://{path}")
