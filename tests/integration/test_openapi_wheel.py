"""The wheel the container image is built from serves the same OpenAPI document as the repository.

The Containerfile builds the wheel from ``pyproject.toml``, ``uv.lock``, ``README.md``, ``relay/`` and
``schema/`` only, so ``docs/openapi.json`` cannot be force-included: the package carries its own copy,
``relay/http/openapi.json`` (:mod:`relay.http.openapi`). Built here from exactly those paths.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: What the Containerfile copies into its build stage.
IMAGE_SOURCES = ("pyproject.toml", "uv.lock", "README.md", "relay", "schema")
#: A wheel builds in seconds; this only catches a hang.
BUILD_CAP_S = 300


def test_a_wheel_built_from_what_the_image_copies_carries_docs_openapi_json(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in IMAGE_SOURCES:
        original = ROOT / name
        if original.is_dir():
            shutil.copytree(original, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(original, source / name)
    uv = Path(sys.executable).with_name("uv")
    done = subprocess.run(
        [str(uv), "build", "--wheel", "--quiet", "-o", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        check=False,
        timeout=BUILD_CAP_S,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").glob("relay-*.whl")
    packaged = zipfile.ZipFile(wheel).read("relay/http/openapi.json")
    assert packaged == (ROOT / "docs" / "openapi.json").read_bytes()
