"""Online backup of the SQLite store, and what a backup is checked against.

:func:`copy_database` uses SQLite's online backup API: it copies the database page by page while the
server keeps running (a writer that commits meanwhile makes SQLite restart the copy of the pages it
changed, so the copy is one consistent snapshot) and reports progress. :func:`table_counts` and
:func:`stream_heads` read a database file directly (read-only) for the manifest; the events of a
stream are read back through the store itself (the replay path), not here.

Blocking: call these in a thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

__all__ = ["PAGES_PER_STEP", "copy_database", "integrity_errors", "stream_heads", "table_counts"]

#: Pages copied per step of the online backup; between steps the server may write (pages).
PAGES_PER_STEP = 1024

Progress = Callable[[int, int], None]  # (pages done, pages in all)


def copy_database(source: Path, target: Path, progress: Progress | None = None) -> None:
    """Copy the database at ``source`` into a new file ``target`` (mode 0600), online."""
    target.touch(mode=0o600, exist_ok=False)
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as src, sqlite3.connect(target) as dst:

        def step(status: int, remaining: int, total: int) -> None:
            if progress is not None:
                progress(total - remaining, total)

        src.backup(dst, pages=PAGES_PER_STEP, progress=step)
        dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
    src.close()
    dst.close()


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def table_counts(path: Path) -> dict[str, int]:
    """Rows per table of the database at ``path`` (SQLite's own tables left out)."""
    conn = _read_only(path)
    try:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master"
                " WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        # The names come from sqlite_master itself; quoting keeps any name a name.
        return {name: conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names}  # noqa: S608
    finally:
        conn.close()


def stream_heads(path: Path, *, limit: int) -> list[tuple[str, str, int]]:
    """``(user_id, stream, head)`` of the ``limit`` most recently written streams."""
    conn = _read_only(path)
    try:
        rows = conn.execute(
            "SELECT user_id, name, head FROM streams ORDER BY last_written_at DESC, user_id, name LIMIT ?",
            (limit,),
        ).fetchall()
        return [(str(u), str(n), int(h)) for u, n, h in rows]
    finally:
        conn.close()


def integrity_errors(path: Path) -> list[str]:
    """What ``PRAGMA integrity_check`` finds wrong (empty when the file is sound)."""
    conn = _read_only(path)
    try:
        found = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
        return [] if found == ["ok"] else found
    finally:
        conn.close()
