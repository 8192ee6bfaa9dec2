"""Whether a REST request's model runs on the event loop itself, without a hop to a thread.

REST requests arrive on the event loop, which must not block, so the runners hand each run to a
thread of the data plane's pool and the loop awaits the answer. For a model that runs in a few
microseconds the hand-off is the expensive part: on one core it is two thread switches, each
cooling the caches, about 100-300 us against the run's 5-50 us. A competent hand-written FastAPI
server calls ``session.run`` inline and wins by exactly that.

So a quick model's REST request goes through its runner as a gRPC call thread does
(``run_in_thread``), from the loop's thread: it leads a batch of its own (with whatever gRPC
requests queued meanwhile) or, when a gRPC thread is leading, waits for that batch; the lead
passes on as soon as its own request is answered, so the loop blocks for one or two quick batches
at most. A model is quick when its warm-up run took under :data:`INLINE_MAX_SECONDS`. A runner
with a queue delay waits for requests to arrive, which on the loop would stop them arriving: its
requests always take the pool.
"""

from __future__ import annotations

from mlp_serve.config import BatchingConfig
from mlp_serve.runtime import ModelRuntime

# A warm-up run (a batch of one) below this runs inline. The 1.3M-parameter MLP of tools/bench
# takes 60-170 us; an image model's convolutions take milliseconds and go to the pool.
INLINE_MAX_SECONDS = 0.0005


def runs_inline(runtime: ModelRuntime, batching: BatchingConfig) -> bool:
    """Whether REST requests to ``runtime`` run on the loop (see the module docstring)."""
    seconds = runtime.run_seconds
    if seconds is None or seconds >= INLINE_MAX_SECONDS:
        return False
    return not (batching.enabled and batching.max_queue_delay_ms > 0)
