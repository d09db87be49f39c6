"""The store contract for events (relay/store/base.py; PROTOCOL.md §4.2, §4.4, §7), on every store.

Time is passed in: tests move ``received_at`` / ``now_ms`` instead of sleeping.
"""

from __future__ import annotations

import attrs
import pytest
import trio
from store_helpers import CAP_S, NOW, SKEW_MS, TTL_MS, append_request, new_device

from relay.errors import AccountDeleted, DeviceRevoked, IdConflict, QuotaExceeded, SeqConflict
from relay.protocol.validation import is_expired
from relay.store.base import Store

# --- append and its ack ------------------------------------------------------------------------------


async def test_append_returns_the_committed_event_with_the_times_passed_in(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        request = append_request(
            device, "e1", body=b'{"a":[1,2]}', ts=NOW - 5, expires_at=NOW + 1000, received_at=NOW + 7
        )
        appended = await store.append(request)

        assert appended.duplicate is False
        event = appended.event
        assert (event.stream, event.seq, event.id, event.device_id) == ("notes", 1, "e1", device.device_id)
        assert (event.ts, event.received_at, event.expires_at) == (NOW - 5, NOW + 7, NOW + 1000)
        assert event.body == '{"a":[1,2]}'
        assert await store.stream_head(device.user_id, "notes") == 1


async def test_seqs_count_per_stream_and_per_user(store: Store) -> None:
    with trio.fail_after(CAP_S):
        alice = await new_device(store)
        bob = await new_device(store)
        seqs = [
            (await store.append(append_request(alice, "a1", stream="x"))).event.seq,
            (await store.append(append_request(alice, "a2", stream="x"))).event.seq,
            (await store.append(append_request(alice, "a3", stream="y"))).event.seq,
            (await store.append(append_request(bob, "b1", stream="x"))).event.seq,
        ]
        assert seqs == [1, 2, 1, 1]
        assert await store.stream_head(alice.user_id, "x") == 2
        assert await store.stream_head(bob.user_id, "x") == 1
        assert await store.stream_head(bob.user_id, "y") == 0


# --- idempotency ---------------------------------------------------------------------------------


async def test_a_retry_gets_the_original_ack_whatever_the_head_is_now(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        other = await new_device(store, device.user_id, name="Laptop")
        first = await store.append(append_request(device, "e1", received_at=NOW, expires_at=NOW + TTL_MS))
        await store.append(append_request(other, "o1"))
        await store.append(append_request(other, "o2"))

        retry = append_request(
            device, "e1", ts=NOW + 50, expires_at=NOW + 99, received_at=NOW + 100, expect_seq=0
        )
        again = await store.append(retry)

        assert again.duplicate is True
        assert again.event == first.event
        assert await store.stream_head(device.user_id, "notes") == 3


@pytest.mark.parametrize("change", ["body", "stream"])
async def test_the_same_id_for_another_event_is_an_id_conflict(store: Store, change: str) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        await store.append(append_request(device, "e1", stream="s", body=b'{"n":1}'))
        if change == "body":
            conflicting = append_request(device, "e1", stream="s", body=b'{"n":2}')
        else:
            conflicting = append_request(device, "e1", stream="t", body=b'{"n":1}')
        with pytest.raises(IdConflict):
            await store.append(conflicting)
        assert await store.stream_head(device.user_id, "s") == 1
        assert await store.stream_head(device.user_id, "t") == 0


async def test_the_same_id_from_another_device_is_another_event(store: Store) -> None:
    with trio.fail_after(CAP_S):
        phone = await new_device(store)
        laptop = await new_device(store, phone.user_id, name="Laptop")
        first = await store.append(append_request(phone, "same"))
        second = await store.append(append_request(laptop, "same"))
        assert (first.duplicate, second.duplicate) == (False, False)
        assert (first.event.seq, second.event.seq) == (1, 2)


# --- expect_seq ----------------------------------------------------------------------------------


async def test_expect_seq_zero_means_a_stream_never_written(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        assert (await store.append(append_request(device, "e1", expect_seq=0))).event.seq == 1
        with pytest.raises(SeqConflict) as caught:
            await store.append(append_request(device, "e2", expect_seq=0))
        assert caught.value.fields == {"head": 1}


async def test_expect_seq_must_match_the_head(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        await store.append(append_request(device, "e1"))
        await store.append(append_request(device, "e2"))
        with pytest.raises(SeqConflict) as caught:
            await store.append(append_request(device, "e3", expect_seq=1))
        assert caught.value.fields == {"head": 2}
        assert (await store.append(append_request(device, "e3", expect_seq=2))).event.seq == 3


async def test_concurrent_appends_with_the_same_expect_seq_let_exactly_one_through(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        won: list[int] = []
        heads: list[int] = []

        async def publish(i: int) -> None:
            try:
                won.append((await store.append(append_request(device, f"e{i}", expect_seq=0))).event.seq)
            except SeqConflict as exc:
                heads.append(int(str(exc.fields["head"])))

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(publish, i)
        assert won == [1]
        assert heads == [1] * 49


# --- gapless seqs under concurrency --------------------------------------------------------------


async def test_concurrent_appends_from_four_devices_get_seqs_without_gaps(store: Store) -> None:
    with trio.fail_after(CAP_S):
        first = await new_device(store, name="d0")
        devices = [first] + [await new_device(store, first.user_id, name=f"d{i}") for i in range(1, 4)]
        seqs: list[int] = []

        async def publish(device_index: int, n: int) -> None:
            request = append_request(devices[device_index], f"e{n}", stream="shared")
            seqs.append((await store.append(request)).event.seq)

        async with trio.open_nursery() as nursery:
            for n in range(100):
                for d in range(4):
                    nursery.start_soon(publish, d, n)

        assert sorted(seqs) == list(range(1, 401))
        assert await store.stream_head(first.user_id, "shared") == 400
        events = await store.read_events(
            first.user_id, "shared", after=0, head=400, limit=1000, now_ms=NOW, clock_skew_ms=SKEW_MS
        )
        assert [e.seq for e in events] == list(range(1, 401))
        assert {(e.device_id, e.id) for e in events} == {
            (d.device_id, f"e{n}") for d in devices for n in range(100)
        }


# --- revoked and deleted devices -----------------------------------------------------------------


async def test_a_revoked_device_cannot_append(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        await store.append(append_request(device, "e1"))
        await store.revoke_device(device.device_id, now_ms=NOW + 1)
        with pytest.raises(DeviceRevoked):
            await store.append(append_request(device, "e2"))
        assert await store.stream_head(device.user_id, "notes") == 1


async def test_an_append_by_an_unknown_device_is_refused(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        ghost = attrs.evolve(append_request(device, "e1"), device_id="00000000-0000-4000-8000-000000000000")
        with pytest.raises(AccountDeleted):
            await store.append(ghost)


# --- replay --------------------------------------------------------------------------------------


async def test_replay_pages_hold_seqs_after_after_up_to_head_at_most_limit(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        for i in range(10):
            await store.append(append_request(device, f"e{i}"))

        async def page(after: int, head: int, limit: int) -> list[int]:
            events = await store.read_events(
                device.user_id,
                "notes",
                after=after,
                head=head,
                limit=limit,
                now_ms=NOW,
                clock_skew_ms=SKEW_MS,
            )
            return [e.seq for e in events]

        assert await page(0, 10, 4) == [1, 2, 3, 4]
        assert await page(4, 10, 4) == [5, 6, 7, 8]
        assert await page(8, 10, 4) == [9, 10]
        assert await page(3, 6, 100) == [4, 5, 6]
        assert await page(10, 10, 100) == []


async def test_replay_skips_expired_events(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        await store.append(append_request(device, "long1", expires_at=NOW + 10_000_000))
        await store.append(append_request(device, "short", expires_at=NOW + 1000))
        await store.append(append_request(device, "long2", expires_at=NOW + 10_000_000))

        # The one definition of expiry: now > expires_at + skew.
        edge = NOW + 1000 + SKEW_MS
        assert not is_expired(NOW + 1000, now_ms=edge, clock_skew_ms=SKEW_MS)
        for now, expected in ((edge, [1, 2, 3]), (edge + 1, [1, 3])):
            events = await store.read_events(
                device.user_id, "notes", after=0, head=3, limit=100, now_ms=now, clock_skew_ms=SKEW_MS
            )
            assert [e.seq for e in events] == expected


async def test_replay_of_an_unknown_stream_is_empty_with_head_zero(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        assert await store.stream_head(device.user_id, "nothing") == 0
        events = await store.read_events(
            device.user_id, "nothing", after=0, head=0, limit=100, now_ms=NOW, clock_skew_ms=SKEW_MS
        )
        assert events == []


async def test_another_users_stream_is_invisible(store: Store) -> None:
    with trio.fail_after(CAP_S):
        alice = await new_device(store)
        bob = await new_device(store)
        await store.append(append_request(alice, "e1", stream="diary"))
        assert await store.stream_head(bob.user_id, "diary") == 0
        assert (
            await store.read_events(
                bob.user_id, "diary", after=0, head=1, limit=10, now_ms=NOW, clock_skew_ms=SKEW_MS
            )
            == []
        )
        assert (
            await store.list_streams(bob.user_id, after=None, limit=10, now_ms=NOW, clock_skew_ms=SKEW_MS)
            == []
        )


# --- listing streams -----------------------------------------------------------------------------


async def test_list_streams_pages_in_byte_order_of_name(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        names = ["b", "a/b", "A", "a", "~x", "Z", "a.b", "0", "a-b", "a:b", "a_b"]
        for i, name in enumerate(names):
            await store.append(append_request(device, f"e{i}", stream=name))
        await store.append(append_request(device, "again", stream="a"))
        expected = sorted(names, key=lambda n: n.encode())

        listed: list[tuple[str, int]] = []
        after: str | None = None
        while True:
            page = await store.list_streams(
                device.user_id, after=after, limit=3, now_ms=NOW, clock_skew_ms=SKEW_MS
            )
            listed.extend(page)
            if len(page) < 3:
                break
            after = page[-1][0]
        assert [name for name, _ in listed] == expected
        assert dict(listed)["a"] == 2


async def test_list_streams_leaves_out_streams_whose_events_all_expired(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        await store.append(append_request(device, "e1", stream="old", expires_at=NOW + 1000))
        await store.append(append_request(device, "e2", stream="new", expires_at=NOW + 10_000_000))
        await store.append(append_request(device, "e3", stream="mixed", expires_at=NOW + 1000))
        await store.append(append_request(device, "e4", stream="mixed", expires_at=NOW + 10_000_000))
        later = NOW + 1000 + SKEW_MS + 1
        listed = await store.list_streams(
            device.user_id, after=None, limit=10, now_ms=later, clock_skew_ms=SKEW_MS
        )
        assert listed == [("mixed", 2), ("new", 1)]
        assert await store.stream_head(device.user_id, "old") == 1


async def test_recent_streams_lists_the_most_recently_written_and_says_when_there_are_more(
    store: Store,
) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        for i, name in enumerate(["s1", "s2", "s3", "s4", "s5"]):
            await store.append(append_request(device, f"e{i}", stream=name, received_at=NOW + i))
        await store.append(append_request(device, "again", stream="s1", received_at=NOW + 10))

        recent, truncated = await store.recent_streams(
            device.user_id, limit=3, now_ms=NOW, clock_skew_ms=SKEW_MS
        )
        assert recent == {"s1": 2, "s5": 1, "s4": 1}
        assert list(recent) == ["s1", "s5", "s4"]
        assert truncated is True

        everything, truncated = await store.recent_streams(
            device.user_id, limit=5, now_ms=NOW, clock_skew_ms=SKEW_MS
        )
        assert len(everything) == 5
        assert truncated is False


async def test_recent_streams_leaves_out_expired_streams(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        await store.append(
            append_request(device, "e1", stream="gone", expires_at=NOW + 1, received_at=NOW + 5)
        )
        await store.append(append_request(device, "e2", stream="kept", received_at=NOW))
        later = NOW + 1 + SKEW_MS + 1
        assert await store.recent_streams(device.user_id, limit=1, now_ms=later, clock_skew_ms=SKEW_MS) == (
            {"kept": 1},
            False,
        )


# --- quotas --------------------------------------------------------------------------------------


async def test_the_stream_quota_counts_streams_holding_unexpired_events(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        await store.append(append_request(device, "e1", stream="a", expires_at=NOW + 1000, max_streams=2))
        await store.append(append_request(device, "e2", stream="b", max_streams=2))
        with pytest.raises(QuotaExceeded):
            await store.append(append_request(device, "e3", stream="c", max_streams=2))
        # Writing to a stream already counted is fine.
        await store.append(append_request(device, "e4", stream="b", max_streams=2))
        assert await store.stream_head(device.user_id, "c") == 0

        # Once stream a's only event has expired, it no longer counts.
        later = NOW + 1000 + SKEW_MS + 1
        request = append_request(device, "e3", stream="c", received_at=later, max_streams=2)
        assert (await store.append(request)).event.seq == 1
        # ...and writing to it again makes it count again.
        with pytest.raises(QuotaExceeded):
            await store.append(append_request(device, "e5", stream="a", received_at=later, max_streams=2))


async def test_the_byte_quota_counts_unexpired_canonical_bodies(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        ten = b'"12345678"'
        assert len(ten) == 10
        await store.append(append_request(device, "e1", body=ten, expires_at=NOW + 1000, max_stored_bytes=25))
        await store.append(append_request(device, "e2", body=ten, max_stored_bytes=25))
        with pytest.raises(QuotaExceeded):
            await store.append(append_request(device, "e3", body=ten, max_stored_bytes=25))
        # A smaller body still fits exactly.
        await store.append(append_request(device, "e4", body=b'"123"', max_stored_bytes=25))
        # A retry of a stored event adds nothing: it still gets its ack at the quota.
        retry = await store.append(append_request(device, "e2", body=ten, max_stored_bytes=25))
        assert retry.duplicate is True

        later = NOW + 1000 + SKEW_MS + 1
        request = append_request(device, "e3", body=ten, received_at=later, max_stored_bytes=25)
        assert (await store.append(request)).event.seq == 4


async def test_quota_exceeded_comes_before_id_conflict(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        await store.append(append_request(device, "e1", stream="a", max_streams=1))
        with pytest.raises(QuotaExceeded):
            await store.append(append_request(device, "e1", stream="b", max_streams=1))


# --- purging -------------------------------------------------------------------------------------


async def test_purge_deletes_expired_events_in_batches_and_keeps_heads(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        for i in range(5):
            await store.append(append_request(device, f"old{i}", expires_at=NOW + 1000))
        await store.append(append_request(device, "kept", stream="other"))
        later = NOW + 1000 + SKEW_MS + 1

        assert await store.purge_expired(now_ms=later - 1, clock_skew_ms=SKEW_MS, batch=10) == 0
        assert await store.purge_expired(now_ms=later, clock_skew_ms=SKEW_MS, batch=2) == 2
        assert await store.purge_expired(now_ms=later, clock_skew_ms=SKEW_MS, batch=2) == 2
        assert await store.purge_expired(now_ms=later, clock_skew_ms=SKEW_MS, batch=2) == 1
        assert await store.purge_expired(now_ms=later, clock_skew_ms=SKEW_MS, batch=2) == 0

        assert await store.stream_head(device.user_id, "notes") == 5
        appended = await store.append(
            append_request(device, "fresh", received_at=later, expires_at=later + TTL_MS)
        )
        assert appended.event.seq == 6
        # A purged event's id is forgotten with it: it may name a new event.
        reused = await store.append(
            append_request(device, "old0", body=b"2", received_at=later, expires_at=later + TTL_MS)
        )
        assert (reused.duplicate, reused.event.seq) == (False, 7)
        events = await store.read_events(
            device.user_id, "notes", after=0, head=7, limit=100, now_ms=later, clock_skew_ms=SKEW_MS
        )
        assert [e.seq for e in events] == [6, 7]
        assert await store.stream_head(device.user_id, "other") == 1


async def test_purging_frees_the_byte_quota(store: Store) -> None:
    with trio.fail_after(CAP_S):
        device = await new_device(store)
        await store.append(
            append_request(device, "e1", body=b'"12345678"', expires_at=NOW + 1, max_stored_bytes=10)
        )
        later = NOW + 1 + SKEW_MS + 1
        assert await store.purge_expired(now_ms=later, clock_skew_ms=SKEW_MS, batch=100) == 1
        request = append_request(device, "e2", body=b'"12345678"', received_at=later, max_stored_bytes=10)
        assert (await store.append(request)).event.seq == 2
