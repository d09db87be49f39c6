"""The Prometheus alerting rules (deploy/prometheus/alerts.yml): valid, unit-tested by promtool, and
written only against metrics relay exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from relay.ops.metrics import METRIC_NAMES

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: `bash scripts/test` installs it (Debian package prometheus)")
    return found


@pytest.mark.parametrize(("command", "file"), [("check", "alerts.yml"), ("test", "alerts.test.yml")])
def test_promtool_accepts_the_rules_and_their_unit_tests(command: str, file: str) -> None:
    done = subprocess.run(
        [promtool(), command, "rules", file],
        cwd=RULES,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_uses_only_metrics_relay_exports_and_points_at_the_docs() -> None:
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())["groups"][0]["rules"]
    known = {name.removesuffix("_total") for name in METRIC_NAMES} | {"up"}
    for rule in rules:
        used = set(re.findall(r"\b(relay_[a-z_]+|up)\b", rule["expr"]))
        bases = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
        assert bases <= known, (rule["alert"], bases - known)
        assert rule["annotations"]["runbook"].startswith("docs/operations.md#")
        assert rule["labels"]["severity"] in ("page", "warn")
