"""What the fuzz tests (test_fuzz_grpc, test_fuzz_rest) share: hypothesis settings that run the
same cases each time. Imported by name (``from fuzz_helpers import fuzz``)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def fuzz(examples: int) -> settings:
    """A fixed seed, a bounded number of examples, no per-example time limit (the server's
    first calls warm up), and no complaint about the module-scoped server fixture."""
    return settings(
        derandomize=True,
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
