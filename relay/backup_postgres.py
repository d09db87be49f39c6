"""Backups of the PostgreSQL store (see :mod:`relay.backup` for the file format and the checks).

- **backup**: a read-only snapshot is opened and exported (:class:`relay.store.backup_postgres.Snapshot`);
  ``pg_dump --format=custom --snapshot=...`` dumps exactly that snapshot while the manifest is computed
  from it too, so the two agree whatever the servers write meanwhile. ``pg_dump``'s own progress
  (``--verbose``: one line per table) drives the progress bar.
- **restore**: ``pg_restore --exit-on-error --no-owner`` into the database of ``RELAY_DATABASE_URL``,
  which must not hold relay's tables yet (a restore never mixes two databases).
- **verify**: a scratch database is created on the server (``--scratch-url``, default the server of
  ``RELAY_DATABASE_URL``), the dump restored into it, then checked against the manifest through the
  store itself (row counts, migrations, each checked stream replayed), and dropped.

``pg_dump`` and ``pg_restore`` must be on the PATH (Debian: postgresql-client), of the server's major
version or newer.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any, TextIO

import trio

from relay import __version__
from relay.backup import (
    CHECKED_STREAMS,
    FORMAT,
    MANIFEST,
    BackupRefused,
    ProgressBar,
    _compare_store,
    _compare_tables,
    _extract,
    _write_tar,
    events_digest,
)
from relay.store import backup_postgres as pg
from relay.store.postgres import PostgresStore

__all__ = ["DUMP_FILE", "backup_postgres", "restore_postgres", "verify_postgres"]

DUMP_FILE = "relay.pgdump"


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupRefused(f"{name} is not installed (Debian: apt install postgresql-client)")
    return found


async def _run_tool(argv: list[str], bar: ProgressBar | None, total: int) -> None:
    """Run ``pg_dump``/``pg_restore``; count its ``--verbose`` lines about tables for the bar."""
    done = 0
    output: list[str] = []

    async def read(stream: trio.abc.ReceiveStream) -> None:
        nonlocal done
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                output.append(text)
                if bar is not None and (
                    "dumping contents of table" in text or "processing data for table" in text
                ):
                    done += 1
                    bar.update(done, total)

    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process, argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, check=False
            )
        )
        assert process.stderr is not None
        nursery.start_soon(read, process.stderr)
        code = await process.wait()
    if code != 0:
        errors = [line for line in output if "error" in line.lower()] or output[-3:]
        raise BackupRefused(f"{Path(argv[0]).name} failed (exit {code}): {' '.join(errors)[:500]}")


async def backup_postgres(url: str, target: Path, err: TextIO) -> dict[str, Any]:
    pg_dump = _tool("pg_dump")
    now = int(datetime.datetime.now(tz=datetime.UTC).timestamp() * 1000)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".relay-backup-") as tmp:
        staging = Path(tmp)
        snapshot = await trio.to_thread.run_sync(pg.Snapshot, url)
        try:
            tables = await trio.to_thread.run_sync(snapshot.table_counts)
            migrations = await trio.to_thread.run_sync(snapshot.migrations)
            heads = await trio.to_thread.run_sync(lambda: snapshot.recent_streams(limit=CHECKED_STREAMS))
            streams = []
            for user_id, stream, head in heads:
                read = functools.partial(snapshot.unexpired_events, user_id, stream, head=head, now_ms=now)
                events = await trio.to_thread.run_sync(read)
                count, digest = events_digest(events)
                streams.append(
                    {"user_id": user_id, "stream": stream, "head": head, "events": count, "sha256": digest}
                )
            bar = ProgressBar("dumping tables", err)
            dump = staging / DUMP_FILE
            await _run_tool(
                [
                    pg_dump,
                    "--format=custom",
                    "--no-owner",
                    "--no-privileges",
                    "--verbose",
                    f"--snapshot={snapshot.snapshot_id}",
                    f"--file={dump}",
                    f"--dbname={url}",
                ],
                bar,
                len(tables),
            )
            bar.finish()
        finally:
            snapshot.__exit__(None, None, None)
        os.chmod(dump, 0o600)
        manifest = {
            "format": FORMAT,
            "kind": "postgres",
            "relay_version": __version__,
            "created_at": now,
            "migrations": migrations,
            "tables": tables,
            "streams": streams,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        _write_tar(target, staging, [MANIFEST, DUMP_FILE])
    return manifest


async def _restore_dump(backup: Path, url: str, err: TextIO) -> dict[str, Any]:
    pg_restore = _tool("pg_restore")
    with tempfile.TemporaryDirectory(prefix="relay-restore-") as tmp:
        manifest = await trio.to_thread.run_sync(_extract, backup, Path(tmp), (DUMP_FILE,))
        if manifest.get("kind") != "postgres":
            raise BackupRefused(f"{backup} is a backup of {manifest.get('kind')}, not of PostgreSQL")
        if await trio.to_thread.run_sync(pg.holds_relay, url):
            raise BackupRefused(
                "the database of RELAY_DATABASE_URL holds relay's tables already: restore into an empty one"
            )
        bar = ProgressBar("restoring tables", err)
        await _run_tool(
            [
                pg_restore,
                "--exit-on-error",
                "--no-owner",
                "--no-privileges",
                "--verbose",
                f"--dbname={url}",
                str(Path(tmp) / DUMP_FILE),
            ],
            bar,
            len(manifest["tables"]),
        )
        bar.finish()
    return manifest


async def restore_postgres(backup: Path, url: str, err: TextIO) -> dict[str, Any]:
    return await _restore_dump(backup, url, err)


async def verify_postgres(backup: Path, server_url: str, err: TextIO) -> list[str]:
    name = f"relay_verify_{uuid.uuid4().hex[:16]}"
    await trio.to_thread.run_sync(pg.create_database, server_url, name)
    scratch = pg.with_database(server_url, name)
    try:
        manifest = await _restore_dump(backup, scratch, err)
        problems = _compare_tables(
            manifest["tables"], await trio.to_thread.run_sync(pg.table_counts, scratch)
        )
        store = await PostgresStore.open(scratch, pool_size=2)
        try:
            problems += await _compare_store(store, manifest)
        finally:
            await store.close()
    finally:
        await trio.to_thread.run_sync(pg.drop_database, server_url, name)
    return problems
