"""Merging live delivery and replay into one ordered, gapless view of each stream (PROTOCOL.md §4.3, §4.4).

Pure: no I/O, no clock. :class:`StreamOrder` is the client's book-keeping for one stream:

- ``delivered`` is the highest ``seq`` handed to the application; every seq at or below it was either
  delivered or is known to have expired;
- events that arrive ahead of a missing seq are buffered (bounded by :data:`MAX_BUFFERED_EVENTS`)
  until the missing one arrives or a replay shows it expired;
- ``known_head`` is the highest seq the client has heard of (from ``welcome``, ``heads``, a live event or
  a replay page). ``known_head > delivered`` means a gap: the client replays ``(delivered, known_head]``.

A replay of ``(after, head]`` holds every unexpired event of that range (§4.4: "A seq in (after, head]
missing from a replay that covered it has expired and never comes back"), so once a page has been
offered, :meth:`StreamOrder.covered` declares everything up to the page's end settled.
"""

from __future__ import annotations

import attrs

from relay.protocol.messages import StoredEvent

__all__ = ["MAX_BUFFERED_EVENTS", "StreamOrder"]

#: Events held per stream while waiting for a missing seq. Beyond it the newest are dropped: the
#: replay that fills the gap brings them again.
MAX_BUFFERED_EVENTS = 10_000


@attrs.define(eq=False)
class StreamOrder:
    """Ordering state of one stream; see the module docstring."""

    stream: str
    delivered: int = 0
    known_head: int = 0
    _buffered: dict[int, StoredEvent] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self.known_head = max(self.known_head, self.delivered)

    @property
    def gap(self) -> bool:
        """True when a seq above ``delivered`` is known to exist but has not been delivered."""
        return self.known_head > self.delivered

    @property
    def buffered(self) -> int:
        """How many events wait for a missing seq."""
        return len(self._buffered)

    def note_head(self, head: int) -> None:
        """The stream has reached at least ``head`` (``welcome``, ``heads``, a replay page)."""
        self.known_head = max(self.known_head, head)

    def offer(self, event: StoredEvent) -> list[StoredEvent]:
        """Take one event (live or replayed); return the events now deliverable, in seq order.

        A seq at or below ``delivered`` is a duplicate (replay and live overlap) and is dropped.
        """
        if event.stream != self.stream:
            raise ValueError(f"event of stream {event.stream!r} offered to {self.stream!r}")
        self.note_head(event.seq)
        if event.seq <= self.delivered:
            return []
        if event.seq != self.delivered + 1:
            if len(self._buffered) < MAX_BUFFERED_EVENTS or event.seq in self._buffered:
                self._buffered[event.seq] = event
            return []
        self.delivered = event.seq
        return [event, *self._drain()]

    def covered(self, upto: int) -> list[StoredEvent]:
        """A replay covered ``(delivered, upto]``: a seq still missing there expired. Returns what that
        releases, in seq order (buffered events up to ``upto``, then any that now follow on)."""
        self.note_head(upto)
        released = [self._buffered.pop(seq) for seq in sorted(s for s in self._buffered if s <= upto)]
        released = [event for event in released if event.seq > self.delivered]
        if upto > self.delivered:
            self.delivered = upto
        return [*released, *self._drain()]

    def _drain(self) -> list[StoredEvent]:
        out: list[StoredEvent] = []
        while (event := self._buffered.pop(self.delivered + 1, None)) is not None:
            self.delivered = event.seq
            out.append(event)
        return out
