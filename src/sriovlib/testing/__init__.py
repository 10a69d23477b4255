"""Public testing kit for sriovlib and for vendor-plugin authors.

- :class:`FakeSysfs` builds a fake ``/sys`` that mirrors the kernel's layout;
- :func:`add_nic_model` adds a real NIC model (:data:`PRESETS`: mlx5, i40e, ixgbe, ice,
  igb) to it, and :func:`build_example` builds whole example nodes;
- the pytest plugin (installed with sriovlib, entry point ``pytest11``) provides the
  ``fake_sysfs`` fixture and the ``vm`` marker.
"""

from sriovlib.testing.builder import FakePf, FakeSysfs
from sriovlib.testing.presets import EXAMPLES, PRESETS, NicModel, add_nic_model, build_example

__all__ = [
    "EXAMPLES",
    "PRESETS",
    "FakePf",
    "FakeSysfs",
    "NicModel",
    "add_nic_model",
    "build_example",
]
