"""The CNI fast path: the ``sriov`` binary hands its invocation to the node agent.

A runtime starts ``sriov`` once per operation; importing the plugin's code is most of
what an in-process ADD costs. When the agent (``sriovlib agent``) listens on its unix
socket (``SRIOVLIB_AGENT_SOCKET``, default ``/run/sriovlib/agent.sock``), the binary
sends it the environment and stdin and prints what comes back; the agent runs the very
same invocation (:func:`sriovlib.cni.invoke.run`) with everything already imported.
Otherwise the binary runs it in-process, as without an agent.

This module is all the binary imports before it knows which: the interpreter's ``os``
and ``sys``, and the C halves of ``socket`` and ``select`` (``_socket``, ``select``), not
``json`` or ``socket.py`` (they would cost more than the rest of the start-up). The
agent's side (:mod:`sriovlib.agent.cniserver`) uses the same framing.

The conversation, one per invocation::

    client: b"SRIOVLIB-CNI/1\\n" <env block> <stdin block>   then shuts down writing
    agent:  b"A"                                            the agent took the request
    agent:  <status byte> <stdout block> <stderr block>       then closes

A block is a 4-byte big-endian length and that many bytes; the environment block holds
``KEY=VALUE`` pairs separated by NUL bytes. Nothing is run until the agent has sent
``A``: a connection refused, or closed before ``A`` (another version of the agent, a
caller it does not serve, an agent stopping), leaves the caller free to run in-process.
A connection that ends after ``A`` but before the reply means the agent died during the
operation: its outcome is unknown, so the caller reports code 11 (try again later); the
attachment service's records are crash-safe, so the runtime's DEL restores the VF
(through a restarted agent or in-process).
"""

import os
import sys

# Neither typing nor ``from __future__ import annotations``: the binary's start-up is
# the point of this module, so the annotations naming typing-only names are strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "ACCEPTED",
    "DEFAULT_SOCKET",
    "MAGIC",
    "MAX_ENV",
    "MAX_STDIN",
    "SOCKET_ENV",
    "AgentLost",
    "FramingError",
    "decode_environment",
    "decode_reply",
    "encode_reply",
    "encode_request",
    "forward",
    "read_stdin",
    "socket_path",
]

#: The variable naming the agent's socket, for both the agent and the binary.
SOCKET_ENV = "SRIOVLIB_AGENT_SOCKET"
#: The agent's socket when ``SRIOVLIB_AGENT_SOCKET`` is unset or empty.
DEFAULT_SOCKET = "/run/sriovlib/agent.sock"
#: The first bytes of a request: the framing's name and version.
MAGIC = b"SRIOVLIB-CNI/1\n"
#: The byte the agent sends once it has taken a request.
ACCEPTED = b"A"
#: The most stdin an invocation takes (a longer one is refused: see ``protocol``).
MAX_STDIN = 16 << 20
#: The largest environment block accepted.
MAX_ENV = 1 << 20
_VERSION_STDIN_WAIT = 0.05


class FramingError(ValueError):
    """Bytes that are not a request or reply of this framing."""


class AgentLost(ConnectionError):
    """The agent took the request and ended the connection before replying."""


def socket_path(environ: "Mapping[str, str]") -> str:
    """The agent's socket *environ* names."""
    return environ.get(SOCKET_ENV) or DEFAULT_SOCKET


# -- framing -----------------------------------------------------------------------------


def _block(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _take(data: bytes, at: int, limit: int) -> tuple[bytes, int]:
    if len(data) < at + 4:
        raise FramingError("truncated length")
    size = int.from_bytes(data[at : at + 4], "big")
    if size > limit:
        raise FramingError(f"a block of {size} bytes is larger than {limit}")
    end = at + 4 + size
    if len(data) < end:
        raise FramingError("truncated block")
    return data[at + 4 : end], end


def encode_request(environ: "Mapping[str, str]", stdin: bytes) -> bytes:
    """A request: *environ* and *stdin*."""
    env = b"\0".join(os.fsencode(key) + b"=" + os.fsencode(value) for key, value in environ.items())
    return MAGIC + _block(env) + _block(stdin)


def decode_request(data: bytes) -> tuple[dict[str, str], bytes]:
    """The environment and stdin of a request.

    Raises:
        FramingError: *data* is not one whole request of this framing.
    """
    if not data.startswith(MAGIC):
        raise FramingError("not a request of this framing (or of another version)")
    env_block, at = _take(data, len(MAGIC), MAX_ENV)
    stdin, at = _take(data, at, MAX_STDIN + 1)
    if at != len(data):
        raise FramingError("bytes after the request")
    return decode_environment(env_block), stdin


def decode_environment(block: bytes) -> dict[str, str]:
    """``KEY=VALUE`` pairs separated by NUL bytes, as a mapping."""
    environ: dict[str, str] = {}
    for pair in block.split(b"\0") if block else ():
        key, sep, value = pair.partition(b"=")
        if not sep or not key:
            raise FramingError(f"not KEY=VALUE: {pair[:40]!r}")
        environ[os.fsdecode(key)] = os.fsdecode(value)
    return environ


def encode_reply(status: int, stdout: str, stderr: str) -> bytes:
    """A reply: the exit status and what to print on stdout and stderr."""
    return (
        bytes((status & 0xFF,))
        + _block(stdout.encode("utf-8", "surrogateescape"))
        + _block(stderr.encode("utf-8", "surrogateescape"))
    )


def decode_reply(data: bytes) -> tuple[int, str, str]:
    """The exit status, stdout and stderr of a reply.

    Raises:
        FramingError: *data* is not one whole reply.
    """
    if not data:
        raise FramingError("empty reply")
    stdout, at = _take(data, 1, MAX_STDIN)
    stderr, at = _take(data, at, MAX_STDIN)
    if at != len(data):
        raise FramingError("bytes after the reply")
    return (
        data[0],
        stdout.decode("utf-8", "surrogateescape"),
        stderr.decode("utf-8", "surrogateescape"),
    )


# -- the binary's side -------------------------------------------------------------------


def read_stdin(*, patient: bool) -> bytes:
    """The binary's stdin, bounded (a longer one is refused by the invocation). VERSION
    (*patient* false) takes only what is there at once: a caller may leave stdin open
    without writing to it."""
    stream = sys.stdin.buffer if sys.stdin is not None else None
    if stream is None:
        return b""
    if not patient:
        if stream.isatty():
            return b""
        import select

        ready, _, _ = select.select([stream], [], [], _VERSION_STDIN_WAIT)
        if not ready:
            return b""
    return stream.read(MAX_STDIN + 1)


def forward(environ: "Mapping[str, str]", stdin: bytes) -> tuple[int, str, str] | None:
    """Hand the invocation to the agent: its exit status, stdout and stderr, or None when
    no agent took it (run it in-process then).

    Raises:
        AgentLost: the agent took it and died before replying (the outcome is unknown).
    """
    import _socket

    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            sock.connect(socket_path(environ))
            sock.sendall(encode_request(environ, stdin))
            sock.shutdown(_socket.SHUT_WR)
            if sock.recv(1) != ACCEPTED:
                return None
        except OSError:  # no agent, an agent of another version, a caller it refuses
            return None
        chunks = []
        try:
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
        except OSError as e:
            raise AgentLost(f"the agent's connection failed before its reply: {e}") from None
    finally:
        sock.close()
    try:
        return decode_reply(b"".join(chunks))
    except FramingError as e:
        raise AgentLost(f"the agent ended the connection before its reply ({e})") from None
