"""The ``relay`` command: ``relay serve``, the ``relay admin ...`` tree of PROTOCOL.md §8, and
``relay device ...`` (the reference client, :mod:`relay.client.cli`).

This module is the entry point that reads ``os.environ``. Exit status: 0 on success, 1 when a
command is refused (an unknown id, a command not available in this version, an address already in
use, a database that cannot be opened), 2 for bad arguments or a bad setting. A refusal is one line,
the last on stderr. The admin commands themselves are :mod:`relay.admin`; they log nothing below
warning.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

import trio

from relay import __version__
from relay.config import ConfigError, Settings
from relay.ops.logs import configure_logging
from relay.ops.tracing import configure_tracing
from relay.protocol.syntax import is_uuid

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2

log = logging.getLogger("relay")


#: Options whose values are base64url (tokens, keys, pairing URIs): such a value may begin with ``-``,
#: which argparse would take for an option, so ``--token -x...`` is read as ``--token=-x...``.
_B64_VALUED = frozenset({"--token", "--uri", "--public-key", "--server-key"})


def _joined_values(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    items = iter(argv)
    for arg in items:
        if arg in _B64_VALUED:
            value = next(items, None)
            out.append(arg if value is None else f"{arg}={value}")
        else:
            out.append(arg)
    return out


def _uuid(text: str) -> str:
    if not is_uuid(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a lowercase UUID")
    return text


def _device_name(text: str) -> str:
    """A device name as it will be stored (PROTOCOL.md §1): NFC, trimmed, 1..64 code points."""
    from relay.errors import BadRequest
    from relay.protocol.names import normalize_device_name

    try:
        return normalize_device_name(text)
    except BadRequest as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device name: {exc.message}") from None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number in 0..65535 (0: any free port)")
    return int(text)


def _workers(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of workers")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree. Admin leaves carry ``admin_command`` ("user create", ...)."""
    parser = argparse.ArgumentParser(
        prog="relay", description="A self-hostable server that keeps one person's devices in sync."
    )
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the server", description="Run the server (PROTOCOL.md §8)."
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port to listen on (default 8080; 0 picks a free one)")
    serve.add_argument("--workers", type=_workers, help="worker processes (default 1; needs RELAY_REDIS_URL)")
    # Internal: how `--workers` hands each worker process the listening sockets it inherited.
    serve.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--metrics-fd", type=int, help=argparse.SUPPRESS)

    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    admin = commands.add_parser("admin", help="operator commands", description="Operator commands.")
    groups = admin.add_subparsers(dest="group", required=True, metavar="GROUP")

    def leaf(
        group: argparse._SubParsersAction[argparse.ArgumentParser], name: str, full: str, help: str
    ) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help, parents=[json_flag], description=help)
        sub.set_defaults(admin_command=full)
        return sub

    user = groups.add_parser("user", help="accounts").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    leaf(user, "create", "user create", "create a user and an enrolment token for its first device")
    leaf(user, "list", "user list", "list users")
    leaf(user, "show", "user show", "show one user").add_argument("id", type=_uuid, metavar="ID")
    delete = leaf(user, "delete", "user delete", "delete a user and everything of it")
    delete.add_argument("id", type=_uuid, metavar="ID")
    delete.add_argument("--yes", action="store_true", help="confirm the deletion")

    device = groups.add_parser("device", help="devices").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    leaf(device, "list", "device list", "list a user's devices").add_argument(
        "--user", type=_uuid, required=True, metavar="ID"
    )
    leaf(device, "revoke", "device revoke", "revoke a device").add_argument("id", type=_uuid, metavar="ID")
    rename = leaf(device, "rename", "device rename", "rename a device")
    rename.add_argument("id", type=_uuid, metavar="ID")
    rename.add_argument("name", type=_device_name, metavar="NAME")

    token = groups.add_parser("token", help="enrolment tokens").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    leaf(token, "create", "token create", "issue another enrolment token for a user").add_argument(
        "--user", type=_uuid, required=True, metavar="ID"
    )

    db = groups.add_parser("db", help="database").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    leaf(db, "migrate", "db migrate", "apply pending migrations")
    leaf(db, "status", "db status", "show applied and pending migrations")

    from relay.client.cli import add_device_commands

    add_device_commands(commands)
    return parser


def _admin(args: argparse.Namespace, settings: Settings, *, stdout: TextIO, stderr: TextIO) -> int:
    from relay.admin import run_admin

    _configure_logging(stderr, logging.WARNING)
    return run_admin(args, settings, stdout=stdout, stderr=stderr)


def _configure_logging(stream: TextIO, level: int) -> None:
    """Logs of the commands people run at a terminal: one line each, secrets redacted."""
    configure_logging(stream, level, json_lines=False)


async def serve_until_signalled(
    settings: Settings,
    *,
    fds: tuple[int, ...] = (),
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully. A second signal stops at once."""
    from relay.ops.gc import tune_for_serving
    from relay.serving import serve

    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    if stop.is_set():
                        log.warning("%s again: stopping now", signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        return
                    log.info("%s: shutting down", signal.Signals(signum).name)
                    stop.set()

            async def run(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
                await serve(settings, shutdown_trigger=stop.wait, fds=fds, task_status=task_status)
                nursery.cancel_scope.cancel()  # the server is done: stop watching signals

            nursery.start_soon(watch_signals)
            urls = await nursery.start(run)
            tune_for_serving()  # started: what lives now lives as long as the process (relay.ops.gc)
            task_status.started(urls)
    log.info("stopped")


def _first(group: BaseExceptionGroup[Exception]) -> BaseException:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


def _serve(settings: Settings, fds: tuple[int, ...] = ()) -> int:
    from relay.app import StartupFailed

    if settings.workers > 1 and not fds:
        from relay.workers import run_workers

        return run_workers(settings)
    failure: str | None = None
    try:
        trio.run(functools.partial(serve_until_signalled, settings, fds=fds))
    except* StartupFailed as group:
        failure = f"cannot start: {_first(group)}"
    except* OSError as group:
        # Binding the address is the one failure an operator causes and fixes: one line, no trace.
        error = _first(group)
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        failure = f"cannot listen on {settings.host} port {settings.port}: {reason}"
    if failure is not None:
        log.error("%s", failure)
        return EXIT_REFUSED
    return EXIT_OK


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the ``relay`` command; return its exit status. Reads ``os.environ`` unless given ``environ``."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    args = build_parser().parse_args(_joined_values(sys.argv[1:] if argv is None else argv))
    if args.command == "device":  # a client: it reads no server configuration
        from relay.client.cli import run_device

        _configure_logging(err, logging.WARNING)
        return run_device(args, stdin=sys.stdin, stdout=out, stderr=err)
    try:
        if args.command == "serve":
            settings = Settings.from_env(
                os.environ if environ is None else environ,
                host=args.host,
                port=args.port,
                workers=args.workers,
            )
        else:
            settings = Settings.from_env(os.environ if environ is None else environ)
    except ConfigError as exc:
        print(f"relay: {exc}", file=err)
        return EXIT_USAGE
    if args.command == "serve":
        try:
            configure_tracing(os.environ if environ is None else environ)
        except ValueError as exc:
            print(f"relay: {exc}", file=err)
            return EXIT_USAGE
        configure_logging(
            err,
            settings.log_level_number,
            json_lines=settings.log_format == "json",
            production=settings.production,
        )
        fds = tuple(fd for fd in (args.listen_fd, args.metrics_fd) if fd is not None)
        return _serve(settings, fds)
    return _admin(args, settings, stdout=out, stderr=err)
