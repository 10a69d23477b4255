"""The CNI plugin ``sriov``: sriov-cni's configuration, the full CNI protocol.

- :mod:`sriovlib.cni.protocol`: environment, stdin, versions, results, errors;
- :mod:`sriovlib.cni.netconf`: the network configuration;
- :mod:`sriovlib.cni.commands`: ADD, DEL, CHECK, GC and STATUS;
- :mod:`sriovlib.cni.ipam` and :mod:`sriovlib.cni.ipconfig`: IPAM delegation, and the
  IPAM result translated into address and route calls on the netlink backend;
- :mod:`sriovlib.cni.__main__`: the binary (console script ``sriov``).

This package imports nothing on its own: the binary's ``VERSION`` path must stay cheap.
See ``docs/cni.md``.
"""
