"""The handshake of one session (PROTOCOL.md §4.1), driving :class:`relay.protocol.handshake.ServerHandshake`.

``hello`` → ``challenge`` → ``auth`` → device lookup → register for revocations → join the bus →
read heads and who is online → ``welcome``. The caller runs it under the handshake deadline; every
refusal raises the error that closes the session (``exc.close_code_for(in_handshake=True)``). The
session joins live delivery and presence *before* the welcome's heads and online devices are read, so
nothing committed in between is missed: what arrives meanwhile is held and sent right after the welcome.

The device lookup passes the server's ``now_ms``, so a deleted account's device whose memory expired
answers as unknown (``unauthorized``). Right after it the session's two revocation subjects are hashed,
once, and the session joins the node's :class:`~relay.gateway.revocation_index.RevocationIndex`; if
the revocation watcher applied log entries while the lookup ran, the device is looked up once more
(see "The handshake race" in :mod:`relay.gateway.revocation_index`), so a revocation that commits
during a handshake closes the session as surely as one that commits after it.

Once the device is authenticated, the session's task sets the log context
(:data:`relay.ops.logs.session_id`, :data:`relay.ops.logs.device_id`): the session's tasks, started
after the handshake, copy it, so every line they log names the session and the device.
"""

from __future__ import annotations

import attrs

from relay.errors import ProtocolError
from relay.gateway.fitting import fit_heads, frame_bytes
from relay.gateway.revocation_index import RevocationSubjects, revocation_error
from relay.gateway.session import Session
from relay.ops import logs
from relay.protocol import handshake as hs
from relay.protocol.codec import encode_server, structure_client
from relay.protocol.messages import Auth, ClientMessage, Hello, JsonValue
from relay.store import base as store

__all__ = ["WELCOME_STREAMS", "run_handshake"]

#: At most this many of the most recently written streams are listed in ``welcome`` (§4.1).
WELCOME_STREAMS = 1000


def _expect(obj: dict[str, JsonValue], kind: str) -> ClientMessage:
    """The message ``obj`` holds, if it is a ``kind``; any other message before welcome is out of order.

    A malformed message of the expected type is ``bad_request`` (1002 during the handshake); a message
    of any other type, a known one, an unknown one or none, is ``protocol_error`` (1002).
    """
    if obj.get("type") != kind:
        raise ProtocolError(detail=f"expected {kind}")
    return structure_client(obj)


def _lookup(found: store.DeviceLookup) -> hs.DeviceLookup:
    """The store's answer about a device, as the handshake machine takes it."""
    if isinstance(found, store.DeviceRecord):
        return hs.DeviceRecord(
            user_id=found.user_id, public_key=found.public_key, name=found.name, revoked=found.revoked
        )
    if isinstance(found, store.DeletedDevice):
        return hs.DeletedAccount()
    return hs.UnknownDevice()


async def _watch_revocations(session: Session, identity: hs.Authenticated, mark: int) -> None:
    """Register the authenticated ``session`` for revocations; raises if its device was revoked (or
    its account deleted) by an entry the watcher applied since ``mark``, before the registration."""
    ctx = session.ctx
    subjects = RevocationSubjects.of(ctx.token_secret, user_id=identity.user_id, device_id=identity.device_id)
    ctx.revocations.add(session, subjects)
    if ctx.revocations.moved_since(mark):
        again = await ctx.store.lookup_device(identity.device_id, now_ms=ctx.clock.now_ms())
        error = revocation_error(again, identity.user_id)
        if error is not None:
            raise error


async def run_handshake(session: Session) -> None:
    """Authenticate the peer, join the bus and queue ``welcome``; raises the error that closes."""
    ctx = session.ctx
    machine = hs.ServerHandshake(ctx.server_key)

    hello = _expect(await session.receive_object(), Hello.TYPE)
    challenge = machine.receive_hello(hello, now_ms=ctx.clock.now_ms())
    await session.answer(encode_server(challenge))

    auth = _expect(await session.receive_object(), Auth.TYPE)
    device_id = machine.receive_auth(auth)
    mark = ctx.revocations.mark()
    found = await ctx.store.lookup_device(device_id, now_ms=ctx.clock.now_ms())
    session.identity = identity = machine.complete(_lookup(found))
    # In the session's own task (the handshake runs inline), before its tasks are started.
    logs.session_id.set(identity.session_id)
    logs.device_id.set(identity.device_id)
    await _watch_revocations(session, identity, mark)

    # Join live delivery and presence first, then read: nothing committed in between is missed.
    session.subscribed = True  # set first: leaving is idempotent, and a cancelled join must be undone
    await ctx.bus.subscribe(session, at=ctx.clock.now_ms())
    user_id = identity.user_id
    now = ctx.clock.now_ms()
    streams, truncated = await ctx.store.recent_streams(
        user_id, limit=WELCOME_STREAMS, now_ms=now, clock_skew_ms=ctx.settings.clock_skew_ms
    )
    online = await ctx.bus.online_devices(user_id)

    welcome = machine.welcome(
        server_time=ctx.clock.now_ms(),
        heartbeat_ms=ctx.settings.heartbeat_ms,
        limits=ctx.limits,
        streams={},
        streams_truncated=False,
        online=online,
    )
    # Heads of long names can outgrow a frame before 1,000 streams: then the least recent are left out.
    budget = ctx.settings.max_frame_bytes - frame_bytes(encode_server(welcome))
    fitted, cut = fit_heads(streams.items(), budget)
    welcome = attrs.evolve(welcome, streams=fitted, streams_truncated=truncated or cut)
    await session.go_live(encode_server(welcome), fitted)
