"""Backups: ``scripts/backup``, ``scripts/restore``, ``scripts/verify-backup`` (``python -m relay.backup``).

A backup is one tar file (mode 0600: it holds the server's secrets) of::

    manifest.json     what the backup holds, to check a restore against (below)
    relay.sqlite3     SQLite: the database, copied online (SQLite's backup API), one consistent snapshot
    server.key        SQLite: the server's Ed25519 seed; without it every device's pinned key breaks
    token.secret      SQLite: the secret keying tokens and hashes
    relay.pgdump      PostgreSQL: ``pg_dump --format=custom`` of the database (its secrets are in it),
                      taken from the same snapshot the manifest describes (:mod:`relay.backup_postgres`)

The manifest records the format, the kind of store, relay's version, when it was taken, the migrations
applied, the rows of every table, and for the :data:`CHECKED_STREAMS` most recently written streams
their head and a SHA-256 of their events as the replay path reads them (``read_events``, at the
backup's own time so that expiry cannot differ). ``verify`` restores into a fresh database and checks
all of it: the migrations, the row counts table by table, and that each checked stream replays to the
same digest.

Exit status: 0 when done (``verify``: when everything matched), 1 when refused or when a check failed,
with one line per problem on stderr, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import trio

from relay import __version__
from relay.config import ConfigError, Settings
from relay.errors import StoreUnavailable
from relay.protocol.messages import StoredEvent
from relay.store import backup_sqlite
from relay.store.base import Store
from relay.store.secret_files import SERVER_KEY_FILE, TOKEN_SECRET_FILE
from relay.store.sqlite import DATABASE_FILE, SqliteStore

__all__ = ["CHECKED_STREAMS", "FORMAT", "BackupRefused", "main", "stream_digest"]

FORMAT = 1
MANIFEST = "manifest.json"
#: Streams whose replay a manifest records and ``verify`` checks (the most recently written).
CHECKED_STREAMS = 1000
#: Events read per replay call when digesting a stream.
DIGEST_PAGE = 1000
SQLITE_MEMBERS = (DATABASE_FILE, SERVER_KEY_FILE, TOKEN_SECRET_FILE)


class BackupRefused(Exception):
    """One line for the operator; the command exits 1."""


class ProgressBar:
    """A progress bar on a terminal; on anything else a line at every tenth."""

    WIDTH = 30

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label = label
        self.stream = stream
        self.tty = stream.isatty()
        self._shown = -1

    def update(self, done: int, total: int) -> None:
        share = 1.0 if total <= 0 else min(1.0, done / total)
        if self.tty:
            filled = round(share * self.WIDTH)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            self.stream.write(f"\r{self.label} [{bar}] {share:4.0%}")
            self.stream.flush()
        elif (tenth := int(share * 10)) > self._shown:
            self._shown = tenth
            print(f"{self.label}: {share:.0%}", file=self.stream, flush=True)

    def finish(self) -> None:
        self.update(1, 1)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# --- what a manifest checks ---------------------------------------------------------------------------


def _digest_update(digest: Any, events: Sequence[StoredEvent]) -> None:
    for event in events:
        line = [
            event.seq,
            event.id,
            event.device_id,
            event.ts,
            event.received_at,
            event.expires_at,
            event.body,
        ]
        digest.update(json.dumps(line, separators=(",", ":")).encode() + b"\n")


def events_digest(events: Sequence[StoredEvent]) -> tuple[int, str]:
    """The count and SHA-256 of ``events`` (in seq order), exactly as :func:`stream_digest` makes them."""
    digest = hashlib.sha256()
    _digest_update(digest, events)
    return len(events), digest.hexdigest()


async def stream_digest(
    store: Store, user_id: str, stream: str, head: int, *, now_ms: int
) -> tuple[int, str]:
    """How many events a replay of ``stream`` up to ``head`` yields at ``now_ms``, and their SHA-256."""
    digest = hashlib.sha256()
    after = 0
    count = 0
    while after < head:
        events = await store.read_events(
            user_id, stream, after=after, head=head, limit=DIGEST_PAGE, now_ms=now_ms, clock_skew_ms=0
        )
        if not events:
            break
        _digest_update(digest, events)
        count += len(events)
        after = events[-1].seq
    return count, digest.hexdigest()


async def _stream_records(
    store: Store, heads: Sequence[tuple[str, str, int]], now_ms: int
) -> list[dict[str, Any]]:
    records = []
    for user_id, stream, head in heads:
        count, digest = await stream_digest(store, user_id, stream, head, now_ms=now_ms)
        records.append(
            {"user_id": user_id, "stream": stream, "head": head, "events": count, "sha256": digest}
        )
    return records


# --- SQLite -------------------------------------------------------------------------------------------


async def _backup_sqlite(settings: Settings, target: Path, err: TextIO) -> dict[str, Any]:
    source = settings.data_dir / DATABASE_FILE
    if not source.is_file():
        raise BackupRefused(f"no database at {source} (is RELAY_DATA_DIR right?)")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".relay-backup-") as tmp:
        staging = Path(tmp)
        bar = ProgressBar(f"copying {source.name}", err)
        await trio.to_thread.run_sync(
            backup_sqlite.copy_database, source, staging / DATABASE_FILE, bar.update
        )
        bar.finish()
        for name in (SERVER_KEY_FILE, TOKEN_SECRET_FILE):
            if not (settings.data_dir / name).is_file():
                raise BackupRefused(
                    f"no {name} in {settings.data_dir}: a backup without it cannot be restored"
                )
            shutil.copyfile(settings.data_dir / name, staging / name)
            os.chmod(staging / name, 0o600)
        manifest = await _sqlite_manifest(staging)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        _write_tar(target, staging, [MANIFEST, *SQLITE_MEMBERS])
    return manifest


async def _sqlite_manifest(data_dir: Path) -> dict[str, Any]:
    db = data_dir / DATABASE_FILE
    now = int(datetime.datetime.now(tz=datetime.UTC).timestamp() * 1000)
    tables = await trio.to_thread.run_sync(backup_sqlite.table_counts, db)
    heads = await trio.to_thread.run_sync(lambda: backup_sqlite.stream_heads(db, limit=CHECKED_STREAMS))
    store = await SqliteStore.open(data_dir)
    try:
        applied = (await store.migration_status()).applied
        streams = await _stream_records(store, heads, now)
    finally:
        await store.close()
    for leftover in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        leftover.unlink(missing_ok=True)
    return {
        "format": FORMAT,
        "kind": "sqlite",
        "relay_version": __version__,
        "created_at": now,
        "migrations": list(applied),
        "tables": tables,
        "streams": streams,
    }


def _write_tar(target: Path, staging: Path, names: Sequence[str]) -> None:
    partial = target.with_name(f".{target.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        for name in names:
            tar.add(staging / name, arcname=name, recursive=False)
    os.replace(partial, target)


def _extract(backup: Path, into: Path, allowed: Sequence[str]) -> dict[str, Any]:
    """Unpack ``backup`` (only the members ``allowed``, no paths) into ``into``; its manifest."""
    try:
        with tarfile.open(backup, mode="r") as tar:
            members = tar.getmembers()
            names = [m.name for m in members]
            if MANIFEST not in names:
                raise BackupRefused(f"{backup} is not a relay backup (no {MANIFEST})")
            for member in members:
                if member.name not in (MANIFEST, *allowed) or not member.isfile():
                    raise BackupRefused(f"{backup} holds an unexpected member {member.name!r}")
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise BackupRefused(f"cannot read {backup}: {exc}") from None
    for name in names:
        os.chmod(into / name, 0o600)
    manifest: dict[str, Any] = json.loads((into / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise BackupRefused(f"{backup} is a backup of format {manifest.get('format')!r}, not {FORMAT}")
    return manifest


def _restore_sqlite(backup: Path, data_dir: Path) -> dict[str, Any]:
    if (data_dir / DATABASE_FILE).exists():
        raise BackupRefused(f"{data_dir} holds a database already: restore into an empty data directory")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".relay-restore-") as tmp:
        manifest = _extract(backup, Path(tmp), SQLITE_MEMBERS)
        if manifest.get("kind") != "sqlite":
            raise BackupRefused(f"{backup} is a backup of {manifest.get('kind')}, not of SQLite")
        for name in (SERVER_KEY_FILE, TOKEN_SECRET_FILE, DATABASE_FILE):  # the database last
            os.replace(Path(tmp) / name, data_dir / name)
    return manifest


async def _verify_sqlite(backup: Path) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="relay-verify-") as tmp:
        data_dir = Path(tmp) / "data"
        manifest = await trio.to_thread.run_sync(_restore_sqlite, backup, data_dir)
        db = data_dir / DATABASE_FILE
        problems = [
            f"integrity: {e}" for e in await trio.to_thread.run_sync(backup_sqlite.integrity_errors, db)
        ]
        problems += _compare_tables(
            manifest["tables"], await trio.to_thread.run_sync(backup_sqlite.table_counts, db)
        )
        store = await SqliteStore.open(data_dir)
        try:
            problems += await _compare_store(store, manifest)
        finally:
            await store.close()
    return problems


# --- shared checks ------------------------------------------------------------------------------------


def _compare_tables(expected: Mapping[str, int], found: Mapping[str, int]) -> list[str]:
    problems = []
    for table in sorted(set(expected) | set(found)):
        if expected.get(table) != found.get(table):
            problems.append(
                f"table {table}: {found.get(table)} rows, the backup recorded {expected.get(table)}"
            )
    return problems


async def _compare_store(store: Store, manifest: Mapping[str, Any]) -> list[str]:
    problems = []
    applied = list((await store.migration_status()).applied)
    if applied != manifest["migrations"]:
        problems.append(f"migrations {applied}, the backup recorded {manifest['migrations']}")
    for record in manifest["streams"]:
        count, digest = await stream_digest(
            store, record["user_id"], record["stream"], record["head"], now_ms=manifest["created_at"]
        )
        if (count, digest) != (record["events"], record["sha256"]):
            problems.append(
                f"a stream's replay differs: {count} events, the backup recorded {record['events']}"
            )
        elif (head := await store.stream_head(record["user_id"], record["stream"])) != record["head"]:
            problems.append(f"a stream's head is {head}, the backup recorded {record['head']}")
    return problems


# --- the commands -------------------------------------------------------------------------------------


async def _backup(settings: Settings, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    target: Path = args.target
    if await trio.Path(target).exists() and not args.force:
        raise BackupRefused(f"{target} exists already (--force to replace it)")
    if settings.database_url is not None:
        from relay.backup_postgres import backup_postgres

        manifest = await backup_postgres(settings.database_url, target, err)
    else:
        manifest = await _backup_sqlite(settings, target, err)
    rows = sum(manifest["tables"].values())
    print(f"backed up {rows} rows of {len(manifest['tables'])} tables to {target}", file=out)


async def _restore(settings: Settings, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    if settings.database_url is not None:
        from relay.backup_postgres import restore_postgres

        manifest = await restore_postgres(args.backup, settings.database_url, err)
        where = "the database of RELAY_DATABASE_URL"
    else:
        manifest = await trio.to_thread.run_sync(_restore_sqlite, args.backup, settings.data_dir)
        where = str(settings.data_dir)
    print(f"restored the backup of {manifest['created_at']} into {where}", file=out)


async def _verify(settings: Settings, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    kind = _peek_kind(args.backup)
    if kind == "postgres":
        from relay.backup_postgres import verify_postgres

        server = args.scratch_url or settings.database_url
        if server is None:
            raise BackupRefused("verifying a PostgreSQL backup needs --scratch-url or RELAY_DATABASE_URL")
        problems = await verify_postgres(args.backup, server, err)
    elif kind == "sqlite":
        problems = await _verify_sqlite(args.backup)
    else:
        raise BackupRefused(f"{args.backup} is a backup of {kind!r}, which this version does not know")
    if problems:
        for problem in problems:
            print(f"relay: {problem}", file=err)
        raise BackupRefused(f"{args.backup} does not restore to what it recorded ({len(problems)} problems)")
    print(f"{args.backup}: restored and checked, everything matches", file=out)


def _refuse_postgres(settings: Settings) -> None:
    if settings.database_url is not None:
        raise BackupRefused(
            "RELAY_DATABASE_URL is set: backups of PostgreSQL are not available in this version"
        )


def _peek_kind(backup: Path) -> str:
    try:
        with tarfile.open(backup, mode="r") as tar:
            member = tar.extractfile(MANIFEST)
            if member is None:
                raise KeyError(MANIFEST)
            return str(json.loads(member.read()).get("kind"))
    except (tarfile.TarError, OSError, KeyError, ValueError):
        raise BackupRefused(f"{backup} is not a relay backup") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay-backup", description="Back up, restore and verify relay's store."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    backup = commands.add_parser("backup", help="back up the store RELAY_* names into one file")
    backup.add_argument("target", type=Path, metavar="FILE")
    backup.add_argument("--force", action="store_true", help="replace FILE if it exists")
    restore = commands.add_parser("restore", help="restore a backup into an empty store")
    restore.add_argument("backup", type=Path, metavar="FILE")
    verify = commands.add_parser("verify", help="restore into a fresh database and check it")
    verify.add_argument("backup", type=Path, metavar="FILE")
    verify.add_argument(
        "--scratch-url",
        metavar="URL",
        help="PostgreSQL: the server to restore into a scratch database (default: RELAY_DATABASE_URL's)",
    )
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ if environ is None else environ)
    except ConfigError as exc:
        print(f"relay: {exc}", file=err)
        return 2
    command = {"backup": _backup, "restore": _restore, "verify": _verify}[args.command]
    try:
        trio.run(command, settings, args, out, err)
    except BackupRefused as exc:
        print(f"relay: {exc}", file=err)
        return 1
    except StoreUnavailable as exc:
        print(f"relay: the database is unavailable: {exc.detail or exc.message}", file=err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
