"""`relay serve` as operators run it: a real process on a free loopback port, stopped by a signal.

Also the app in-process (same HTTP over a real socket, without a subprocess) for the request-id and
error-body rules of PROTOCOL.md §6.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import attrs
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from relay import crypto
from relay.cli import main
from relay.config import ConfigError, Settings
from relay.protocol import codec, messages
from relay.protocol.client_handshake import ClientHandshake
from relay.protocol.syntax import is_request_id
from relay.serving import serve

#: The line `relay serve` logs once it listens (JSON or text); the URL ends at a quote or space.
LISTENING = re.compile(r"listening on (https?://[^\s\",]+)[\",\s]")

#: The console script installed next to the interpreter running the tests (.venv/bin/relay).
RELAY = str(Path(sys.executable).with_name("relay"))
#: Starting Python, Quart and Hypercorn takes about a second; this is the cap for a whole test.
CAP_S = 30


def last_message(lines: list[str]) -> str:
    """The message of the last log line `relay serve` wrote (one JSON object per line)."""
    record = json.loads(lines[-1])
    assert set(record) >= {"ts", "level", "logger", "message"}
    return str(record["message"])


@attrs.frozen
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


async def get(base_url: str, path: str, headers: Mapping[str, str] | None = None) -> Answer:
    """GET base_url + path with http.client (in a thread), with a fresh connection."""
    host_port = base_url.removeprefix("http://")
    host, _, port = host_port.rpartition(":")

    def request() -> Answer:
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            conn.request("GET", path, headers=dict(headers or {}))
            response = conn.getresponse()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    return await trio.to_thread.run_sync(request, abandon_on_cancel=True)


async def post_json(base_url: str, path: str, body: object) -> Answer:
    """POST a JSON body with http.client (in a thread), with a fresh connection."""
    host, _, port = base_url.removeprefix("http://").rpartition(":")

    def request() -> Answer:
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    return await trio.to_thread.run_sync(request, abandon_on_cancel=True)


async def wait_for_health(base_url: str) -> Answer:
    """Poll /healthz until it answers 200 (the caller's fail_after bounds the wait)."""
    while True:
        try:
            answer = await get(base_url, "/healthz")
        except OSError:
            answer = None
        if answer is not None and answer.status == 200:
            return answer
        await trio.sleep(0.05)


def server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(RELAY_DATA_DIR=str(tmp_path / "data"), RELAY_LOG_LEVEL="info", **extra)
    return env


async def check_request_ids(base_url: str) -> None:
    first = await wait_for_health(base_url)
    assert first.json() == {"status": "ok"}
    assert is_request_id(first.headers["x-request-id"])
    second = await get(base_url, "/healthz")
    assert is_request_id(second.headers["x-request-id"])
    assert second.headers["x-request-id"] != first.headers["x-request-id"]

    echoed = await get(base_url, "/healthz", {"X-Request-ID": "client-id_1.2"})
    assert echoed.headers["x-request-id"] == "client-id_1.2"

    for invalid in ("has space", "x" * 129, "semi;colon"):
        fresh = await get(base_url, "/healthz", {"X-Request-ID": invalid})
        assert fresh.status == 200
        assert fresh.headers["x-request-id"] != invalid
        assert is_request_id(fresh.headers["x-request-id"])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_relay_serve_answers_healthz_then_exits_0_on_signal(tmp_path: Path, signum: int) -> None:
    output = bytearray()
    listening = trio.Event()
    urls: list[str] = []

    async def read_stderr(stream: trio.abc.ReceiveStream) -> None:
        async for chunk in stream:
            output.extend(chunk)
            for line in output.decode(errors="replace").splitlines():
                found = LISTENING.search(line)
                if found and not listening.is_set():
                    urls.append(found.group(1))
                    listening.set()

    with trio.fail_after(CAP_S):
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    [RELAY, "serve", "--host", "127.0.0.1", "--port", "0"],
                    env=server_env(tmp_path),
                    stdin=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    check=False,
                )
            )
            assert process.stderr is not None
            nursery.start_soon(read_stderr, process.stderr)
            await listening.wait()
            assert urls[0].startswith("http://127.0.0.1:")
            await check_request_ids(urls[0])
            process.send_signal(signum)
            returncode = await process.wait()

    log = output.decode(errors="replace")
    assert returncode == 0, log
    assert "Traceback" not in log
    assert f"{signal.Signals(signum).name}: shutting down" in log


