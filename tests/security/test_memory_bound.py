"""Memory stays bounded under 1,000 hostile sessions (item 2, "no crash ... memory stays bounded").

The server runs in this process, so the resident set size of the process (``VmRSS`` of
/proc/self/status) is the server's plus the test's. After a warm-up (so that allocator pools, caches and
lazily imported modules are in place), 1,000 hostile sessions run, 25 at a time: garbage before the
handshake, framing violations, frames of 200 KB and 1 MB, nesting past the limit, duplicate members,
handshakes left half done, and authenticated sessions that publish hostile bodies and leave. Then the
RSS may have grown by at most :data:`RSS_BOUND` (generous: a leak of even 50 KB per session would show
as 50 MB), every session has ended on the server, and a bystander was undisturbed throughout.
"""

from __future__ import annotations

import gc
import itertools
import json
from pathlib import Path

import trio
from hostile import nested
from security_support import (
    CASES,
    OP_BINARY,
    OP_TEXT,
    STEP_S,
    Closed,
    LiveServer,
    bystander,
    open_wire,
    rss_bytes,
    secure_server,
    ws_frame,
)

from relay.client import DeviceCredentials

SESSIONS = 1000
WARM_UP = 40
AT_ONCE = 25
RSS_BOUND = 50 * 1024 * 1024

HELLO = {"type": "hello", "v": 1, "device_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "nonce": "E" * 43}


def hostile_sessions(now_ms: int) -> list[tuple[bool, bytes]]:
    """The kinds of hostile session: (authenticate first?, bytes to send)."""

    def text(obj: object) -> bytes:
        return ws_frame(OP_TEXT, json.dumps(obj).encode())

    publish = {"type": "publish", "id": "e", "stream": "s", "ts": now_ms}
    return [
        (False, b"\x00garbage" * 100),
        (False, ws_frame(OP_TEXT, b'{"type": "hello"}', mask=None)),
        (False, ws_frame(OP_TEXT, b'{"type": "hello", "x": "\xff"}')),
        (False, text({**HELLO, "x": "a" * 200_000})),
        (False, text({**HELLO, "x": "a" * (1 << 20)})),
        (False, text({**HELLO, "x": nested(100)})),
        (False, ws_frame(OP_TEXT, b'{"type": "hello", "type": "hello"}')),
        (False, text(HELLO)),  # a handshake left half done: the connection is dropped after the challenge
        (False, ws_frame(OP_BINARY, b"\x00" * 10_000)),
        (True, text({**publish, "id": "x" * 65, "body": {"k": "v" * 60_000}})),
        (True, text({**publish, "body": "b" * 70_000})),
        (True, text({**publish, "body": nested(70)})),
        (True, text({"type": "replay", "stream": "s", "limit": 10**30})),
        (True, ws_frame(OP_TEXT, b'{"type": "ping", "ref": 1e400}')),
    ]


async def one_session(server: LiveServer, creds: DeviceCredentials, authenticate: bool, data: bytes) -> None:
    with trio.fail_after(STEP_S):
        wire = await open_wire(server)
        try:
            if authenticate:
                welcome = await wire.try_handshake(creds)
                if isinstance(welcome, Closed) or welcome["type"] != "welcome":
                    # another hostile session of the device replaced this one: hostile enough
                    assert not isinstance(welcome, Closed), welcome
                    assert welcome["code"] == "session_replaced", welcome
                    return
            await wire.send_raw(data)
            with trio.move_on_after(2.0):  # the server's first answer (or its close), then we leave
                while not isinstance(frame := await wire.next_frame(), Closed) and frame["type"] == "heads":
                    pass
        finally:
            await wire.aclose()


async def burst(server: LiveServer, creds: list[DeviceCredentials], count: int) -> None:
    kinds = itertools.cycle(hostile_sessions(server.now_ms()))
    devices = itertools.cycle(creds)
    limiter = trio.CapacityLimiter(AT_ONCE)

    async def limited(authenticate: bool, data: bytes, device: DeviceCredentials) -> None:
        async with limiter:
            await one_session(server, device, authenticate, data)
            CASES["hostile sessions for the memory bound"] += 1

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            authenticate, data = next(kinds)
            nursery.start_soon(limited, authenticate, data, next(devices))


async def test_memory_stays_bounded_after_a_thousand_hostile_sessions(data_dir: Path) -> None:
    async with secure_server(data_dir) as server, bystander(server) as watcher:
        # Several devices, so that sessions do not all replace one another (those that do are hostile too).
        t0 = trio.current_time()
        devices = [await server.enroll(f"hostile {n}") for n in range(AT_ONCE)]
        print("PHASE enrolled", trio.current_time() - t0)
        await burst(server, devices, WARM_UP)
        print("PHASE warm", trio.current_time() - t0)
        gc.collect()
        before = rss_bytes()
        with trio.fail_after(120):
            await burst(server, devices, SESSIONS)
        gateway = server.app.services.gateway
        assert gateway is not None
        with trio.fail_after(STEP_S):  # every hostile session has ended on the server too
            while gateway.session_count > 2:  # noqa: ASYNC110 (no event to wait on)
                await trio.sleep(0.05)
        print("PHASE burst", trio.current_time() - t0)
        gc.collect()
        after = rss_bytes()
        assert not watcher.failures
    growth = after - before
    print(f"RSS {before / 2**20:.1f} MB before, {after / 2**20:.1f} MB after {SESSIONS} hostile sessions")
    assert growth < RSS_BOUND, f"RSS grew by {growth / 2**20:.1f} MB"
