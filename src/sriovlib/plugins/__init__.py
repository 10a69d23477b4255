"""sriovlib's plugin system (pluggy).

A vendor plugin is a module or object with functions marked ``@hookimpl`` whose names
are hooks from :mod:`sriovlib.plugins.hookspecs`. Third-party packages publish theirs in
the entry-point group ``sriovlib``::

    [project.entry-points.sriovlib]
    acme = "sriovlib_acme"

The plugin that drives a PF is chosen per PF (``sriovlib_match_pf``); every other
hook is then answered by that plugin, falling back to the generic one for whatever it
does not implement. See the plugin author's guide in the docs.
"""

from __future__ import annotations

import pluggy

from sriovlib.plugins.types import (
    DeviceSpecs,
    DeviceType,
    EswitchMode,
    Issue,
    MacFixup,
    MatchKind,
    NumVfsPlan,
    PfMatch,
    Severity,
    Step,
    StepKind,
    VfLimit,
)

NAME = "sriovlib"

#: Mark a function as the implementation of a sriovlib hook.
hookimpl = pluggy.HookimplMarker(NAME)

__all__ = [
    "NAME",
    "DeviceSpecs",
    "DeviceType",
    "EswitchMode",
    "Issue",
    "MacFixup",
    "MatchKind",
    "NumVfsPlan",
    "PfMatch",
    "Severity",
    "Step",
    "StepKind",
    "VfLimit",
    "hookimpl",
]
