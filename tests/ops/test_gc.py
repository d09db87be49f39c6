"""relay serve's garbage-collector settings (relay.ops.gc), checked in a fresh interpreter so that the
test process keeps CPython's defaults."""

from __future__ import annotations

import json
import subprocess
import sys

from relay.ops.gc import YOUNG_THRESHOLD

PROBE = """
import gc, json
from relay.ops.gc import tune_for_serving
before = gc.get_threshold()
kept = [[n] for n in range(1000)]  # long-lived containers, as a server's state is
tune_for_serving()
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def test_serving_freezes_what_lives_at_start_up_and_raises_the_young_threshold() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    figures = json.loads(result.stdout)
    assert figures["after"][0] == YOUNG_THRESHOLD > figures["before"][0]
    assert figures["after"][1:] == figures["before"][1:]
    assert figures["frozen"] >= 1000  # the state alive at start-up is out of every later collection
