"""The CNI plugin ``sriov``: sriov-cni's configuration, the full CNI protocol.

An adapter: it translates the protocol and calls the attachment service
(:mod:`sriovlib.attachments`) and the Host; it imports neither of the two modules that
touch the kernel (netlink, sysfs): see ``docs/architecture.md``.

- :mod:`sriovlib.cni.protocol`: environment, stdin, versions, results, errors;
- :mod:`sriovlib.cni.netconf`: the network configuration;
- :mod:`sriovlib.cni.commands`: ADD, DEL, CHECK, GC and STATUS over the service, and
  domain errors as CNI codes;
- :mod:`sriovlib.cni.ipam` and :mod:`sriovlib.cni.ipconfig`: IPAM delegation, and the
  IPAM result translated into the addresses and routes the service sets;
- :mod:`sriovlib.cni.__main__`: the binary (console script ``sriov``).

This package imports nothing on its own: the binary's ``VERSION`` path must stay cheap.
See ``docs/cni.md``.
"""
