"""The in-process bus: who hears what (PROTOCOL.md §4.1, §4.3, §4.5), with recording subscribers."""

from __future__ import annotations

import attrs
import orjson
import pytest

from relay.bus.base import (
    DeviceNote,
    EventNote,
    PresenceNote,
    ReplaceNote,
    UserDeletedNote,
    note_from_json,
    note_to_json,
)
from relay.bus.local import LocalBus
from relay.errors import AccountDeleted, DeviceRevoked, SessionError, SessionReplaced
from relay.protocol.messages import StoredEvent

USER = "11111111-1111-4111-8111-111111111111"
OTHER_USER = "22222222-2222-4222-8222-222222222222"
PHONE = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
LAPTOP = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"


@attrs.define(eq=False)
class Recorder:
    session_id: str
    user_id: str
    device_id: str
    frames: list[str] = attrs.Factory(list)
    heads: list[tuple[str, int]] = attrs.Factory(list)
    ended: list[SessionError] = attrs.Factory(list)

    def send_live(self, frame: str, *, stream: str | None = None, seq: int | None = None) -> None:
        self.frames.append(frame)
        if stream is not None and seq is not None:
            self.heads.append((stream, seq))

    def end(self, error: SessionError) -> None:
        self.ended.append(error)

    def types(self) -> list[str]:
        return [orjson.loads(frame)["type"] for frame in self.frames]


def event(seq: int = 1) -> StoredEvent:
    return StoredEvent(
        stream="notes",
        seq=seq,
        id=f"e{seq}",
        device_id=PHONE,
        ts=1,
        received_at=2,
        expires_at=3,
        body='{"a":1}',
    )


async def test_an_event_reaches_every_session_of_the_user_but_the_publisher_and_no_other_user() -> None:
    bus = LocalBus()
    phone = Recorder("s-phone", USER, PHONE)
    laptop = Recorder("s-laptop", USER, LAPTOP)
    stranger = Recorder("s-stranger", OTHER_USER, "cccccccc-cccc-4ccc-8ccc-cccccccccccc")
    for sub in (phone, laptop, stranger):
        await bus.subscribe(sub, at=0)
    phone.frames.clear()
    laptop.frames.clear()
    stranger.frames.clear()

    await bus.publish(USER, event(), origin_session_id="s-phone")

    assert phone.frames == []
    assert stranger.frames == []
    assert laptop.types() == ["event"]
    assert laptop.heads == [("notes", 1)]


async def test_an_event_is_encoded_once_and_every_recipient_gets_the_same_frame_object() -> None:
    bus = LocalBus()
    first = Recorder("s1", USER, PHONE)
    second = Recorder("s2", USER, LAPTOP)
    await bus.subscribe(first, at=0)
    await bus.subscribe(second, at=0)
    first.frames.clear()
    second.frames.clear()

    await bus.publish(USER, event(), origin_session_id="someone else")

    assert first.frames[0] is second.frames[0]


async def test_presence_is_announced_for_a_devices_first_and_last_session_only_to_other_devices() -> None:
    bus = LocalBus()
    laptop = Recorder("s-laptop", USER, LAPTOP)
    await bus.subscribe(laptop, at=0)
    phone = Recorder("s-phone", USER, PHONE)

    await bus.subscribe(phone, at=10)
    await bus.unsubscribe(phone, at=20)

    assert [orjson.loads(f) for f in laptop.frames] == [
        {"type": "presence", "device_id": PHONE, "online": True, "at": 10},
        {"type": "presence", "device_id": PHONE, "online": False, "at": 20},
    ]
    assert phone.types() == []  # the laptop was already online when the phone joined: no news for it


async def test_a_new_session_of_a_device_ends_the_older_one_without_a_presence_change() -> None:
    bus = LocalBus()
    laptop = Recorder("s-laptop", USER, LAPTOP)
    old = Recorder("s-old", USER, PHONE)
    await bus.subscribe(laptop, at=0)
    await bus.subscribe(old, at=0)
    laptop.frames.clear()

    new = Recorder("s-new", USER, PHONE)
    await bus.subscribe(new, at=5)
    assert [type(e) for e in old.ended] == [SessionReplaced]
    assert new.ended == []
    await bus.unsubscribe(old, at=6)

    assert laptop.frames == []
    assert await bus.online_devices(USER) == [LAPTOP, PHONE]


