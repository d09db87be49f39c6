"""No timing oracle (item 3): another user's device costs what an unknown one does.

PROTOCOL.md §3 and §4.1: another user's device id is answered exactly like an unknown one, and the
handshake of an unknown device does the work of a known one (the server verifies against a dummy key),
so that nobody can learn which ids exist from the answers or from how long they take. Here each pair of
kinds is measured many times over real sockets, the two kinds interleaved in a shuffled (seeded) order
so that drift and noise fall on both alike, and their medians must differ by at most
``max(20 %, 1 ms)`` (:func:`assert_same_timing`). The data dir is in memory (conftest.py), so that the
fsync of each signed request's nonce does not drown the difference being measured.
"""

from __future__ import annotations

import json
import random
import statistics
import uuid
from collections.abc import Awaitable, Callable

import attrs
import httpx
import trio
from security_support import CASES, STEP_S, Closed, LiveServer, open_wire

from relay.client import DeviceCredentials, SignedAuth
from relay.protocol import codec
from relay.protocol.client_handshake import ClientHandshake

HTTP_SAMPLES = 120
HANDSHAKE_SAMPLES = 100
#: The medians may differ by this fraction of the smaller one, or by MIN_DIFFERENCE_S, whichever is larger.
RELATIVE_BOUND = 0.20
MIN_DIFFERENCE_S = 0.001


async def interleaved(
    kinds: dict[str, Callable[[], Awaitable[float]]], samples: int, *, seed: int
) -> dict[str, list[float]]:
    """``samples`` measurements of each kind, in a shuffled order; a few of each first, not counted."""
    order = [kind for kind in kinds for _ in range(samples)]
    random.Random(seed).shuffle(order)
    for kind in kinds:  # warm-up: connections, caches, the first query of each statement
        for _ in range(3):
            await kinds[kind]()
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for kind in order:
        times[kind].append(await kinds[kind]())
    return times


def assert_same_timing(times: dict[str, list[float]], what: str) -> None:
    (first, a), (second, b) = times.items()
    median_a, median_b = statistics.median(a), statistics.median(b)
    bound = max(RELATIVE_BOUND * min(median_a, median_b), MIN_DIFFERENCE_S)
    print(
        f"{what}: median {first} {median_a * 1000:.3f} ms, {second} {median_b * 1000:.3f} ms "
        f"(difference {abs(median_a - median_b) * 1000:.3f} ms, bound {bound * 1000:.3f} ms,"
        f" {len(a)} + {len(b)} samples)"
    )
    assert abs(median_a - median_b) <= bound, what


async def test_patch_and_delete_of_another_users_device_take_as_long_as_of_an_unknown_one(
    server: LiveServer,
) -> None:
    (a,) = await server.devices(1)
    (b,) = await server.devices(1)
    async with httpx.AsyncClient(base_url=server.url, auth=SignedAuth(b), timeout=STEP_S) as bob:
        for method in ("PATCH", "DELETE"):
            answers: set[tuple[int, str]] = set()

            def timed(
                device_id: str, method: str = method, answers: set[tuple[int, str]] = answers
            ) -> Callable[[], Awaitable[float]]:
                async def once() -> float:
                    body = {"name": "pwned"} if method == "PATCH" else None
                    with trio.fail_after(STEP_S):
                        started = trio.current_time()
                        response = await bob.request(method, f"/v1/devices/{device_id}", json=body)
                        elapsed = trio.current_time() - started
                    answers.add((response.status_code, response.json()["error"]["message"]))
                    return elapsed

                return once

            times = await interleaved(
                {"another user's": timed(a.device_id), "unknown": timed(str(uuid.uuid4()))},
                HTTP_SAMPLES,
                seed=1,
            )
            assert answers == {(404, "No such device")}
            assert_same_timing(times, f"{method} /v1/devices/{{id}}")
            CASES["timing samples (HTTP 404)"] += 2 * HTTP_SAMPLES


async def failed_handshake(server: LiveServer, creds: DeviceCredentials) -> float:
    """From ``auth`` sent to the ``error`` received, for a handshake whose signature cannot verify."""
    with trio.fail_after(STEP_S):
        wire = await open_wire(server)
        try:
            machine = ClientHandshake(creds.key, creds.device_id, creds.server_key)
            await wire.send_text(codec.encode_client(machine.hello()))
            challenge = await wire.next_frame()
            assert not isinstance(challenge, Closed), challenge
            assert challenge["type"] == "challenge", challenge
            auth = codec.encode_client(machine.receive_challenge(codec.decode_server(json.dumps(challenge))))
            started = trio.current_time()
            await wire.send_text(auth)
            error = await wire.next_frame()
            elapsed = trio.current_time() - started
            assert isinstance(error, dict), error
            assert error["code"] == "unauthorized", error
            return elapsed
        finally:
            await wire.aclose()


async def test_a_handshake_with_a_wrong_key_fails_as_fast_as_one_of_an_unknown_device(
    server: LiveServer,
) -> None:
    (a,) = await server.devices(1)
    (b,) = await server.devices(1)
    wrong_key = attrs.evolve(b, device_id=a.device_id)  # A's device, B's key
    unknown = attrs.evolve(b, device_id=str(uuid.uuid4()))
    times = await interleaved(
        {
            "known device, wrong key": lambda: failed_handshake(server, wrong_key),
            "unknown device": lambda: failed_handshake(server, unknown),
        },
        HANDSHAKE_SAMPLES,
        seed=2,
    )
    assert_same_timing(times, "auth refused (unauthorized)")
    CASES["timing samples (handshake)"] += 2 * HANDSHAKE_SAMPLES
