"""The publish path of one session (PROTOCOL.md §4.2, ARCHITECTURE.md "Publish path").

The reader hands every ``publish`` frame here, parsed but not yet checked, so that every answer to a
publish (``ack`` or ``error``) leaves in the order the publishes were received. For each, in order:
structure and validate (steps 1-2, with the server's clock) → admission (step 3: the seam for rate
limits) → ``store.append`` (quota, idempotency, ``expect_seq``, seq, commit: steps 3-6) → hand the
committed event to the bus → ``ack``. A duplicate is acked as the original and not fanned out again.

The commit and the hand-over to the bus are shielded from cancellation (and bounded): once the store
has the event, a session that dies meanwhile does not keep the user's other sessions from hearing of
it. That is also why the ack is queued after the hand-over; it still leaves only after the commit.

Revocation: a publish of a session the node knows to be revoked (:attr:`Session.revocation`, set by
the bus or the revocation watcher) is refused with that error, which closes the session, before
anything reaches the store. The store's check in the committing transaction is the last line: an
append that commits after the revocation does not exist (it fails with ``device_revoked``), so an
``ack`` always stands for an event committed before the revocation.

At most ``max_inflight`` publishes are between the reader and their answer: the reader takes a slot of
:class:`InflightSlots` before reading each frame and stops reading while none is free; the slot of a
publish comes back here once its answer is queued.

Instruments: ``relay_events_published_total`` per event committed, ``relay_events_duplicate_total``
per append answered with the original event, ``relay_events_refused_total{code}`` per publish refused
with an error (a revocation's included: nothing was stored), ``relay_rate_limited_total{limit="publish"}``
for ``rate_limited``; ``relay_publish_commit_seconds`` from the frame being read
(:attr:`PublishItem.read_at`) to the append returning (a new event or a duplicate), and
``relay_fanout_seconds`` for the hand-over to the bus, whatever its outcome. Spans
(:mod:`relay.gateway.traces`): ``ws.publish``, with ``validate`` (steps 1-3 before the store),
``commit`` (the append) and ``fanout`` (the hand-over) as children.
"""

from __future__ import annotations

import attrs
import trio
from opentelemetry.trace import Span

from relay.errors import (
    AccountDeleted,
    BusLost,
    BusUnavailable,
    DeviceRevoked,
    RateLimited,
    RelayError,
    RequestError,
    SessionError,
    StoreUnavailable,
    Unavailable,
)
from relay.gateway.session import Session
from relay.gateway.traces import span
from relay.protocol.codec import AnswerContext, answer_context, encode_server, structure_client
from relay.protocol.messages import Ack, JsonValue, Publish
from relay.protocol.validation import AcceptedPublish, validate_publish
from relay.store.base import Appended, AppendRequest

__all__ = ["COMMIT_TIMEOUT_S", "DEFAULT_RETRY_AFTER_MS", "PublishItem", "run_publisher"]

#: How long one commit, or one hand-over to the bus, may take before the publish is given up on.
COMMIT_TIMEOUT_S = 10.0
#: ``retry_after_ms`` of an ``unavailable`` answer when the store did not say.
DEFAULT_RETRY_AFTER_MS = 1000


@attrs.frozen
class PublishItem:
    """A ``publish`` frame as parsed by the reader; it holds one in-flight slot until answered."""

    obj: dict[str, JsonValue]
    #: trio time the frame was read (the start of its ``relay_publish_commit_seconds``).
    read_at: float


async def run_publisher(
    session: Session, items: trio.MemoryReceiveChannel[PublishItem], slots: trio.Semaphore
) -> None:
    """Commit and answer publishes in order until the reader closes the channel and it is drained."""
    async for item in items:
        try:
            with span(session.ctx.tracing, "ws.publish") as current:
                await _publish_one(session, item, current)
        finally:
            slots.release()


