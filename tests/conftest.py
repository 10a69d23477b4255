"""Shared test configuration: Hypothesis profiles (``FAST=1`` for quick runs), and no
CNI fast path to an agent of the machine."""

from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "fast", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("fast" if os.environ.get("FAST") else "default")

# No CNI binary a test runs may hand its invocation to an agent of this machine: unless a
# test points it at its own agent, SRIOVLIB_AGENT_SOCKET names a socket nobody serves.
os.environ["SRIOVLIB_AGENT_SOCKET"] = os.path.join(
    tempfile.mkdtemp(prefix="sriovlib-tests-"), "no-agent.sock"
)
