"""The garbage collector of a long-running server: no second-long pauses with thousands of sessions.

Measured (``bash scripts/soak --sessions 5000 --rate 500``, a gc callback timing each collection):
with CPython's default thresholds (700, 10, 10), a node holding 5,000 sessions ran a full collection
about once a minute, each taking 1.3-1.4 s of the only thread that serves (and finding nothing to
collect), and young collections of 50-135 ms many times a minute; publish→delivery p99 was 1.5-2.5 s
while p50 was 2 ms. Almost everything a session allocates either dies within a few thousand
allocations (frames, messages) or lives as long as the session; what is promoted to the oldest
generation is mostly the latter, and scanning it again and again finds nothing.

So, once the server has started, :func:`tune_for_serving`:

- collects once and **freezes** what survived (``gc.freeze()``: the imported modules, the app, the
  store and its caches), so no later collection scans it;
- raises the young threshold to :data:`YOUNG_THRESHOLD` allocations, so short-lived objects die
  before a collection sees them instead of being promoted, and fewer long-lived ones are scanned.

Reference cycles are still collected (trio's cancellations make some); only less often.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "tune_for_serving"]

#: Allocations (minus deallocations) between two young collections (CPython's default: 700).
YOUNG_THRESHOLD = 50_000


def tune_for_serving() -> None:
    """Collect, freeze the survivors, and raise the young threshold (for ``relay serve``)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
