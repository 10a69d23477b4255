"""The CNI plugin as the tests run it: the shipped code path, with test backends.

``python -m sriovlib.testing.cni_binary`` (or the ``sriov`` that
:func:`sriovlib.testing.cni.cni_binary_dir` puts in a ``CNI_PATH`` directory) runs
exactly what the shipped ``sriov`` runs — :func:`sriovlib.cni.__main__.main`, the same
protocol handling, commands and attachment service, as a process of its own — with a
context built like the real one (:meth:`Context.from_environ
<sriovlib.cni.commands.Context.from_environ>`) plus what only tests may ask for, read
here and nowhere in the shipped binary:

``SRIOVLIB_TEST_NETLINK=<module>:<factory>``
    The netlink backend: ``factory(sysfs_root, environ)`` from a ``sriovlib.testing``
    module, e.g. ``sriovlib.testing.cni:veth_backend`` (veths standing in for VF
    netdevs, see :mod:`sriovlib.testing.cni`).
``SRIOVLIB_TEST_KILL_AT=<step>``
    SIGKILL this process right after that step of ADD
    (:data:`~sriovlib.attachments.ATTACH_STEPS`) or DEL
    (:data:`~sriovlib.attachments.DETACH_STEPS`), log records flushed first: what the
    fault-injection tests use to prove that no instant loses a VF.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping

from sriovlib.attachments import ATTACH_STEPS, DETACH_STEPS
from sriovlib.cni.__main__ import main as cni_main
from sriovlib.cni.commands import Context
from sriovlib.cni.protocol import INVALID_ENVIRONMENT, CniError
from sriovlib.host import Host
from sriovlib.netlink import NetlinkBackend

__all__ = ["KILL_AT", "NETLINK", "context", "main"]

#: The variable that names the netlink backend factory.
NETLINK = "SRIOVLIB_TEST_NETLINK"
#: The variable that names the step to die at.
KILL_AT = "SRIOVLIB_TEST_KILL_AT"
_ALLOWED_PREFIX = "sriovlib.testing."


def context(environ: Mapping[str, str]) -> Context:
    """The real context, with the backend and the kill point *environ* asks for."""
    ctx = Context.from_environ(environ)
    factory_name = environ.get(NETLINK) or None
    if factory_name is not None:
        factory = _factory(factory_name)
        root = environ.get("SRIOVLIB_SYSFS_ROOT") or "/"
        ctx.host_factory = lambda: Host(root, netlink=factory(root, environ))
    step = environ.get(KILL_AT) or None
    if step is not None:
        if step not in (*ATTACH_STEPS, *DETACH_STEPS):
            raise CniError(INVALID_ENVIRONMENT, f"{KILL_AT}={step!r} names no step")
        ctx.checkpoint = _killer(step)
    return ctx


def _factory(name: str) -> Callable[[str, Mapping[str, str]], NetlinkBackend]:
    module_name, _, attribute = name.partition(":")
    if not module_name.startswith(_ALLOWED_PREFIX) or not attribute:
        raise CniError(
            INVALID_ENVIRONMENT,
            f"{NETLINK}={name!r} is not allowed",
            f"it must name a factory in a {_ALLOWED_PREFIX}* module as module:function",
        )
    factory: Callable[[str, Mapping[str, str]], NetlinkBackend]
    __import__(module_name)  # not importlib.import_module, which -X importtime does not log
    factory = getattr(sys.modules[module_name], attribute)
    return factory


def _killer(step: str) -> Callable[[str], None]:
    def checkpoint(done: str) -> None:
        if done != step:
            return
        logging.getLogger("sriovlib.cni").debug("%s=%s: killing myself", KILL_AT, step)
        for handler in logging.getLogger("sriovlib").handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    return checkpoint


def main() -> int:
    """Run the plugin once, as the shipped ``sriov`` would, with the test context."""
    return cni_main(context)


if __name__ == "__main__":
    sys.exit(main())