@attrs.frozen
class Server:
    url: str
    process: trio.Process


@asynccontextmanager
async def relay_server(env: Mapping[str, str]) -> AsyncIterator[Server]:
    """``relay serve --port 0`` in a subprocess, until it exits; SIGTERM it unless the test did.

    The process must exit 0 without a traceback.
    """
    output = bytearray()
    listening = trio.Event()
    urls: list[str] = []

    async def read_stderr(stream: trio.abc.ReceiveStream) -> None:
        async for chunk in stream:
            output.extend(chunk)
            text = output.decode(errors="replace")
            found = LISTENING.search(text)
            if found and not listening.is_set():
                urls.append(found.group(1))
                listening.set()

    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                [RELAY, "serve", "--host", "127.0.0.1", "--port", "0"],
                env=env,
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                check=False,
            )
        )
        assert process.stderr is not None
        nursery.start_soon(read_stderr, process.stderr)
        try:
            await listening.wait()
            yield Server(urls[0], process)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0, output.decode(errors="replace")
    assert "Traceback" not in output.decode(errors="replace")


async def test_an_operator_token_enrols_a_device_and_the_server_key_survives_a_restart(
    tmp_path: Path,
) -> None:
    env = server_env(tmp_path)
    key = crypto.SigningKey.generate()
    with trio.fail_after(CAP_S * 2):
        async with relay_server(env) as server:
            url = server.url
            first = (await get(url, "/v1/server")).json()
            # The operator's command runs in another process, beside the running server.
            created = await run_relay("admin", "user", "create", "--json", env=env)
            assert created.returncode == 0, created.stderr
            assert created.stderr == b""
            issued = json.loads(created.stdout)
            assert list(issued) == ["user_id", "token", "expires_at"]

            body = {"token": issued["token"], "public_key": key.public_key_b64, "name": "Alice's phone"}
            body["sig"] = key.sign(crypto.enroll_string(body["token"], body["public_key"], body["name"]))
            enrolled = await post_json(url, "/v1/enroll", body)
            reused = await post_json(url, "/v1/enroll", body)
            listed = await run_relay(
                "admin", "device", "list", "--user", issued["user_id"], "--json", env=env
            )

        async with relay_server(env) as server:
            url = server.url
            second = (await get(url, "/v1/server")).json()
            token = await run_relay(
                "admin", "token", "create", "--user", issued["user_id"], "--json", env=env
            )
            body = {
                "token": json.loads(token.stdout)["token"],
                "public_key": key.public_key_b64,
                "name": "Again",
            }
            body["sig"] = key.sign(crypto.enroll_string(body["token"], body["public_key"], body["name"]))
            same_key = await post_json(url, "/v1/enroll", body)

    assert enrolled.status == 201, enrolled.body
    device = enrolled.json()
    assert isinstance(device, dict)
    assert device["user_id"] == issued["user_id"]
    assert reused.status == 401
    assert [d["device_id"] for d in json.loads(listed.stdout)["devices"]] == [device["device_id"]]
    assert isinstance(first, dict)
    assert isinstance(second, dict)
    assert second["server_key"] == first["server_key"]
    assert same_key.status == 409  # the device (and its key) survived the restart too
    assert json.loads(same_key.body)["error"]["code"] == "key_in_use"


async def test_an_enrolled_device_opens_a_session_that_a_sigterm_drains_with_going_away(
    tmp_path: Path,
) -> None:
    env = server_env(tmp_path, RELAY_DRAIN_TIMEOUT_MS="500")
    key = crypto.SigningKey.generate()
    frames: list[messages.ServerMessage] = []
    with trio.fail_after(CAP_S):
        created = await run_relay("admin", "user", "create", "--json", env=env)  # before any serve
        issued = json.loads(created.stdout)
        async with relay_server(env) as server:
            url = server.url
            server_key = (await get(url, "/v1/server")).json()["server_key"]  # type: ignore[index]
            body = {"token": issued["token"], "public_key": key.public_key_b64, "name": "Phone"}
            body["sig"] = key.sign(crypto.enroll_string(body["token"], body["public_key"], body["name"]))
            device = json.loads((await post_json(url, "/v1/enroll", body)).body)

            ws_url = url.replace("http://", "ws://") + "/v1/ws"
            async with open_websocket_url(ws_url, subprotocols=["relay.v1"]) as ws:
                handshake = ClientHandshake(key, device["device_id"], server_key)
                await ws.send_message(codec.encode_client(handshake.hello()))
                challenge = codec.decode_server(await ws.get_message())
                await ws.send_message(codec.encode_client(handshake.receive_challenge(challenge)))
                welcome = handshake.receive_welcome(codec.decode_server(await ws.get_message()))
                server.process.send_signal(signal.SIGTERM)  # the drain of a live session
                closed = await read_until_closed(ws, frames)

    assert ws.subprotocol == "relay.v1"
    assert (welcome.user_id, welcome.device_id) == (issued["user_id"], device["device_id"])
    assert welcome.name == "Phone"
    assert isinstance(frames[-1], messages.Error)
    assert frames[-1].code == "going_away"
    assert closed == (1001, "going_away")


