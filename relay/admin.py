"""``relay admin ...``: the operator commands of PROTOCOL.md §8, on the store ``relay serve`` uses.

They run in their own process, beside a running server if there is one (SQLite in WAL mode lets a
second process read and write safely; the writer lock serialises the two). Every command but
``db status`` first applies pending migrations, exactly as ``relay serve`` does at start-up, so that a
fresh data directory can be administered before the first ``serve``.

Output: ``--json`` prints one JSON object on stdout; otherwise a short table for people. Exit status
0 on success; 1 when refused (an unknown id, a command not available in this version, an unreachable
database), with one line, the last on stderr (and ``{"error": {"code", "message"}}`` on stdout with
``--json``), and nothing changed by the refused command; 2 for bad arguments (argparse, before this
module runs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TextIO

import attrs
import trio

from relay.bus.base import Bus
from relay.clock import Clock, SystemClock
from relay.config import Settings
from relay.errors import BusUnavailable, NameTaken, NotFound, StoreUnavailable
from relay.protocol.names import device_name_key
from relay.store.base import DeviceRecord, Store

__all__ = ["EXIT_OK", "EXIT_REFUSED", "NOT_AVAILABLE", "AdminRefused", "Output", "run_admin"]

log = logging.getLogger("relay.admin")

#: How long telling the running nodes through Redis may take before the command gives up on it.
ANNOUNCE_TIMEOUT_S = 5.0

EXIT_OK = 0
EXIT_REFUSED = 1

#: Commands of §8 that this version does not offer (none: kept for the refusal path's shape).
NOT_AVAILABLE: frozenset[str] = frozenset()


class AdminRefused(Exception):
    """A refusal: ``message`` is the one line shown; ``code`` names it in ``--json`` output."""

    def __init__(self, message: str, *, code: str = "refused") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@attrs.frozen
class Output:
    """What a command prints: ``data`` with ``--json``, else ``lines``."""

    data: dict[str, object]
    lines: Sequence[str]


@attrs.frozen
class Context:
    store: Store
    settings: Settings
    clock: Clock
    args: argparse.Namespace

    async def announce(self, send: Callable[[Bus], Awaitable[None]]) -> None:
        """Tell the running nodes at once through Redis, when it is configured (best effort: the store's
        revocation log reaches them within a poll anyway; a rename notice without Redis reaches only
        sessions that list their devices)."""
        if self.settings.redis_url is None:
            return
        from relay.bus.redis import RedisBus

        bus = RedisBus(self.settings.redis_url, heartbeat_ms=self.settings.heartbeat_ms, clock=self.clock)
        try:
            with trio.move_on_after(ANNOUNCE_TIMEOUT_S):
                await send(bus)
        except BusUnavailable as exc:
            log.warning("could not tell the running nodes through Redis: %s", exc.detail or exc.message)
        finally:
            bus.close()


Command = Callable[[Context], Awaitable[Output]]


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]


async def _require_user(ctx: Context, user_id: str) -> None:
    if user_id not in await ctx.store.list_users():
        raise AdminRefused(f"no user with id {user_id}", code="not_found")


# --- the commands ---------------------------------------------------------------------------------------


async def user_create(ctx: Context) -> Output:
    new = await ctx.store.create_user(now_ms=ctx.clock.now_ms(), token_ttl_ms=ctx.settings.token_ttl_s * 1000)
    return _token_output(new.user_id, new.token.token, new.token.expires_at)


async def token_create(ctx: Context) -> Output:
    user_id: str = ctx.args.user
    try:
        issued = await ctx.store.create_token(
            user_id=user_id, now_ms=ctx.clock.now_ms(), token_ttl_ms=ctx.settings.token_ttl_s * 1000
        )
    except NotFound:
        raise AdminRefused(f"no user with id {user_id}", code="not_found") from None
    return _token_output(user_id, issued.token, issued.expires_at)


def _token_output(user_id: str, token: str, expires_at: int) -> Output:
    return Output(
        {"user_id": user_id, "token": token, "expires_at": expires_at},
        [
            f"user_id     {user_id}",
            f"token       {token}",
            f"expires_at  {expires_at} ({_when(expires_at)}; single use)",
        ],
    )


async def user_list(ctx: Context) -> Output:
    users = await ctx.store.list_users()
    lines = _table(["USER ID"], [[u] for u in users]) if users else ["no users"]
    return Output({"users": [{"user_id": u} for u in users]}, lines)


def _device_json(device: DeviceRecord) -> dict[str, object]:
    return {
        "device_id": device.device_id,
        "name": device.name,
        "created_at": device.created_at,
        "last_seen_at": device.last_seen_at,
        "revoked_at": device.revoked_at,
    }


async def device_list(ctx: Context) -> Output:
    user_id: str = ctx.args.user
    await _require_user(ctx, user_id)
    devices = await ctx.store.list_devices(user_id)
    rows = [
        [
            d.device_id,
            d.name,
            _when(d.created_at),
            _when(d.last_seen_at),
            f"revoked {_when(d.revoked_at)}" if d.revoked else "active",
        ]
        for d in devices
    ]
    header = ["DEVICE ID", "NAME", "CREATED", "LAST SEEN", "STATUS"]
    lines = _table(header, rows) if devices else [f"user {user_id} has no devices"]
    return Output({"user_id": user_id, "devices": [_device_json(d) for d in devices]}, lines)


async def user_show(ctx: Context) -> Output:
    user_id: str = ctx.args.id
    try:
        summary = await ctx.store.get_user(
            user_id, now_ms=ctx.clock.now_ms(), clock_skew_ms=ctx.settings.clock_skew_ms
        )
    except NotFound:
        raise AdminRefused(f"no user with id {user_id}", code="not_found") from None
    data: dict[str, object] = {
        "user_id": summary.user_id,
        "created_at": summary.created_at,
        "devices": summary.devices,
        "revoked_devices": summary.revoked_devices,
        "streams": summary.streams,
        "events": summary.events,
        "stored_bytes": summary.stored_bytes,
    }
    lines = [
        f"user_id          {summary.user_id}",
        f"created_at       {summary.created_at} ({_when(summary.created_at)})",
        f"devices          {summary.devices} (and {summary.revoked_devices} revoked)",
        f"streams          {summary.streams}",
        f"events           {summary.events} ({summary.stored_bytes} bytes of bodies)",
    ]
    return Output(data, lines)


async def user_delete(ctx: Context) -> Output:
    user_id: str = ctx.args.id
    try:
        deleted = await ctx.store.delete_user(
            user_id, now_ms=ctx.clock.now_ms(), remember_ms=ctx.settings.max_ttl_s * 1000
        )
    except NotFound:
        raise AdminRefused(f"no user with id {user_id}", code="not_found") from None
    await ctx.announce(lambda bus: bus.announce_user_deleted(user_id))
    counts = {"devices": deleted.devices, "streams": deleted.streams, "events": deleted.events}
    return Output(
        {"user_id": user_id, "deleted": counts},
        [
            f"deleted user {user_id}: {deleted.devices} devices, {deleted.streams} streams, "
            f"{deleted.events} events"
        ],
    )


async def device_revoke(ctx: Context) -> Output:
    device_id: str = ctx.args.id
    now = ctx.clock.now_ms()
    try:
        device = await ctx.store.revoke_device(device_id, now_ms=now)
    except NotFound:
        raise AdminRefused(f"no device with id {device_id}", code="not_found") from None
    already = device.revoked_at is not None and device.revoked_at < now
    line = f"device {device_id} was already revoked" if already else f"revoked device {device_id}"
    if not already:
        await ctx.announce(
            lambda bus: bus.announce_device(device.user_id, "revoked", device.device_id, device.name, now)
        )
    return Output(
        {"device_id": device.device_id, "user_id": device.user_id, "revoked_at": device.revoked_at},
        [f"{line} at {device.revoked_at} ({_when(device.revoked_at)})"],
    )


async def device_rename(ctx: Context) -> Output:
    device_id: str = ctx.args.id
    name: str = ctx.args.name
    try:
        device = await ctx.store.rename_device(
            device_id, name=name, name_key=device_name_key(name), now_ms=ctx.clock.now_ms()
        )
    except NotFound:
        raise AdminRefused(f"no device with id {device_id} that is not revoked", code="not_found") from None
    except NameTaken:
        raise AdminRefused(f"another device of the user is named {name!r}", code="name_taken") from None
    renamed_at = ctx.clock.now_ms()
    await ctx.announce(
        lambda bus: bus.announce_device(device.user_id, "renamed", device.device_id, device.name, renamed_at)
    )
    return Output(_device_json(device), [f"renamed device {device_id} to {device.name!r}"])


async def db_migrate(ctx: Context) -> Output:
    applied = await ctx.store.migrate()
    lines = [f"applied {name}" for name in applied] or ["the database is up to date"]
    return Output({"applied": applied}, lines)


async def db_status(ctx: Context) -> Output:
    status = await ctx.store.migration_status()
    lines = [f"applied  {name}" for name in status.applied] + [f"pending  {name}" for name in status.pending]
    if not status.pending:
        lines.append("the database is up to date")
    return Output({"applied": list(status.applied), "pending": list(status.pending)}, lines)


COMMANDS: dict[str, Command] = {
    "user create": user_create,
    "user list": user_list,
    "user show": user_show,
    "user delete": user_delete,
    "token create": token_create,
    "device list": device_list,
    "device revoke": device_revoke,
    "device rename": device_rename,
    "db migrate": db_migrate,
    "db status": db_status,
}

#: Commands that run on the database as it is, without applying pending migrations first.
_NO_MIGRATION = frozenset({"db status", "db migrate"})


# --- running one ----------------------------------------------------------------------------------------


def _refusal_before_store(args: argparse.Namespace, settings: Settings) -> AdminRefused | None:
    command: str = args.admin_command
    if command == "user delete" and not args.yes:
        return AdminRefused("refusing to delete a user without --yes")
    if command in NOT_AVAILABLE or command not in COMMANDS:
        return AdminRefused(
            f"'relay admin {command}' is not available in this version of relay", code="not_available"
        )
    return None


async def _run(
    args: argparse.Namespace,
    settings: Settings,
    open_store: Callable[[Settings], Awaitable[Store]],
    clock: Clock,
) -> Output:
    command: str = args.admin_command
    try:
        store = await open_store(settings)
    except StoreUnavailable as exc:
        raise AdminRefused(
            f"the database is unavailable: {exc.detail or exc.message}", code="unavailable"
        ) from None
    try:
        if command not in _NO_MIGRATION:
            await store.migrate()
        return await COMMANDS[command](Context(store=store, settings=settings, clock=clock, args=args))
    except StoreUnavailable as exc:
        raise AdminRefused(
            f"the database is unavailable: {exc.detail or exc.message}", code="unavailable"
        ) from None
    finally:
        with trio.CancelScope(shield=True):
            await store.close()


def run_admin(
    args: argparse.Namespace,
    settings: Settings,
    *,
    stdout: TextIO,
    stderr: TextIO,
    open_store: Callable[[Settings], Awaitable[Store]] | None = None,
    clock: Clock | None = None,
) -> int:
    """Run the admin command ``args`` describes (in its own ``trio.run``); print; return the exit status.

    ``open_store`` opens the store (default: the one ``relay serve`` uses for ``settings``); the command
    closes it when done.
    """
    as_json: bool = args.json
    try:
        refusal = _refusal_before_store(args, settings)
        if refusal is not None:
            raise refusal
        if open_store is None:
            from relay.app import open_default_store

            open_store = open_default_store
        output = trio.run(_run, args, settings, open_store, clock if clock is not None else SystemClock())
    except AdminRefused as refused:
        if as_json:
            print(json.dumps({"error": {"code": refused.code, "message": refused.message}}), file=stdout)
        print(f"relay: {refused.message}", file=stderr)
        return EXIT_REFUSED
    if as_json:
        print(json.dumps(output.data), file=stdout)
    else:
        for line in output.lines:
            print(line, file=stdout)
    return EXIT_OK
