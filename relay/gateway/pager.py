"""The pager of one session: ``replay``, ``replay.next`` and ``streams`` (PROTOCOL.md §4.4).

The reader checks a request's fields and submits it; the pager serves requests one at a time, each
into the outbox (waiting for room). At most ``max_replays`` requests may be outstanding (queued or
being served); one more is refused with ``busy``. Listing requests count too: they are served by the
same task from the same store.

A request of a session the node knows to be revoked (:attr:`Session.revocation`) is not served: it
closes the session with that error before the store is read, and a page read while the revocation
arrived is not sent.

A replay's ``head`` is fixed when it begins and travels in its continuation token, so events committed
during a replay belong to live delivery, not to the pages. A page holds at most ``limit`` events and
ends early when the next one would not fit in ``max_frame_bytes``; ``next`` is null exactly when the
page reaches ``head``.

Each page queued counts in ``relay_replay_pages_total{kind}`` (``replay`` for ``replay`` and
``replay.next``, ``streams`` for ``streams``); each request served is a ``ws.replay_page`` span.
"""

from __future__ import annotations

import attrs
import trio

from relay.errors import Busy, RequestError, Unavailable
from relay.gateway.fitting import fit_events, fit_heads, frame_bytes, token_chars
from relay.gateway.instruments import PageKind
from relay.gateway.revocation_index import Revocation
from relay.gateway.session import Session
from relay.gateway.traces import span
from relay.protocol import tokens
from relay.protocol.codec import AnswerContext, encode_server
from relay.protocol.messages import ReplayPage, StreamsPage
from relay.store.base import Store

__all__ = ["ListJob", "NextJob", "Pager", "ReplayJob"]

_DEFAULT_RETRY_AFTER_MS = 1000
#: The longest stream name (§1): the longest ``next`` a ``streams.page`` can carry.
_MAX_STREAM_CHARS = 128


@attrs.frozen(kw_only=True)
class ReplayJob:
    """A checked ``replay``: the head is read when the pager begins it."""

    stream: str
    after: int
    limit: int
    ctx: AnswerContext


@attrs.frozen(kw_only=True)
class NextJob:
    """A ``replay.next``: the token is opened when the pager serves it (so expiry counts until then)."""

    token: str
    ctx: AnswerContext


@attrs.frozen(kw_only=True)
class ListJob:
    """A checked ``streams``."""

    after: str | None
    limit: int
    ctx: AnswerContext


Job = ReplayJob | NextJob | ListJob


