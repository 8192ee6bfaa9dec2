"""Whether a request runs at once where it arrived (the event loop for REST, the call's thread
for gRPC), without a hop to a thread or a place in the batcher's queue.

REST requests arrive on the event loop, which must not block, so the runners hand each run to a
thread of the data plane's pool and the loop awaits the answer. For a model that runs in a few
microseconds the hand-off is the expensive part: on one core it is two thread switches, each
cooling the caches, about 100-300 us against the run's 5-50 us. A competent hand-written FastAPI
server calls ``session.run`` inline and wins by exactly that.

So a quick model's REST request runs on the loop's thread, at once and on its own
(``runner.run_alone``): merged with others it would save a few microseconds of a run that costs
less than the hop. A slower model's requests go through the batcher instead: while one batch runs
in the pool, the loop reads the next requests, and they run together. A gRPC call to a quick model
runs at once in its own thread by the same rule when nothing is queued (at most it would wait for
a running batch, then run alone; onnxruntime lets it overlap that batch instead), and joins the
queue when others wait. The loop blocks for one quick run at most. A model is quick when
its warm-up run (a batch of one) took under :data:`INLINE_MAX_SECONDS`, and a request is small
enough when its rows times that time stay under :data:`INLINE_MAX_REQUEST_SECONDS`: a request of
many rows goes to the pool, so the loop never stalls behind it. A runner with a queue delay keeps
its REST requests in its queue (they wait for company there, which is the point of the delay),
through the pool.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mlp_serve.config import BatchingConfig
from mlp_serve.runtime import ModelRuntime

# A warm-up run (a batch of one) below this runs inline: about what a thread hop costs. Above it,
# merging concurrent requests into one run saves more than the hop costs. tools/bench's 16-feature
# MLP runs in 8-14 us and stays inline; its 1.3M-parameter MLP runs in 170-240 us, and through the
# batcher it answered 2.5x the requests at concurrency 16 (5,128 against 1,915 requests/s inline;
# at concurrency 1, 1,433 against 1,755). An image model's convolutions take milliseconds.
INLINE_MAX_SECONDS = 0.00005
# The longest a request may keep the loop, estimated as rows x the warm-up run (an upper bound:
# onnxruntime runs a batch in less than its rows run one by one). A gRPC call's thread blocks
# nobody else, but a request of many rows gains from the queue's batching just the same.
INLINE_MAX_REQUEST_SECONDS = 0.002


def is_quick(runtime: ModelRuntime) -> bool:
    """Whether ``runtime``'s warm-up run took under :data:`INLINE_MAX_SECONDS`."""
    return runtime.run_seconds is not None and runtime.run_seconds < INLINE_MAX_SECONDS


def runs_inline(
    runtime: ModelRuntime, batching: BatchingConfig, feeds: Mapping[str, np.ndarray]
) -> bool:
    """Whether this request (its validated ``feeds``) to ``runtime`` runs at once where it
    arrived (see the module docstring)."""
    if not is_quick(runtime):
        return False
    seconds = runtime.run_seconds or 0.0
    if batching.enabled and batching.max_queue_delay_ms > 0:
        return False
    first = next(iter(feeds.values()), None)
    rows = first.shape[0] if first is not None and first.ndim else 1
    return rows * seconds < INLINE_MAX_REQUEST_SECONDS
