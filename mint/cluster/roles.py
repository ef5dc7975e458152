"""What a cluster runs: every actor role `mint actor` has, how many replicas of each by default, which
of them load a base, and how long a process gets to become ready or to stop."""

from __future__ import annotations

from collections.abc import Mapping

# In the order they start.
ROLES = ("catalog", "projector", "scheduler", "trainer", "evaluator", "engine-host", "api")
SERVICES = ("s3", "broker")
DEFAULT_COUNTS: Mapping[str, int] = {
    "catalog": 2,
    "projector": 1,
    "scheduler": 1,
    "trainer": 1,
    "evaluator": 1,
    "engine-host": 1,
    "api": 1,
}
# These load the base; the cluster builds it once, the first time one of them starts.
USES_BASE = frozenset({"trainer", "evaluator", "engine-host"})
BUILDABLE_BASE = "tiny"

STOP_TIMEOUT_S = 20.0  # what a process gets to drain after SIGTERM before SIGKILL
READY_TIMEOUT_S = 180.0  # engine hosts import torch: on 2 busy cores that takes a while
