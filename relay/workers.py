"""``relay serve --workers N``: N server processes on one host, sharing one listening socket.

The parent binds the address once (so ``--port 0`` picks one port for all), then starts N children,
each ``relay serve --listen-fd FD``: a whole relay node (its own sessions, its own connection pool)
accepting on the inherited socket; the kernel hands each new connection to one of them. They share
everything else as any nodes do: the database and Redis (required: without it each worker would fan
out only to its own sessions; the configuration refuses ``--workers`` without ``RELAY_REDIS_URL``).

With ``RELAY_METRICS_BIND=host:p``, worker ``k`` serves its own ``/metrics`` on ``host:p+k``.

The parent forwards SIGTERM and SIGINT to every worker (each drains gracefully, §8) and exits 0 once
all have exited 0. A worker that dies unexpectedly is logged and started again after a second.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys

import attrs
import trio

from relay import __version__
from relay.config import Settings

__all__ = ["RESTART_DELAY_S", "bind_listener", "run_workers"]

log = logging.getLogger("relay.workers")

#: How long the parent waits before starting a worker again that died on its own (seconds).
RESTART_DELAY_S = 1.0
#: Beyond the drain bound, how long the parent waits for its workers to exit after a signal (seconds).
EXIT_MARGIN_S = 5.0


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` that children can inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


@attrs.define(eq=False)
class _Worker:
    index: int
    argv: list[str]
    env: dict[str, str]
    fds: tuple[int, ...]
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
            self.argv, env=self.env, pass_fds=self.fds, stdin=subprocess.DEVNULL
        )

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)


def run_workers(settings: Settings) -> int:
    """Serve with ``settings.workers`` processes until a signal; the exit status (0: all exited 0)."""
    try:
        main = bind_listener(settings.host, settings.port)
    except OSError as exc:
        log.error("cannot listen on %s port %s: %s", settings.host, settings.port, exc.strerror or exc)
        return 1
    workers: list[_Worker] = []
    metrics_sockets: list[socket.socket] = []
    for index in range(settings.workers):
        env = dict(os.environ)
        argv = [sys.executable, "-m", "relay", "serve", "--listen-fd", str(main.fileno())]
        fds = [main.fileno()]
        if settings.metrics_bind is not None:
            host, _, port = settings.metrics_bind.rpartition(":")
            try:
                metrics = bind_listener(host.strip("[]"), int(port) + index)
            except OSError as exc:
                log.error(
                    "cannot listen on %s port %s for metrics: %s", host, int(port) + index, exc.strerror
                )
                return 1
            metrics_sockets.append(metrics)
            env["RELAY_METRICS_BIND"] = f"{host}:{int(port) + index}"
            argv += ["--metrics-fd", str(metrics.fileno())]
            fds.append(metrics.fileno())
        workers.append(_Worker(index=index, argv=argv, env=env, fds=tuple(fds)))
    log.info("relay %s listening on %s (%d workers)", __version__, _url(main), settings.workers)
    try:
        return trio.run(_supervise, workers, settings)
    finally:
        main.close()
        for sock in metrics_sockets:
            sock.close()


async def _supervise(workers: list[_Worker], settings: Settings) -> int:
    stopping = trio.Event()
    for worker in workers:
        worker.start()

    async def watch(worker: _Worker) -> None:
        while True:
            assert worker.process is not None
            code = await trio.to_thread.run_sync(worker.process.wait, abandon_on_cancel=True)
            if stopping.is_set():
                return
            log.error("worker %d exited with status %s; starting it again", worker.index, code)
            await trio.sleep(RESTART_DELAY_S)
            if stopping.is_set():
                return
            worker.start()

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            for worker in workers:
                nursery.start_soon(watch, worker)
            async for signum in signals:
                log.info("%s: stopping %d workers", signal.Signals(signum).name, len(workers))
                stopping.set()
                for worker in workers:
                    worker.signal(signum)
                break
            nursery.cancel_scope.cancel()
    codes = []
    with trio.move_on_after(settings.drain_timeout_ms / 1000 + EXIT_MARGIN_S):
        for worker in workers:
            assert worker.process is not None
            codes.append(await trio.to_thread.run_sync(worker.process.wait, abandon_on_cancel=True))
    for worker in workers:
        if worker.process is not None and worker.process.poll() is None:
            log.error("worker %d did not stop in time; killing it", worker.index)
            worker.process.kill()
            codes.append(-9)
    log.info("stopped")
    return 0 if codes and all(code == 0 for code in codes) else 1
