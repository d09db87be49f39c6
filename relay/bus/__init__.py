"""Fan-out between the live sessions of a user: the :class:`Bus` contract and its implementations.

:mod:`relay.bus.base` states the contract; :mod:`relay.bus.local` is the in-process bus (one node).
The gateway knows only the contract; ``relay.app`` picks the implementation.
"""

from __future__ import annotations

from relay.bus.base import Bus, Note, Subscriber
from relay.bus.local import Fanout, LocalBus

__all__ = ["Bus", "Fanout", "LocalBus", "Note", "Subscriber"]
