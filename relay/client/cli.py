"""``relay device ...``: a device from the command line, on the reference client.

::

    relay device enroll --url URL --token TOKEN --name NAME      first device (operator's token)
    relay device enroll --uri 'relay:pair?...' --name NAME        any other (a pairing URI, §2)
    relay device publish STREAM [BODY] [--id ID] [--ttl S] [--expect-seq N]
    relay device publish STREAM --lines < events.jsonl           one event per line
    relay device tail [STREAM ...] [--from-start] [--count N] [--notices]
    relay device pair [--public-key KEY]                         a pairing URI for another device
    relay device list [--revoked]                                the user's devices
    relay device rename NAME [--device ID]                       rename this device (or another)
    relay device revoke ID                                       revoke a device (this one too)
    relay device delete-account --yes                            delete the user and everything of it

The device's credentials live in one file (``--device-file``, default ``./relay-device.json``), mode
0600, written atomically (:mod:`relay.client.credentials`); ``enroll`` refuses to replace one.
``publish`` reads BODY (JSON text) from its argument or, when absent or ``-``, from stdin, and prints the
ack. ``tail`` prints each event as one JSON line (``stream``, ``seq``, ``id``, ``device_id``, ``ts``,
``received_at``, ``expires_at``, ``body``), in seq order per stream, and records in the device file how
far it got, so the next ``tail`` resumes there (catching up by replay); a device that never tailed
starts at the current heads, or at the beginning with ``--from-start``. The last five sign their
requests with the device key (§3); ``--json`` prints one JSON object instead of lines for people.

Exit status: 0 on success; 1 when refused (by the server, or no device file, or the server cannot be
reached), with one line on stderr; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TextIO

import attrs
import trio

from relay.client.client import RelayClient, open_client
from relay.client.credentials import CredentialsError, DeviceCredentials
from relay.client.errors import ClientError, ConnectionLost
from relay.client.http import RelayHttp, parse_pairing_uri
from relay.errors import RelayError
from relay.protocol import messages
from relay.protocol.syntax import is_event_id, is_stream_name, is_uuid

__all__ = ["DEFAULT_DEVICE_FILE", "add_device_commands", "run_device"]

DEFAULT_DEVICE_FILE = "relay-device.json"
EXIT_OK = 0
EXIT_REFUSED = 1
#: How often ``tail`` records its positions in the device file while events arrive.
SAVE_INTERVAL_S = 1.0
#: How long ``publish`` waits for its ack (it retries meanwhile) before giving up.
PUBLISH_TIMEOUT_S = 30.0


def _stream(text: str) -> str:
    if not is_stream_name(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a stream name (1..128 of A-Z a-z 0-9 . _ ~ : / -)")
    return text


def _event_id(text: str) -> str:
    if not is_event_id(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an event id (1..64 of A-Z a-z 0-9 . _ : -)")
    return text


def _uuid(text: str) -> str:
    if not is_uuid(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a lowercase UUID")
    return text


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return int(text)


def _natural(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    return int(text)


def add_device_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``relay device ...`` to the ``relay`` command's subcommands."""
    device = commands.add_parser(
        "device", help="act as a device (reference client)", description="Act as a device of a user."
    )
    file_flag = argparse.ArgumentParser(add_help=False)
    file_flag.add_argument(
        "--device-file",
        type=Path,
        default=Path(DEFAULT_DEVICE_FILE),
        metavar="PATH",
        help=f"the device's credentials (default ./{DEFAULT_DEVICE_FILE})",
    )
    actions = device.add_subparsers(dest="device_command", required=True, metavar="ACTION")

    enroll = actions.add_parser(
        "enroll", parents=[file_flag], help="enrol this device", description="Enrol a new device."
    )
    target = enroll.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="the server's base URL (with --token)")
    target.add_argument("--uri", help="a pairing URI (relay:pair?url=...&token=...&server_key=...)")
    enroll.add_argument("--token", help="an enrolment token (with --url)")
    enroll.add_argument("--server-key", help="the server key to pin (default: the one it shows now)")
    enroll.add_argument("--name", required=True, help="the device's name")
    enroll.add_argument("--json", action="store_true", help="print one JSON object")

    publish = actions.add_parser(
        "publish", parents=[file_flag], help="publish one event", description="Publish one event."
    )
    publish.add_argument("stream", type=_stream, metavar="STREAM")
    publish.add_argument("body", nargs="?", default="-", metavar="BODY", help="JSON text (default: stdin)")
    publish.add_argument("--id", type=_event_id, help="the event id (default: 128 random bits)")
    publish.add_argument("--ttl", type=_count, metavar="SECONDS")
    publish.add_argument("--expect-seq", type=_natural, metavar="N")
    publish.add_argument(
        "--lines", action="store_true", help="publish one event per line of stdin (JSON text each)"
    )

    tail = actions.add_parser(
        "tail", parents=[file_flag], help="print events as they arrive", description="Print events."
    )
    tail.add_argument("streams", type=_stream, nargs="*", metavar="STREAM", help="only these streams")
    tail.add_argument("--from-start", action="store_true", help="replay every stream from its start")
    tail.add_argument("--count", type=_count, metavar="N", help="exit after N events")
    tail.add_argument("--notices", action="store_true", help="print presence and device notices too")

    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print one JSON object")
    pair = actions.add_parser(
        "pair", parents=[file_flag, json_flag], help="pair another device", description="Issue a pairing."
    )
    pair.add_argument("--public-key", metavar="KEY", help="bind the token to this device key (b64)")
    listing = actions.add_parser(
        "list", parents=[file_flag, json_flag], help="list the user's devices", description="List devices."
    )
    listing.add_argument("--revoked", action="store_true", help="list revoked devices instead")
    rename = actions.add_parser(
        "rename", parents=[file_flag, json_flag], help="rename a device", description="Rename a device."
    )
    rename.add_argument("name", metavar="NAME")
    rename.add_argument("--device", type=_uuid, metavar="ID", help="another device of the user")
    revoke = actions.add_parser(
        "revoke", parents=[file_flag, json_flag], help="revoke a device", description="Revoke a device."
    )
    revoke.add_argument("id", type=_uuid, metavar="ID")
    delete = actions.add_parser(
        "delete-account",
        parents=[file_flag, json_flag],
        help="delete the user and everything of it",
        description="Delete the user, its devices, streams and events, for good.",
    )
    delete.add_argument("--yes", action="store_true", help="confirm the deletion")


