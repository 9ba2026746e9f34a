"""How many CPUs this process may use: its affinity, and the CPU quota of its cgroup or any ancestor's.

`os.cpu_count()` and even the affinity mask count the node's cores. A container given `--cpus 2` (a Kubernetes
CPU limit, `podman run --cpus`) still sees all of them, and a server sizing itself by them starts more processes
than its quota can run: on a 64-core node, 8 HTTP processes (the default's cap) and 8 workers throttled to two
cores' time; torch and ONNX Runtime in a training run would start 64 threads each. Both halves size themselves by
`usable()` (service/core/settings.py; training/cli.py and training/export.py). The quota is in the
cgroup file system: `cpu.max` (`"<quota> <period>"` or `"max <period>"`) in cgroup v2, `cpu.cfs_quota_us` (-1:
none) and `cpu.cfs_period_us` in v1's `cpu` controller. A limit on an ancestor cgroup binds too, so every level from
the process's own cgroup up to the mount is read and the tightest counts. In a container the process's cgroup
path (from /proc/self/cgroup) may name a host path the container cannot see: levels that do not exist are
skipped, and the mount's root, which is then the container's own cgroup, is still read.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def usable(root: Path | None = None, proc_cgroup: Path | None = None) -> int:
    """CPUs this process may keep busy: its affinity, lowered to its cgroup quota rounded up (as Go's runtime
    does), at least 1. (`root` and `proc_cgroup` default to the real ones; tests pass others.)"""
    cpus = len(os.sched_getaffinity(0))
    if (limit := quota(root, proc_cgroup)) is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return cpus


def quota(root: Path | None = None, proc_cgroup: Path | None = None) -> float | None:
    """The tightest CPU quota over this process's cgroup and its ancestors, in CPUs; None: none set, or no
    cgroup file system to read."""
    root, proc_cgroup = root or CGROUP_ROOT, proc_cgroup or PROC_CGROUP
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2 (the unified hierarchy)
            mount = root / "unified" if (root / "unified" / "cgroup.controllers").exists() else root
            limits += [_v2_limit(level) for level in _levels(mount, path)]
        elif "cpu" in controllers.split(","):  # cgroup v1's cpu controller, mounted under its own name
            for mount in (root / controllers, root / "cpu"):
                if mount.is_dir():
                    limits += [_v1_limit(level) for level in _levels(mount, path)]
                    break
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def _levels(mount: Path, path: str) -> list[Path]:
    """`mount/path` and each parent of it up to `mount`, those that exist."""
    parts = [p for p in path.strip("/").split("/") if p]
    levels = [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    return [level for level in levels if level.is_dir()]


def _v2_limit(level: Path) -> float | None:
    try:
        quota_text, period_text = (level / "cpu.max").read_text().split()
        return None if quota_text == "max" else int(quota_text) / int(period_text)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_limit(level: Path) -> float | None:
    try:
        quota_us = int((level / "cpu.cfs_quota_us").read_text())
        period_us = int((level / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None
