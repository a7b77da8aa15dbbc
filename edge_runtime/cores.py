"""The cores this process may run on: one answer for thread counts and pinning everywhere."""
from __future__ import annotations

import os


def usable_cores() -> list[int]:
    """The CPU numbers this process may use (a container's or taskset's CPU set, not the host's
    count); where the OS cannot say, 0..cpu_count-1."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))
