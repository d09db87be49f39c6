"""Driving relay as people do: `relay serve`, `relay admin` and `relay device` as real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

#: The line `relay serve` logs once it listens (JSON or text); the URL ends at a quote or space.
LISTENING = re.compile(r"listening on (https?://[^\s\",]+)[\",\s]")

#: Starting Python, Quart and Hypercorn takes about a second; a whole journey stays well under this.
CAP_S = 60


def relay_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(RELAY_DATA_DIR=str(tmp_path / "data"), **extra)
    return env


@attrs.define(eq=False)
class Served:
    url: str
    process: trio.Process
    output: bytearray

    @property
    def log(self) -> str:
        return self.output.decode(errors="replace")


@asynccontextmanager
async def relay_serve(env: Mapping[str, str]) -> AsyncIterator[Served]:
    """``relay serve --port 0`` until the block ends; then SIGTERM, and it must exit 0 cleanly."""
    output = bytearray()
    listening = trio.Event()
    found: list[str] = []

    async def read(stream: trio.abc.ReceiveStream) -> None:
        async for chunk in stream:
            output.extend(chunk)
            text = output.decode(errors="replace")
            match = LISTENING.search(text)
            if not listening.is_set() and match:
                found.append(match.group(1))
                listening.set()

    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                [sys.executable, "-m", "relay", "serve", "--port", "0"],
                env=env,
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                check=False,
            )
        )
        assert process.stderr is not None
        nursery.start_soon(read, process.stderr)
        served = Served("", process, output)
        try:
            with trio.fail_after(CAP_S):
                await listening.wait()
            served.url = found[0]
            yield served
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            with trio.fail_after(CAP_S):
                code = await process.wait()
    assert code == 0, served.log
    assert "Traceback" not in served.log, served.log


@attrs.frozen
class Ran:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


async def relay(*args: str, env: Mapping[str, str], cwd: Path | None = None, stdin: bytes = b"") -> Ran:
    """Run ``relay ARGS`` to completion."""
    with trio.fail_after(CAP_S):
        done = await trio.run_process(
            [sys.executable, "-m", "relay", *args],
            env=env,
            cwd=cwd,
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return Ran(done.returncode, done.stdout.decode(), done.stderr.decode())


@asynccontextmanager
async def relay_background(*args: str, env: Mapping[str, str], cwd: Path | None = None) -> AsyncIterator[Any]:
    """``relay ARGS`` running in the background; yields an object whose ``lines`` fill as it prints.
    On leaving, waits for it to exit by itself (the command must be one that ends)."""

    @attrs.define
    class Background:
        process: trio.Process | None = None
        lines: list[str] = attrs.field(factory=list)
        stderr: bytearray = attrs.field(factory=bytearray)
        got_line: trio.Event = attrs.field(factory=trio.Event)
        code: int | None = None

        async def wait_lines(self, n: int) -> list[str]:
            while len(self.lines) < n:
                self.got_line = trio.Event()
                await self.got_line.wait()
            return self.lines

    background = Background()

    async def read_stdout(stream: trio.abc.ReceiveStream) -> None:
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                background.lines.append(line.decode())
                background.got_line.set()

    async def read_stderr(stream: trio.abc.ReceiveStream) -> None:
        async for chunk in stream:
            background.stderr.extend(chunk)

    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                [sys.executable, "-m", "relay", *args],
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                check=False,
            )
        )
        background.process = process
        assert process.stdout is not None
        assert process.stderr is not None
        nursery.start_soon(read_stdout, process.stdout)
        nursery.start_soon(read_stderr, process.stderr)
        yield background
        with trio.fail_after(CAP_S):
            background.code = await process.wait()