@attrs.define(eq=False)
class Pager:
    """The replay requests of one session and the task that serves them (:meth:`run`)."""

    session: Session
    _send: trio.MemorySendChannel[Job] = attrs.field(init=False)
    _receive: trio.MemoryReceiveChannel[Job] = attrs.field(init=False)
    _outstanding: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[Job](self.limit)

    @property
    def limit(self) -> int:
        return self.session.ctx.settings.max_replays

    def submit(self, job: Job) -> None:
        """Queue ``job``; :class:`Busy` when ``max_replays`` requests are outstanding already."""
        if self._outstanding >= self.limit:
            raise Busy()
        self._send.send_nowait(job)  # never full: it holds at most `limit` jobs
        self._outstanding += 1

    async def run(self) -> None:
        """Serve submitted requests one at a time, until cancelled."""
        async for job in self._receive:
            try:
                await self._serve(job)
            finally:
                self._outstanding -= 1

    async def _serve(self, job: Job) -> None:
        kind: PageKind = "streams" if isinstance(job, ListJob) else "replay"
        with span(self.session.ctx.tracing, "ws.replay_page") as current:
            current.set_attribute("relay.kind", kind)
            if isinstance(job, ReplayJob):
                current.set_attribute("relay.stream_length", len(job.stream))
            refusal = await self._serve_job(job, kind)
            if refusal is not None:
                current.set_attribute("relay.refusal", refusal)

    async def _serve_job(self, job: Job, kind: PageKind) -> str | None:
        """Serve ``job``; the code it was refused with, if it was."""
        ctx = job.ctx
        if (revocation := self._revoked(ctx)) is not None:
            return revocation.code
        try:
            if isinstance(job, ListJob):
                frame = await self._list(job)
            elif isinstance(job, ReplayJob):
                head = await self._store().stream_head(self.session.user_id, job.stream)
                frame = await self._page(job.stream, after=job.after, head=head, limit=job.limit, ctx=ctx)
            else:
                cursor = tokens.open_token(
                    self.session.ctx.token_secret,
                    job.token,
                    user_id=self.session.user_id,
                    device_id=self.session.device_id,
                    now_ms=self._now(),
                )
                ctx = attrs.evolve(ctx, stream=cursor.stream)
                frame = await self._page(
                    cursor.stream, after=cursor.after, head=cursor.head, limit=cursor.limit, ctx=ctx
                )
        except Unavailable as exc:
            retry = exc.fields.get("retry_after_ms") or _DEFAULT_RETRY_AFTER_MS
            await self.session.answer_error(Unavailable(retry_after_ms=retry), ctx)
            return exc.code
        except RequestError as exc:
            await self.session.answer_error(exc, ctx)
            return exc.code
        if (revocation := self._revoked(ctx)) is not None:
            return revocation.code
        await self.session.answer(frame)
        self.session.ctx.instruments.page(kind)
        return None

    def _revoked(self, ctx: AnswerContext) -> Revocation | None:
        """The revocation the session is known to have; then it is closed with it (nothing served)."""
        revocation = self.session.revocation
        if revocation is not None:
            self.session.close(revocation, ctx=ctx)
        return revocation

    def _store(self) -> Store:
        return self.session.ctx.store

    def _now(self) -> int:
        return self.session.ctx.clock.now_ms()

    async def _page(self, stream: str, *, after: int, head: int, limit: int, ctx: AnswerContext) -> str:
        """The ``replay.page`` of events with ``after < seq <= head``, at most ``limit``, within a frame."""
        if after >= head:
            return encode_server(ReplayPage(stream=stream, events=[], head=head, next=None, ref=ctx.ref))
        settings = self.session.ctx.settings
        now = self._now()
        events = await self._store().read_events(
            self.session.user_id,
            stream,
            after=after,
            head=head,
            limit=limit,
            now_ms=now,
            clock_skew_ms=settings.clock_skew_ms,
        )
        envelope = ReplayPage(
            stream=stream, events=[], head=head, next="x" * token_chars(stream), ref=ctx.ref
        )
        count = fit_events(events, settings.max_frame_bytes - frame_bytes(encode_server(envelope)))
        page = events[:count]
        # A page cut short by size, or filled to `limit`, covers up to its last event; a page with
        # fewer than `limit` events holds every unexpired event left: it reaches the head.
        covered = page[-1].seq if count < len(events) or len(events) == limit else head
        next_token = None
        if covered < head:
            next_token = tokens.mint(
                self.session.ctx.token_secret,
                user_id=self.session.user_id,
                device_id=self.session.device_id,
                stream=stream,
                after=covered,
                head=head,
                limit=limit,
                now_ms=now,
            )
        return encode_server(ReplayPage(stream=stream, events=page, head=head, next=next_token, ref=ctx.ref))

    async def _list(self, job: ListJob) -> str:
        """The ``streams.page`` after ``job.after`` (reading one more than ``limit`` tells if more follow)."""
        settings = self.session.ctx.settings
        found = await self._store().list_streams(
            self.session.user_id,
            after=job.after,
            limit=job.limit + 1,
            now_ms=self._now(),
            clock_skew_ms=settings.clock_skew_ms,
        )
        envelope = StreamsPage(streams={}, next="x" * _MAX_STREAM_CHARS, ref=job.ctx.ref)
        budget = settings.max_frame_bytes - frame_bytes(encode_server(envelope))
        streams, cut = fit_heads(found[: job.limit], budget)
        more = cut or len(found) > job.limit
        last = next(reversed(streams), None)
        return encode_server(StreamsPage(streams=streams, next=last if more else None, ref=job.ctx.ref))
