"""Which nodes of a SQLite database are still running: one lock file per node process.

A SQLite database is used by processes of one host. Each node holds an exclusive ``flock`` on
``nodes/<node_id>.lock`` in the data directory from its first heartbeat until it stops; the kernel
releases it when the process ends, however it ends (SIGKILL and power loss included). So when another
node's lock can be taken, that node is gone and its heartbeat row can be forgotten at once, instead of
the restarted node reporting itself not ready (another node on the database without a shared bus) for
as long as the dead node's heartbeat would have lasted.

Blocking (file system calls): call it in a thread. Linux and other POSIX systems with ``flock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path

__all__ = ["NodeLocks"]

LOCK_DIR = "nodes"
_NODE_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class NodeLocks:
    """The lock files of the nodes of one data directory, and the ones this process holds."""

    def __init__(self, data_dir: Path) -> None:
        self._dir = data_dir / LOCK_DIR
        self._held: dict[str, int] = {}

    def _path(self, node_id: str) -> Path | None:
        return self._dir / f"{node_id}.lock" if _NODE_ID.fullmatch(node_id) else None

    def hold(self, node_id: str) -> None:
        """Take (once) the lock of ``node_id``, a node of this process."""
        path = self._path(node_id)
        if path is None or node_id in self._held:
            return
        self._dir.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        self._held[node_id] = fd

    def holds(self, node_id: str) -> bool:
        """Whether this process holds ``node_id``'s lock (no file system call)."""
        return node_id in self._held

    def release(self, node_id: str) -> None:
        """Give up ``node_id``'s lock and remove its file (the node stops). Idempotent."""
        fd = self._held.pop(node_id, None)
        path = self._path(node_id)
        if fd is not None and path is not None:
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)

    def release_all(self) -> None:
        for node_id in list(self._held):
            self.release(node_id)

    def gone_of(self, node_ids: list[str]) -> list[str]:
        """Those of ``node_ids`` that are :meth:`gone`."""
        return [node_id for node_id in node_ids if self.gone(node_id)]

    def gone(self, node_id: str) -> bool:
        """Whether ``node_id`` is provably not running: its lock file exists and nobody holds it (then
        the file is removed). Unknown (no file, a malformed id, a lock held) is not gone."""
        if node_id in self._held:
            return False
        path = self._path(node_id)
        if path is None:
            return False
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False  # held: the node runs
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        return True
