"""How many CPUs this process may use, and the onnxruntime threads a model gets from that.

onnxruntime's default intra-op pool has one thread per physical core of the machine, whatever
the process may actually use: under ``taskset -c 0`` or a container's CPU quota its threads
spread onto cores that belong to others (the load generator's, a neighbour's), and on a small
model each run pays for waking them. So ``serve.intra_op_threads: 0`` (auto) derives the count:

- the CPUs the process may use: its affinity (``os.sched_getaffinity``), capped by a cgroup CPU
  quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``), as in a container;
- the model's size: a small model runs a few microseconds per operator, less than it costs to
  hand work to other threads, so it gets one thread; a big one gets one per
  :data:`BYTES_PER_THREAD` of model file, up to the usable CPUs.

Spinning (``session.intra_op.allow_spinning``): pool threads that wait for work by spinning
answer a little sooner but burn their CPU meanwhile. A server's front end (HTTP parsing, gRPC,
Python) needs CPU too, so spinning is on only when the pool leaves at least one usable CPU free.
An explicit ``serve.intra_op_threads`` or ``serve.intra_op_spinning`` wins over the derivation.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

# Model file bytes per intra-op thread: below this a model runs on one thread. 8 MiB is about
# two million FP32 parameters; the 1.3M-parameter MLP of tools/bench ran fastest on one.
BYTES_PER_THREAD = 8 << 20

PROC_SELF_CGROUP = Path("/proc/self/cgroup")
# Set by the supervisor of `mlp serve --workers N` in each worker's environment: the CPUs one
# worker may count on (the usable CPUs shared out), so that N workers do not each size their
# pools for the whole machine.
WORKER_CPUS_ENV = "MLP_SERVE_WORKER_CPUS"
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs the process may use: its affinity, and a cgroup quota (in CPUs) if any."""

    affinity: int
    quota: float | None = None
    worker_share: int | None = None  # one of several workers: its part of the CPUs

    @property
    def usable(self) -> int:
        """Whole CPUs: a quota of 1.5 CPUs is one thread that never waits for throttling."""
        usable = self.affinity if self.quota is None else min(self.affinity, math.floor(self.quota))
        if self.worker_share is not None:
            usable = min(usable, self.worker_share)
        return max(1, usable)

    def describe(self) -> str:
        plural = "s" if self.usable != 1 else ""
        quota = "none" if self.quota is None else f"{self.quota:g} CPUs"
        share = "" if self.worker_share is None else f", worker share {self.worker_share}"
        return (
            f"{self.usable} usable CPU{plural} (affinity {self.affinity}, cgroup quota {quota}"
            f"{share})"
        )


def cpu_budget(
    affinity: set[int] | None = None,
    proc_self_cgroup: Path = PROC_SELF_CGROUP,
    cgroup_root: Path = CGROUP_ROOT,
) -> CpuBudget:
    """This process's CPUs: ``affinity`` (default: its own) and the cgroup files under
    ``cgroup_root`` for the groups ``proc_self_cgroup`` names (tests pass a fake root)."""
    if affinity is None:
        affinity = _own_affinity()
    quota = cgroup_cpu_quota(proc_self_cgroup, cgroup_root)
    return CpuBudget(len(affinity), quota, _worker_share())


def _worker_share() -> int | None:
    value = os.environ.get(WORKER_CPUS_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def _own_affinity() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def cgroup_cpu_quota(proc_self_cgroup: Path, cgroup_root: Path) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its ancestors; None when
    unlimited or unreadable. cgroup v2 (``0::/path``) and v1 (``N:cpu,cpuacct:/path``)."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        relative = path.strip().lstrip("/")
        if hierarchy == "0" and controllers == "":
            quotas += _v2_quotas(cgroup_root, relative)
        elif "cpu" in controllers.split(","):
            quotas += _v1_quotas(cgroup_root, controllers, relative)
    return min(quotas) if quotas else None


def _v2_quotas(root: Path, relative: str) -> list[float]:
    # cgroup v2 mounts at the root (or at unified/ beside v1's controllers, in hybrid setups).
    found: list[float] = []
    for mount in (root, root / "unified"):
        for folder in _ancestors(mount, relative):
            quota = _read_v2(folder / "cpu.max")
            if quota is not None:
                found.append(quota)
    return found


def _v1_quotas(root: Path, controllers: str, relative: str) -> list[float]:
    found: list[float] = []
    for mount in dict.fromkeys((root / controllers, root / "cpu", root / "cpu,cpuacct")):
        for folder in _ancestors(mount, relative):
            quota = _read_v1(folder)
            if quota is not None:
                found.append(quota)
    return found


def _ancestors(mount: Path, relative: str) -> list[Path]:
    """The group's folder and each parent up to the mount. Inside a container the mount often
    is the group itself (cgroup namespaces), so the mount's own files count too."""
    folders = [mount]
    current = mount
    for part in [p for p in relative.split("/") if p and p != ".."]:
        current = current / part
        folders.append(current)
    return [f for f in folders if f.is_dir()]


def _read_v2(path: Path) -> float | None:
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read_v1(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


@dataclass(frozen=True)
class ThreadChoice:
    """What a model's session gets, and why (for the log line at load)."""

    intra_op_threads: int
    spinning: bool
    reason: str

    def describe(self) -> str:
        plural = "s" if self.intra_op_threads != 1 else ""
        spinning = "on" if self.spinning else "off"
        return (
            f"{self.intra_op_threads} intra-op thread{plural} ({self.reason}), spinning {spinning}"
        )


def choose_threads(
    budget: CpuBudget,
    model_bytes: int,
    intra_op_threads: int = 0,
    spinning: bool | None = None,
) -> ThreadChoice:
    """The intra-op threads and spinning for a model of ``model_bytes``: ``intra_op_threads``
    and ``spinning`` when given (non-zero, not None), else derived (see the module docstring)."""
    usable = budget.usable
    if intra_op_threads > 0:
        threads, reason = intra_op_threads, "serve.intra_op_threads"
    else:
        threads = max(1, min(usable, model_bytes // BYTES_PER_THREAD))
        size = "small" if threads == 1 and model_bytes < BYTES_PER_THREAD else "large"
        reason = f"auto: {budget.describe()}, a {size} model of {model_bytes / (1 << 20):.1f} MiB"
    if spinning is None:
        # A pool that leaves a CPU for the front end may spin; one that fills them must not.
        spinning = 2 <= threads < usable
    return ThreadChoice(threads, spinning, reason)


def model_bytes(path: Path) -> int:
    """The model file's size, with its external-data files (beside it, ``*.data``/``*.bin``)."""
    try:
        total = path.stat().st_size
    except OSError:
        return 0
    for extra in list(path.parent.glob("*.data")) + list(path.parent.glob("*.bin")):
        with contextlib.suppress(OSError):
            total += extra.stat().st_size
    return total
