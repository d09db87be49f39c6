"""MemoryStore is fit for virtual-time tests: it never touches threads or I/O, so time does not jump."""

from __future__ import annotations

import trio
import trio.testing
from store_helpers import CAP_S, NOW, SKEW_MS, append_request, new_device

from relay.store.memory import MemoryStore


async def test_the_memory_store_does_not_move_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(CAP_S):
        store = MemoryStore()
        start = trio.current_time()
        device = await new_device(store)

        async def publish(n: int) -> None:
            await store.append(append_request(device, f"e{n}"))

        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(publish, n)
        events = await store.read_events(
            device.user_id, "notes", after=0, head=50, limit=100, now_ms=NOW, clock_skew_ms=SKEW_MS
        )
        assert [e.seq for e in events] == list(range(1, 51))
        await store.close()
        assert trio.current_time() == start


async def test_a_cancelled_call_to_the_memory_store_did_nothing() -> None:
    with trio.fail_after(CAP_S):
        store = MemoryStore()
        device = await new_device(store)
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.append(append_request(device, "e1"))
        assert scope.cancelled_caught
        assert await store.stream_head(device.user_id, "notes") == 0


async def test_ids_can_be_made_predictable() -> None:
    with trio.fail_after(CAP_S):
        ids = iter(f"00000000-0000-4000-8000-00000000000{i}" for i in range(10))
        store = MemoryStore(id_factory=lambda: next(ids))
        device = await new_device(store)
        assert (device.user_id, device.device_id) == (
            "00000000-0000-4000-8000-000000000000",
            "00000000-0000-4000-8000-000000000001",
        )


async def test_accounts_and_the_revocation_log_do_not_move_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(CAP_S):
        store = MemoryStore()
        start = trio.current_time()
        device = await new_device(store)
        await store.rename_device(device.device_id, name="Pocket", name_key="pocket", now_ms=NOW)
        assert await store.remember_nonce(device.device_id, "n", expires_at=NOW, now_ms=NOW)
        await store.get_user(device.user_id, now_ms=NOW, clock_skew_ms=SKEW_MS)
        await store.revoke_device(device.device_id, now_ms=NOW)
        await store.delete_user(device.user_id, now_ms=NOW, remember_ms=1)
        assert len(await store.revocations_since(0)) == await store.latest_revocation() == 2
        assert await store.purge_housekeeping(now_ms=NOW + 2, batch=10) == 1  # the device hash
        assert trio.current_time() == start