async def test_unsubscribing_twice_announces_offline_once() -> None:
    bus = LocalBus()
    laptop = Recorder("s-laptop", USER, LAPTOP)
    phone = Recorder("s-phone", USER, PHONE)
    await bus.subscribe(laptop, at=0)
    await bus.subscribe(phone, at=0)
    laptop.frames.clear()

    await bus.unsubscribe(phone, at=1)
    await bus.unsubscribe(phone, at=2)

    assert len(laptop.frames) == 1
    assert await bus.online_devices(USER) == [LAPTOP]


async def test_device_notices_reach_other_devices_and_a_revoked_device_is_ended_instead() -> None:
    bus = LocalBus()
    phone = Recorder("s-phone", USER, PHONE)
    laptop = Recorder("s-laptop", USER, LAPTOP)
    await bus.subscribe(phone, at=0)
    await bus.subscribe(laptop, at=0)
    phone.frames.clear()
    laptop.frames.clear()

    await bus.announce_device(USER, "renamed", PHONE, "Pocket", 7)
    assert phone.types() == ["device"]  # a renamed device's own session hears of it too
    assert orjson.loads(laptop.frames[0]) == {
        "type": "device",
        "change": "renamed",
        "device_id": PHONE,
        "name": "Pocket",
        "at": 7,
    }

    await bus.announce_device(USER, "revoked", PHONE, "Pocket", 8)
    assert [type(e) for e in phone.ended] == [DeviceRevoked]
    assert phone.types() == ["device"]
    assert laptop.types() == ["device", "device"]


async def test_deleting_a_user_ends_all_of_its_sessions_and_no_other() -> None:
    bus = LocalBus()
    phone = Recorder("s-phone", USER, PHONE)
    stranger = Recorder("s-stranger", OTHER_USER, LAPTOP)
    await bus.subscribe(phone, at=0)
    await bus.subscribe(stranger, at=0)

    await bus.announce_user_deleted(USER)

    assert [type(e) for e in phone.ended] == [AccountDeleted]
    assert stranger.ended == []


async def test_a_failing_subscriber_does_not_keep_an_event_from_the_others() -> None:
    class Broken(Recorder):
        def send_live(self, frame: str, *, stream: str | None = None, seq: int | None = None) -> None:
            raise RuntimeError("boom")

    bus = LocalBus()
    broken = Broken("s-broken", USER, LAPTOP)
    fine = Recorder("s-fine", USER, "dddddddd-dddd-4ddd-8ddd-dddddddddddd")
    await bus.subscribe(broken, at=0)
    await bus.subscribe(fine, at=0)
    fine.frames.clear()

    await bus.publish(USER, event(), origin_session_id="s-phone")

    assert fine.types() == ["event"]


async def test_the_canary_comes_back_at_once_on_the_local_bus() -> None:
    await LocalBus().canary()


@pytest.mark.parametrize(
    "note",
    [
        EventNote(user_id=USER, origin_session_id="s", stream="notes", seq=3, frame='{"type":"event"}'),
        PresenceNote(user_id=USER, device_id=PHONE, online=False, frame="{}"),
        DeviceNote(user_id=USER, device_id=PHONE, change="revoked", frame="{}"),
        ReplaceNote(user_id=USER, device_id=PHONE, session_id="s"),
        UserDeletedNote(user_id=USER),
    ],
)
def test_every_note_survives_its_json_form(note: object) -> None:
    assert note_from_json(note_to_json(note)) == note  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b'{"kind": "nope"}',
        b'{"kind": "user_deleted"}',
        b'{"kind": "presence", "user_id": "u", "device_id": "d", "online": 1, "frame": "{}"}',
        b'{"kind": "event", "user_id": "u", "origin_session_id": "s", "stream": "a", "seq": true, '
        b'"frame": "x"}',
        b'{"kind": "device", "user_id": "u", "device_id": "d", "change": "exploded", "frame": "{}"}',
        b'{"kind": "user_deleted", "user_id": "u", "extra": 1}',
    ],
)
def test_anything_else_is_not_a_note(data: bytes) -> None:
    with pytest.raises(ValueError, match="bus note"):
        note_from_json(data)
