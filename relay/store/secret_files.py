"""The server's secrets as two files in the data directory (the SQLite store's home).

- ``server.key``: the 32-byte Ed25519 seed of the server key (``server_key``, ``server_sig``);
- ``token.secret``: 32 random bytes that key replay tokens and keyed hashes.

Both are raw bytes, mode 0600, created on first use and read ever after. Creation is atomic and never
overwrites: the bytes are written and fsynced to a private temporary file, which is then hard-linked to
the final name (``os.link`` fails if the name exists, so two processes starting together agree on
whichever was linked first; both then read the file back). On a file system without hard links it
falls back to ``os.replace`` when the name is still free. A file of the wrong size stops the server
with :class:`~relay.errors.StoreUnavailable` naming it: a truncated key must never be "repaired" by
making a new one, which would silently change the server's identity.

Blocking: call it in a thread.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from relay import crypto
from relay.errors import StoreUnavailable
from relay.store.base import ServerSecrets

__all__ = ["SERVER_KEY_FILE", "TOKEN_SECRET_FILE", "load_or_create_secret_files"]

SERVER_KEY_FILE = "server.key"
TOKEN_SECRET_FILE = "token.secret"  # noqa: S105 (a file name, not a secret)
_MODE = 0o600


def load_or_create_secret_files(data_dir: Path) -> ServerSecrets:
    """The secrets kept in ``data_dir``, creating whichever file is missing."""
    try:
        seed = _load_or_create(data_dir / SERVER_KEY_FILE, crypto.SEED_BYTES)
        token_secret = _load_or_create(data_dir / TOKEN_SECRET_FILE, crypto.SECRET_BYTES)
    except OSError as exc:
        detail = f"cannot read or create the server secrets in {data_dir}: {exc}"
        raise StoreUnavailable(detail=detail) from exc
    return ServerSecrets(signing_seed=seed, token_secret=token_secret)


def _read(path: Path, size: int) -> bytes:
    data = path.read_bytes()
    if len(data) != size:
        raise StoreUnavailable(
            detail=f"{path} holds {len(data)} bytes, not {size}: refusing to start with a damaged secret "
            "(restore it from a backup; delete it only to give the server a new identity)"
        )
    return data


def _load_or_create(path: Path, size: int) -> bytes:
    with contextlib.suppress(FileNotFoundError):
        return _read(path, size)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), _MODE)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(size))
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
        except OSError:
            if not path.exists():
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return _read(path, size)


def _fsync_dir(directory: Path) -> None:
    # Makes the new directory entry durable; not possible (nor needed) everywhere.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