async def _publish_one(session: Session, item: PublishItem, current: Span) -> None:
    obj = item.obj
    ctx = answer_context(obj)
    if session.revocation is not None:  # known revoked: nothing of it goes to the store again
        _count_refusal(session, session.revocation, current)
        session.close(session.revocation, ctx=ctx)
        return
    now = session.ctx.clock.now_ms()  # the publish's "server now": its checks, and its received_at
    try:
        with span(session.ctx.tracing, "validate"):
            accepted = _accept(session, obj, now)
        current.set_attribute("relay.stream_length", len(accepted.stream))
        appended = await _commit(session, accepted, now, item.read_at)
    except SessionError as exc:  # device_revoked, account_deleted, bus_lost: the session ends
        if isinstance(exc, DeviceRevoked | AccountDeleted):  # refused in the commit: nothing stored
            _count_refusal(session, exc, current)
        session.close(exc, ctx=ctx)
        return
    except Unavailable as exc:
        retry = exc.fields.get("retry_after_ms")
        await _refuse(session, Unavailable(retry_after_ms=retry or DEFAULT_RETRY_AFTER_MS), ctx, current)
        return
    except RequestError as exc:
        await _refuse(session, exc, ctx, current)
        return
    current.set_attribute("relay.duplicate", appended.duplicate)
    event = appended.event
    ack = Ack(
        id=event.id,
        stream=event.stream,
        seq=event.seq,
        received_at=event.received_at,
        expires_at=event.expires_at,
        duplicate=appended.duplicate,
        ref=accepted.ref,
    )
    await session.answer(encode_server(ack))


async def _refuse(session: Session, exc: RequestError, ctx: AnswerContext, current: Span) -> None:
    _count_refusal(session, exc, current)
    await session.answer_error(exc, ctx)


def _count_refusal(session: Session, exc: RelayError, current: Span) -> None:
    instruments = session.ctx.instruments
    instruments.refused(exc.code)
    if isinstance(exc, RateLimited):
        instruments.publish_rate_limited()
    current.set_attribute("relay.refusal", exc.code)


def _accept(session: Session, obj: dict[str, JsonValue], now: int) -> AcceptedPublish:
    """Steps 1-3 of §4.2 that need no store: fields, sizes, time, admission."""
    msg = structure_client(obj)
    assert isinstance(msg, Publish)  # the reader sends only frames of type publish
    ctx = session.ctx
    accepted = validate_publish(msg, limits=ctx.limits, now_ms=now)
    ctx.admission.check_publish(
        user_id=session.user_id, device_id=session.device_id, body_size=accepted.body_size, now_ms=now
    )
    return accepted


async def _commit(session: Session, accepted: AcceptedPublish, now: int, read_at: float) -> Appended:
    """Append (steps 3-6) and, unless it is a duplicate, hand the event to the bus; both shielded."""
    ctx = session.ctx
    instruments = ctx.instruments
    settings = ctx.settings
    request = AppendRequest(
        user_id=session.user_id,
        device_id=session.device_id,
        id=accepted.id,
        stream=accepted.stream,
        ts=accepted.ts,
        expires_at=accepted.expires_at,
        expect_seq=accepted.expect_seq,
        body=accepted.body,
        received_at=now,
        max_streams=settings.max_streams,
        max_stored_bytes=settings.max_stored_bytes,
        clock_skew_ms=settings.clock_skew_ms,
    )
    appended: Appended | None = None
    handed = False
    # One scope shields the commit and the fan-out from the session's cancellation and bounds each in
    # turn (its deadline is moved on once the commit is done): one scope per publish, not two.
    with trio.CancelScope(shield=True, deadline=trio.current_time() + COMMIT_TIMEOUT_S) as bound:
        with span(ctx.tracing, "commit"):
            appended = await ctx.store.append(request)
        instruments.commit_seconds(trio.current_time() - read_at)
        if appended.duplicate:
            instruments.duplicate()
            return appended
        instruments.published()
        session.note_head(appended.event.stream, appended.event.seq)
        started = trio.current_time()
        bound.deadline = started + COMMIT_TIMEOUT_S
        with span(ctx.tracing, "fanout"):
            try:
                await ctx.bus.publish(session.user_id, appended.event, origin_session_id=session.session_id)
                handed = True
            except BusUnavailable as exc:  # the event is stored, but live delivery broke
                raise BusLost(detail=f"the bus refused a committed event: {exc}") from exc
            finally:
                instruments.fanout_seconds(trio.current_time() - started)
    if appended is None:
        raise StoreUnavailable(detail="the commit did not finish in time")
    if not handed:
        raise BusLost(detail="handing a committed event to the bus timed out")
    return appended
