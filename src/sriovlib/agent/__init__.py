"""The node agent (``sriovlib agent``): the kubelet's device plugin for every pool.

An adapter like the CNI plugin: it translates the kubelet's gRPC protocol over the
library (the :class:`~sriovlib.host.Host`, the pools of :mod:`sriovlib.pools`, the
allocator's policy and the attachment service's store) and holds no kernel access of
its own.

==========================  ===========================================================
module                      what it does
==========================  ===========================================================
:mod:`.resources`           one live resource per pool: devices, health, generations
:mod:`.grants`              what a container gets: env, device nodes, CDI, device info
:mod:`.deviceplugin`        the ``DevicePlugin`` gRPC service of one resource
:mod:`.kubelet`             one server per resource, registration, keeping both up
:mod:`.health`              device health re-read on every kernel link or device event
:mod:`.runner`              :class:`Agent`: discovery, serving, stopping
:mod:`.logs`                structured logs (``--log-format json|text``)
:mod:`.api`                 the kubelet API protos and their generated modules
==========================  ===========================================================

See ``docs/device-plugin.md``.
"""

from __future__ import annotations

__all__: list[str] = []