async def read_until_closed(
    ws: WebSocketConnection, frames: list[messages.ServerMessage]
) -> tuple[int | None, str | None]:
    """Append every frame the server sends to ``frames`` until it closes; its close code and reason."""
    try:
        while True:
            frames.append(codec.decode_server(await ws.get_message()))
    except ConnectionClosed as closed:
        reason = closed.reason
    return (reason.code, reason.reason) if reason is not None else (None, None)


async def run_relay(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(CAP_S):
        return await trio.run_process(
            [sys.executable, "-m", "relay", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RELAY_HEARTBEAT_MS", "soon"),
        ("RELAY_HANDSHAKE_TIMEOUT_MS", "-1"),
        ("RELAY_HEARTBEAT_SM", "20000"),
        ("RELAY_DATABASE_URL", "mysql://admin:hunter2@db.example/relay"),
    ],
)
async def test_relay_serve_with_a_bad_variable_exits_2_with_one_line_naming_it(
    tmp_path: Path, variable: str, value: str
) -> None:
    result = await run_relay("serve", "--port", "0", env=server_env(tmp_path, **{variable: value}))
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 2
    assert len(lines) == 1, lines
    assert variable in lines[0]
    assert "hunter2" not in lines[0]
    assert result.stdout == b""


async def test_relay_serve_on_a_busy_port_exits_1_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = await run_relay("serve", "--port", str(port), env=server_env(tmp_path))
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 1
    assert last_message(lines).endswith(f"cannot listen on 127.0.0.1 port {port}: Address already in use")
    assert "Traceback" not in result.stderr.decode()


# --- in-process: the app behind Hypercorn, stopped by an event ----------------------------------------


@asynccontextmanager
async def running_app(tmp_path: Path, **settings: object) -> AsyncIterator[str]:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(
            partial(serve, Settings(data_dir=tmp_path, port=0, **settings), shutdown_trigger=stop.wait)  # type: ignore[arg-type]
        )
        try:
            yield urls[0]
        finally:
            stop.set()


async def test_app_gives_every_answer_a_request_id(tmp_path: Path) -> None:
    with trio.fail_after(CAP_S):
        async with running_app(tmp_path) as url:
            await check_request_ids(url)


async def test_unknown_route_is_404_not_found_with_the_request_id_in_the_body(tmp_path: Path) -> None:
    with trio.fail_after(CAP_S):
        async with running_app(tmp_path) as url:
            answer = await get(url, "/v1/nothing-here", {"X-Request-ID": "req-404"})
    assert answer.status == 404
    assert answer.headers["x-request-id"] == "req-404"
    assert answer.json() == {"error": {"code": "not_found", "message": "Not found", "request_id": "req-404"}}


async def test_wrong_method_is_405_method_not_allowed_naming_the_allowed_ones(tmp_path: Path) -> None:
    def post(url: str) -> tuple[int, dict[str, str], bytes]:
        host, _, port = url.removeprefix("http://").rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            conn.request("POST", "/healthz", body=b"{}")
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    with trio.fail_after(CAP_S):
        async with running_app(tmp_path) as url:
            status, headers, body = await trio.to_thread.run_sync(post, url, abandon_on_cancel=True)
    assert status == 405
    assert "GET" in headers["allow"]
    error = json.loads(body)["error"]
    assert error["code"] == "method_not_allowed"
    assert error["request_id"] == headers["x-request-id"]


# --- in-process: the whole `relay serve` path, stopped by a real signal ------------------------------
# (Coverage is not measured in subprocesses: its subprocess patch would load sqlite3 into every child
# interpreter and break the purity check of relay.protocol. So the paths the subprocess tests above
# exercise are run here once more, in this process.)


def run_main_until_listening_then_signal(argv: list[str], signum: int, data_dir: Path) -> tuple[int, str]:
    """Run ``main(argv)`` on this (main) thread; a helper thread sends ``signum`` once it listens."""
    err = io.StringIO()
    sent = threading.Event()

    def signal_when_listening() -> None:
        deadline = time.monotonic() + CAP_S
        while not LISTENING.search(err.getvalue()):
            if time.monotonic() > deadline:
                return  # main() never listened; it has returned or the test fails on its own
            time.sleep(0.01)
        url = LISTENING.search(err.getvalue()).group(1)  # type: ignore[union-attr]
        host, _, port = url.removeprefix("http://").rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
        os.kill(os.getpid(), signum)  # trio's signal receiver is open: it takes the signal, not pytest
        sent.set()

    helper = threading.Thread(target=signal_when_listening, daemon=True)
    helper.start()
    status = main(argv, environ={"RELAY_DATA_DIR": str(data_dir)}, stderr=err)
    helper.join(CAP_S)
    assert sent.is_set(), err.getvalue()
    return status, err.getvalue()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.usefixtures("restore_logging")
def test_main_serve_stops_cleanly_on_a_signal(signum: int, tmp_path: Path) -> None:
    status, log = run_main_until_listening_then_signal(["serve", "--port", "0"], signum, tmp_path)
    assert status == 0, log
    assert f"{signal.Signals(signum).name}: shutting down" in log


@pytest.mark.usefixtures("restore_logging")
def test_main_serve_on_a_busy_port_returns_1(tmp_path: Path) -> None:
    err = io.StringIO()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        environ = {"RELAY_DATA_DIR": str(tmp_path)}
        status = main(["serve", "--port", str(port)], environ=environ, stderr=err)
    assert status == 1
    assert last_message(err.getvalue().splitlines()).endswith(
        f"cannot listen on 127.0.0.1 port {port}: Address already in use"
    )


@pytest.mark.usefixtures("restore_logging")
def test_main_serve_with_an_unreachable_postgresql_exits_1_rather_than_using_sqlite(tmp_path: Path) -> None:
    err = io.StringIO()
    environ = {
        "RELAY_DATA_DIR": str(tmp_path),
        "RELAY_DATABASE_URL": "postgresql://relay:hunter2@127.0.0.1:9/x",
    }
    status = main(["serve", "--port", "0"], environ=environ, stderr=err)
    assert status == 1
    assert last_message(err.getvalue().splitlines()).startswith("cannot start: the database is unavailable: ")
    assert "hunter2" not in err.getvalue()
    assert not (tmp_path / "relay.sqlite3").exists()


@pytest.mark.usefixtures("restore_logging")
def test_main_serve_with_an_unusable_data_dir_exits_1_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the data directory should be")
    err = io.StringIO()
    status = main(["serve", "--port", "0"], environ={"RELAY_DATA_DIR": str(blocker)}, stderr=err)
    lines = err.getvalue().splitlines()
    assert status == 1
    assert "cannot start: the database is unavailable: " in lines[-1]
    assert "Traceback" not in err.getvalue()
    assert " listening on " not in err.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_with_a_metrics_bind_metrics_are_served_there_and_nowhere_else(tmp_path: Path) -> None:
    metrics_port = free_port()
    with trio.fail_after(CAP_S):
        async with running_app(tmp_path, metrics_bind=f"127.0.0.1:{metrics_port}") as url:
            on_main = await get(url, "/metrics")
            health_on_main = await get(url, "/healthz")
            metrics_url = f"http://127.0.0.1:{metrics_port}"
            on_bind = await get(metrics_url, "/metrics")
            health_on_bind = await get(metrics_url, "/healthz")
    assert (on_main.status, health_on_main.status) == (404, 200)
    assert (on_bind.status, health_on_bind.status) == (200, 404)
    assert on_bind.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b"relay_sessions_open" in on_bind.body


def test_a_metrics_bind_on_the_servers_own_port_is_refused() -> None:
    with pytest.raises(ConfigError, match="RELAY_METRICS_BIND"):
        Settings.from_env({"RELAY_METRICS_BIND": "127.0.0.1:8080"}, port=8080)
