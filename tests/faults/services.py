"""Private PostgreSQL and Redis servers for fault tests: started, stopped and restarted on purpose.

The suite's shared servers (tests/conftest.py) must stay up for every other test; a fault test starts
its own on free loopback ports, in a temporary directory, and may kill them. PostgreSQL runs as the
``postgres`` user when the tests run as root (initdb refuses root), with fsync off like the suite's.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str:
    for directory in PG_BIN_CANDIDATES:
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (bash scripts/test installs it)")
    return found


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _wait_port(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s} s")


@attrs.define
class PrivatePostgres:
    directory: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        subprocess.run(
            _as_owner(
                [
                    _pg_bin("pg_ctl"),
                    "-D",
                    str(self.directory / "data"),
                    "-l",
                    str(self.directory / "log"),
                    "-o",
                    f"-p {self.port}",
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        _wait_port(self.port)

    def stop(self, mode: str = "immediate") -> None:
        subprocess.run(
            _as_owner(
                [_pg_bin("pg_ctl"), "-D", str(self.directory / "data"), "-m", mode, "-w", "-t", "60", "stop"]
            ),
            check=False,
            capture_output=True,
        )


@contextmanager
def private_postgres(tmp: Path) -> Iterator[PrivatePostgres]:
    # Under /tmp itself, not pytest's private (0700, root's) directory: the cluster's owner must reach it.
    del tmp
    directory = Path(tempfile.mkdtemp(prefix="relay-fault-pg-"))
    if os.geteuid() == 0:
        os.chmod(directory, 0o755)
        shutil.chown(directory, "postgres")
    subprocess.run(
        _as_owner(
            [
                _pg_bin("initdb"),
                "-D",
                str(directory / "data"),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    with (directory / "data" / "postgresql.conf").open("a") as conf:
        conf.write(f"listen_addresses = '127.0.0.1'\nunix_socket_directories = '{directory}'\nfsync = off\n")
    server = PrivatePostgres(directory=directory, port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@attrs.define
class PrivateRedis:
    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@contextmanager
def private_redis(tmp: Path) -> Iterator[PrivateRedis]:
    directory = tmp / "redis"
    directory.mkdir()
    server = PrivateRedis(directory=directory, port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
