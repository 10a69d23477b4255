"""What a container needs with a VF: device nodes, mounts and environment.

The vendor plugins say what a VF needs (:func:`~sriovlib.plugins.hookspecs.sriovlib_device_specs`:
the VFIO group for a ``vfio-pci`` VF, the RDMA devices of an mlx5 VF); this part finds
it on the node: a VFIO group of the no-IOMMU kind (``/dev/vfio/noiommu-N``, seen by the
container as ``/dev/vfio/N``), the ``uverbs``/``umad``/``issm`` character devices of an
RDMA device, ``/dev/vhost-net`` with ``/dev/net/tun``, and which asked-for node is
missing. Device nodes live under the sysfs root, so a test tree carries its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from sriovlib.host.node import NodeContext
from sriovlib.models import ContainerDevices, DeviceNode, VirtualFunction
from sriovlib.plugins.types import DeviceType
from sriovlib.sysfs import Sysfs

__all__ = ["VHOST_NET_NODES", "container_devices"]

#: What ``needVhostNet`` adds: both or neither (the device plugin's rule).
VHOST_NET_NODES = ("/dev/vhost-net", "/dev/net/tun")
_RDMA_CM = "/dev/infiniband/rdma_cm"
_VFIO = "/dev/vfio/"


def container_devices(
    node: NodeContext, vf: VirtualFunction, *, rdma: bool = False, vhost_net: bool = False
) -> ContainerDevices:
    """What a container needs with *vf* (see :meth:`sriovlib.Host.container_devices`)."""
    device_type = DeviceType.VFIO if vf.driver == "vfio-pci" else DeviceType.NETDEVICE
    specs = node.hooks(vf.pf_address).device_specs(vf, device_type)
    sysfs = node.sysfs
    wanted: list[tuple[str, str]] = []  # (node path on the node, container path)
    vfio_group = None
    for path in specs.devices:
        if not rdma and path.startswith("/dev/infiniband/"):
            continue
        if path.startswith(_VFIO) and path != f"{_VFIO}vfio":
            vfio_group = path
            wanted.append((_vfio_group_node(sysfs, path), path))
        else:
            wanted.append((path, path))
    rdma_device, rdma_nodes = None, {}
    if rdma and specs.rdma_devices:
        rdma_device = specs.rdma_devices[0]
        rdma_nodes = _rdma_nodes(sysfs, specs.rdma_devices, wanted)
    with_vhost = vhost_net and all(sysfs.has_device_node(p) for p in VHOST_NET_NODES)
    if with_vhost:
        wanted.extend((p, p) for p in VHOST_NET_NODES)
    nodes: dict[str, DeviceNode] = {}
    missing: list[str] = []
    for path, container in wanted:
        if path in nodes or path in missing:
            continue
        if sysfs.has_device_node(path):
            nodes[path] = DeviceNode(str(sysfs.dev_path(path)), container)
        else:
            missing.append(path)
    return ContainerDevices(
        nodes=tuple(nodes.values()),
        mounts=specs.mounts,
        env=specs.env,
        vfio_group=vfio_group,
        rdma_device=rdma_device,
        rdma_nodes=rdma_nodes,
        vhost_net=with_vhost,
        missing=tuple(missing),
    )


def _vfio_group_node(sysfs: Sysfs, path: str) -> str:
    """The node of VFIO group *path* (``/dev/vfio/N``): ``/dev/vfio/noiommu-N`` for a
    no-IOMMU group (the container still sees ``/dev/vfio/N``)."""
    group = path.removeprefix(_VFIO)
    if group.isdigit() and sysfs.iommu_group_noiommu(int(group)):
        return f"{_VFIO}noiommu-{group}"
    return path


def _rdma_nodes(
    sysfs: Sysfs, rdma_devices: Sequence[str], wanted: list[tuple[str, str]]
) -> dict[str, str]:
    """Add the character devices of *rdma_devices* to *wanted*; return the first
    device's nodes by kind (for the ``_INFO`` variable)."""
    first: dict[str, str] = {}
    for i, name in enumerate(rdma_devices):
        for kind, paths in sysfs.rdma_char_devices(name).items():
            wanted.extend((p, p) for p in paths)
            if i == 0 and paths:
                first[kind] = paths[0]
    if any(container == _RDMA_CM for _, container in wanted):
        first["rdma_cm"] = _RDMA_CM
    return first
