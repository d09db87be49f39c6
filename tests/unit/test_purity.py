"""relay.protocol is sans-I/O: importing all of it loads no I/O library and nothing else of relay."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import relay.protocol

FORBIDDEN_ROOTS = {
    "trio",
    "trio_websocket",
    "quart",
    "quart_trio",
    "hypercorn",
    "psycopg",
    "psycopg_pool",
    "redis",
    "sqlite3",
    "_sqlite3",
    "asyncio",
    "socket",
    "wsproto",
    "h11",
}
#: The pure leaf modules relay.protocol may use (see relay/protocol/__init__.py).
ALLOWED_RELAY = {"relay", "relay.errors", "relay.crypto"}


def _protocol_modules() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.walk_packages(relay.protocol.__path__, prefix="relay.protocol.")
    )


def _modules_loaded_by(modules: list[str]) -> set[str]:
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    return set(json.loads(out.stdout))


def test_protocol_package_has_the_expected_modules() -> None:
    names = _protocol_modules()
    for expected in ("codec", "handshake", "messages", "tokens", "validation"):
        assert f"relay.protocol.{expected}" in names


def test_protocol_imports_no_io_library() -> None:
    loaded = _modules_loaded_by(_protocol_modules())
    offending = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN_ROOTS)
    assert offending == []


def test_protocol_imports_only_pure_leaf_modules_of_relay() -> None:
    loaded = _modules_loaded_by(_protocol_modules())
    relay_modules = {m for m in loaded if m == "relay" or m.startswith("relay.")}
    outside = sorted(
        m for m in relay_modules if not m.startswith("relay.protocol") and m not in ALLOWED_RELAY
    )
    assert outside == []


def test_the_purity_check_would_catch_an_io_import() -> None:
    # The check above must be able to fail: importing sqlite3 shows up in sys.modules.
    loaded = _modules_loaded_by(["sqlite3"])
    assert "sqlite3" in loaded
