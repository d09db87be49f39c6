"""`relay serve --workers N`: N worker processes on one listening socket, sharing Redis (and the
database): devices connected to different workers see each other's events; SIGTERM stops them all."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loopback"))

from e2e_support import relay, relay_env
from loopback_support import live_channel, next_live

from relay.client import DeviceCredentials, RelayHttp, connect
from relay.protocol import messages

pytestmark = pytest.mark.redis

CAP_S = 90


async def test_two_workers_serve_one_port_relay_between_each_other_and_stop_on_sigterm(
    tmp_path: Path, redis_url: str
) -> None:
    import subprocess

    env = relay_env(tmp_path, RELAY_REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    log = tmp_path / "serve.log"
    with trio.fail_after(CAP_S):
        with log.open("wb") as out:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "relay", "serve", "--port", "0", "--workers", "2"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        try:
            while (text := log.read_text()).count("the bus is delivering") < 2:
                assert process.poll() is None, text
                await trio.sleep(0.05)
            url = text.split(" listening on ", 1)[1].split()[0]
            created = (await relay("admin", "user", "create", "--json", env=env)).json()
            devices: list[DeviceCredentials] = []
            async with RelayHttp(url) as http:
                for n in range(6):
                    token = (
                        created["token"]
                        if n == 0
                        else (
                            await relay(
                                "admin", "token", "create", "--user", created["user_id"], "--json", env=env
                            )
                        ).json()["token"]
                    )
                    devices.append(await http.enroll(token, f"device {n}"))
            # Six sessions on one port: the kernel spreads them over both workers; every one of them
            # hears every other's event whichever worker holds it (through Redis).
            channels = [live_channel() for _ in devices]
            heard: list[set[str]] = [set() for _ in devices]
            async with trio.open_nursery() as nursery:
                conns = []
                for creds, (send, _) in zip(devices, channels, strict=True):
                    conns.append(await nursery.start(_hold, creds, send))
                for index, conn in enumerate(conns):
                    await conn.publish("notes", {"from": index})
                for index, (_, receive) in enumerate(channels):
                    while len(heard[index]) < len(devices) - 1:
                        heard[index].add((await next_live(receive, messages.Event)).event.device_id)
                nursery.cancel_scope.cancel()
            pids = {line for line in log.read_text().splitlines() if "the bus is delivering" in line}
        finally:
            process.send_signal(signal.SIGTERM)
            code = await process.wait()
    assert code == 0, log.read_text()
    for index, creds in enumerate(devices):
        assert heard[index] == {d.device_id for d in devices} - {creds.device_id}
    assert len(pids) == 2  # two nodes: two bus connections
    assert "Traceback" not in log.read_text()


async def _hold(creds: DeviceCredentials, send: object, *, task_status: trio.TaskStatus[object]) -> None:
    async with connect(creds, live=send) as conn:  # type: ignore[arg-type]
        task_status.started(conn)
        await trio.sleep_forever()