def run_device(args: argparse.Namespace, *, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    """Run ``relay device ...``; return the exit status."""
    try:
        if args.device_command == "enroll":
            trio.run(_enroll, args, stdout)
        elif args.device_command == "publish":
            creds = DeviceCredentials.load(args.device_file)
            bodies = _read_lines(args, stdin) if args.lines else [_read_body(args.body, stdin)]
            trio.run(_publish, args, creds, bodies, stdout)
        elif args.device_command == "tail":
            trio.run(_tail, args, DeviceCredentials.load(args.device_file), stdout)
        else:
            if args.device_command == "delete-account" and not args.yes:
                raise ClientError("refusing to delete the account without --yes")
            creds = DeviceCredentials.load(args.device_file)
            trio.run(_ACCOUNT_COMMANDS[args.device_command], args, creds, stdout)
    except (CredentialsError, ClientError, ConnectionLost) as exc:
        print(f"relay: {exc}", file=stderr)
        return EXIT_REFUSED
    except RelayError as exc:
        print(f"relay: refused: {exc.code}: {exc.message}", file=stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def _read_body(text: str, stdin: TextIO) -> messages.JsonValue:
    raw = stdin.read() if text == "-" else text
    try:
        body: messages.JsonValue = json.loads(raw)
    except ValueError:
        raise ClientError(
            "BODY is not JSON text (quote it: relay device publish notes '{\"a\": 1}')"
        ) from None
    return body


def _read_lines(args: argparse.Namespace, stdin: TextIO) -> list[messages.JsonValue]:
    if args.body != "-" or args.id is not None or args.expect_seq is not None:
        raise ClientError("--lines reads every body from stdin: give no BODY, --id or --expect-seq")
    bodies: list[messages.JsonValue] = []
    for number, line in enumerate(stdin, start=1):
        if line.strip():
            try:
                bodies.append(json.loads(line))
            except ValueError:
                raise ClientError(f"line {number} of stdin is not JSON text") from None
    return bodies


async def _enroll(args: argparse.Namespace, stdout: TextIO) -> None:
    if args.uri is not None:
        if args.token is not None or args.server_key is not None:
            raise ClientError("--uri carries the token and the server key: give neither beside it")
        pairing = parse_pairing_uri(args.uri)
        url, token, server_key = pairing.url, pairing.token, pairing.server_key
    else:
        if args.token is None:
            raise ClientError("--url needs --token")
        url, token, server_key = args.url, args.token, args.server_key
    path: Path = args.device_file
    if await trio.Path(path).exists():  # checked again, atomically, when the file is written
        raise ClientError(f"{path} exists already: refusing to replace a device's key")
    async with RelayHttp(url) as http:
        creds = await http.enroll(token, args.name, server_key=server_key)
    creds.save(path, exclusive=True)
    if args.json:
        print(
            json.dumps({"user_id": creds.user_id, "device_id": creds.device_id, "name": creds.name}),
            file=stdout,
        )
    else:
        print(f"enrolled {creds.name!r} as device {creds.device_id} of user {creds.user_id}", file=stdout)
        print(f"credentials saved to {path} (keep it private: it holds the device's key)", file=stdout)


async def _publish(
    args: argparse.Namespace, creds: DeviceCredentials, bodies: list[messages.JsonValue], stdout: TextIO
) -> None:
    """Publish ``bodies`` in order, each acked before the next is sent; print one ack line each."""
    async with open_client(creds, receive=False, fail_fast=True) as client:
        await client.wait_connected()
        for body in bodies:
            with trio.fail_after(PUBLISH_TIMEOUT_S):
                ack = await client.publish(
                    args.stream, body, id=args.id, ttl=args.ttl, expect_seq=args.expect_seq
                )
            line = {
                "stream": ack.stream,
                "seq": ack.seq,
                "id": ack.id,
                "received_at": ack.received_at,
                "expires_at": ack.expires_at,
                "duplicate": ack.duplicate,
            }
            print(json.dumps(line), file=stdout, flush=True)


def _event_line(event: messages.StoredEvent) -> str:
    return json.dumps(
        {
            "stream": event.stream,
            "seq": event.seq,
            "id": event.id,
            "device_id": event.device_id,
            "ts": event.ts,
            "received_at": event.received_at,
            "expires_at": event.expires_at,
            "body": json.loads(event.body),
        }
    )


def _notice_line(notice: messages.Presence | messages.DeviceNotice) -> str:
    if isinstance(notice, messages.Presence):
        return json.dumps(
            {"type": "presence", "device_id": notice.device_id, "online": notice.online, "at": notice.at}
        )
    return json.dumps(
        {
            "type": "device",
            "change": notice.change,
            "device_id": notice.device_id,
            "name": notice.name,
            "at": notice.at,
        }
    )


async def _tail(args: argparse.Namespace, creds: DeviceCredentials, stdout: TextIO) -> None:
    path: Path = args.device_file
    positions = {} if args.from_start else (dict(creds.positions) if creds.positions else None)
    only = set(args.streams)
    shown = 0

    def save(client: RelayClient) -> None:
        latest = DeviceCredentials.load(path)  # keep whatever else changed in the file meanwhile
        latest.with_positions({**latest.positions, **client.positions}).save(path)

    async with open_client(creds, positions=positions, fail_fast=True) as client:
        await client.wait_connected()
        last_saved = trio.current_time()
        try:
            async for item in client:
                if isinstance(item, messages.StoredEvent):
                    if only and item.stream not in only:
                        continue
                    print(_event_line(item), file=stdout, flush=True)
                    shown += 1
                elif args.notices:
                    print(_notice_line(item), file=stdout, flush=True)
                if args.count is not None and shown >= args.count:
                    break
                if trio.current_time() - last_saved >= SAVE_INTERVAL_S:
                    save(client)
                    last_saved = trio.current_time()
        finally:
            save(client)


# --- the signed device API ------------------------------------------------------------------------------


def _print(args: argparse.Namespace, stdout: TextIO, data: dict[str, object], lines: list[str]) -> None:
    if args.json:
        print(json.dumps(data), file=stdout)
    else:
        for line in lines:
            print(line, file=stdout)


async def _pair(args: argparse.Namespace, creds: DeviceCredentials, stdout: TextIO) -> None:
    async with RelayHttp(creds.url, creds=creds) as http:
        uri, expires_at = await http.pair(public_key=args.public_key)
    _print(
        args,
        stdout,
        {"uri": str(uri), "expires_at": expires_at},
        [str(uri), f"single use; expires at {expires_at} (ms since the epoch)"],
    )


async def _list(args: argparse.Namespace, creds: DeviceCredentials, stdout: TextIO) -> None:
    async with RelayHttp(creds.url, creds=creds) as http:
        devices = await http.devices(revoked=args.revoked)
    lines = []
    for device in devices:
        marks = [
            m
            for m in ("current" if device.get("current") else "", "online" if device.get("online") else "")
            if m
        ]
        if args.revoked:
            marks.append(f"revoked at {device.get('revoked_at')}")
        lines.append(
            f"{device.get('device_id')}  {device.get('name')}" + (f"  ({', '.join(marks)})" if marks else "")
        )
    _print(args, stdout, {"devices": devices}, lines or ["no devices"])


async def _rename(args: argparse.Namespace, creds: DeviceCredentials, stdout: TextIO) -> None:
    target = args.device or creds.device_id
    async with RelayHttp(creds.url, creds=creds) as http:
        device = await http.rename(target, args.name)
    if target == creds.device_id:  # keep the device file's name in step
        latest = DeviceCredentials.load(args.device_file)
        attrs.evolve(latest, name=str(device.get("name", args.name))).save(args.device_file)
    _print(args, stdout, device, [f"renamed {target} to {device.get('name')!r}"])


async def _revoke(args: argparse.Namespace, creds: DeviceCredentials, stdout: TextIO) -> None:
    async with RelayHttp(creds.url, creds=creds) as http:
        await http.revoke(args.id)
    own = " (this device: it can no longer sign in)" if args.id == creds.device_id else ""
    _print(args, stdout, {"revoked": args.id}, [f"revoked {args.id}{own}"])


async def _delete_account(args: argparse.Namespace, creds: DeviceCredentials, stdout: TextIO) -> None:
    async with RelayHttp(creds.url, creds=creds) as http:
        deleted = await http.delete_account()
    _print(
        args,
        stdout,
        {"deleted": deleted},
        [
            f"deleted user {creds.user_id}: {deleted.get('devices')} devices, "
            f"{deleted.get('streams')} streams, {deleted.get('events')} events"
        ],
    )


_ACCOUNT_COMMANDS = {
    "pair": _pair,
    "list": _list,
    "rename": _rename,
    "revoke": _revoke,
    "delete-account": _delete_account,
}
