"""The deployment files, checked statically (no container engine runs here): the Containerfile lints
clean with hadolint and copies only what exists; the workflows parse and run the README's test command."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).with_name("hadolint")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_containerfile_lints_clean() -> None:
    done = subprocess.run(
        [str(HADOLINT), str(ROOT / "Containerfile")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_path_the_containerfile_copies_from_the_tree_exists() -> None:
    copied = [
        args for word, args in instructions(ROOT / "Containerfile") if word == "COPY" and "--from" not in args
    ]
    assert copied
    for args in copied:
        *sources, _ = shlex.split(args)
        for source in sources:
            assert (ROOT / source).exists(), source


def test_the_image_runs_relay_serve_unprivileged_with_a_health_check_and_a_data_volume() -> None:
    steps = instructions(ROOT / "Containerfile")
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    words = dict(final)
    assert words["USER"].split(":")[0] not in ("0", "root")
    assert "/healthz" in words["HEALTHCHECK"]
    assert "/var/lib/relay" in words["VOLUME"]
    assert "RELAY_DATA_DIR=/var/lib/relay" in words["ENV"]
    assert words["ENTRYPOINT"].startswith("[")  # exec form: relay is PID 1 and gets the SIGTERM
    assert words["STOPSIGNAL"] == "SIGTERM"
    assert '"serve"' in words["CMD"]


def test_the_image_installs_the_lock_file_with_the_uv_the_scripts_use() -> None:
    text = (ROOT / "Containerfile").read_text()
    pinned = re.search(r"^RELAY_UV_VERSION=(\S+)$", (ROOT / "scripts/lib.sh").read_text(), re.M)
    assert pinned is not None
    assert f"uv=={pinned.group(1)}" in text
    assert text.count("uv sync --locked") == 2


def readme_test_command() -> str:
    block = (ROOT / "README.md").read_text().split("## Test it", 1)[1]
    match = re.search(r"```sh\n(.+?)\n```", block, re.S)
    assert match is not None
    (command,) = match.group(1).strip().splitlines()
    return command


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci_run = [
        line
        for line in (ROOT / ".ci/run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci_run == [f"exec {readme_test_command()}"]
    workflow = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    steps = workflow["jobs"]["test"]["steps"]
    assert [step["run"] for step in steps if "run" in step][-1] == "bash .ci/run"
    assert workflow["jobs"]["test"]["timeout-minutes"] <= 90


def test_the_deploy_workflow_builds_the_containerfile_on_a_tag() -> None:
    workflow = yaml.safe_load((ROOT / ".github/workflows/deploy.yml").read_text())
    assert workflow[True]["push"]["tags"] == ["v*"]  # YAML reads the key `on` as True
    build = [
        s
        for s in workflow["jobs"]["image"]["steps"]
        if str(s.get("uses", "")).startswith("docker/build-push")
    ]
    assert build[0]["with"]["file"] == "Containerfile"
    assert build[0]["with"]["push"] is True


def test_dependabot_watches_pip_and_the_actions() -> None:
    config = yaml.safe_load((ROOT / ".github/dependabot.yml").read_text())
    assert {u["package-ecosystem"] for u in config["updates"]} == {"pip", "github-actions"}


def test_the_wheel_carries_the_migrations(tmp_path: Path) -> None:
    """A non-editable install (the image's) reads its migrations from inside the package."""
    uv = Path(sys.executable).with_name("uv")
    done = subprocess.run(
        [str(uv), "build", "--wheel", "--quiet", "-o", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("relay-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"relay/_schema/{p.relative_to(ROOT / 'schema')}" for p in (ROOT / "schema").rglob("*.sql")}
    assert shipped
    assert shipped <= names
