"""Health checks: named callables that say whether a part of the system works, and why not.

`mlp doctor` runs the environment checks; the servers run theirs for readiness. A check returns
a :class:`CheckResult`, a bool, or ``(ok, detail)``; one that raises is reported as failed with
the exception's message, never crashes the caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union, overload

from mlp_core.registry import Registry

CheckOutcome = Union["CheckResult", bool, tuple[bool, str]]
CheckFn = Callable[[], CheckOutcome]


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    critical: bool = True
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "detail": self.detail,
            "critical": self.critical,
            "seconds": round(self.seconds, 4),
            "data": dict(self.data),
        }


@dataclass(frozen=True)
class HealthReport:
    results: dict[str, CheckResult]

    @property
    def ok(self) -> bool:
        """Healthy when every critical check passed; non-critical ones only inform."""
        return all(r.ok for r in self.results.values() if r.critical)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": {n: r.as_dict() for n, r in self.results.items()}}


@dataclass(frozen=True)
class _Check:
    fn: CheckFn
    critical: bool


class HealthChecks:
    """A set of named checks, run in registration order (entry points after built-ins)."""

    def __init__(self, group: str | None = None) -> None:
        self._registry: Registry[_Check | CheckFn] = Registry("health check", group=group)
        self._order: list[str] = []

    @overload
    def register(self, name: str, *, critical: bool = True) -> Callable[[CheckFn], CheckFn]: ...
    @overload
    def register(self, name: str, fn: CheckFn, *, critical: bool = True) -> CheckFn: ...

    def register(
        self, name: str, fn: CheckFn | None = None, *, critical: bool = True
    ) -> Callable[[CheckFn], CheckFn] | CheckFn:
        """Add a check; usable as ``@checks.register("name")``."""

        def add(check: CheckFn) -> CheckFn:
            self._registry.register(name, _Check(check, critical))
            if name not in self._order:
                self._order.append(name)
            return check

        return add if fn is None else add(fn)

    def names(self) -> list[str]:
        extra = [n for n in self._registry.names() if n not in self._order]
        return [*self._order, *extra]

    def run(self, names: list[str] | None = None) -> HealthReport:
        return HealthReport({name: self.run_one(name) for name in names or self.names()})

    def run_one(self, name: str) -> CheckResult:
        entry = self._registry.get(name)
        # Entry points from other packages name a bare callable: critical by default.
        check = entry if isinstance(entry, _Check) else _Check(entry, True)
        start = time.perf_counter()
        try:
            outcome = check.fn()
        except Exception as exc:  # a failing check is a result, not a crash
            outcome = CheckResult(False, f"{type(exc).__name__}: {exc}")
        result = _as_result(outcome)
        return CheckResult(
            ok=result.ok,
            detail=result.detail,
            data=result.data,
            critical=check.critical and result.critical,
            seconds=time.perf_counter() - start,
        )


def _as_result(outcome: CheckOutcome) -> CheckResult:
    if isinstance(outcome, CheckResult):
        return outcome
    if isinstance(outcome, bool):
        return CheckResult(outcome)
    if isinstance(outcome, tuple) and len(outcome) == 2:
        return CheckResult(bool(outcome[0]), str(outcome[1]))
    return CheckResult(
        False, f"check returned {outcome!r}; expected CheckResult, bool or (ok, detail)"
    )
