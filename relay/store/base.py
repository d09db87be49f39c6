"""The store contract: what the gateway, the HTTP layer and the admin commands may ask of a store.

Implementations (``sqlite.py``, ``memory.py`` for tests; ``postgres.py`` later) live beside this module
and are chosen by ``relay.app`` from the settings; nothing outside ``relay/store/`` imports them (tests
and the app's wiring excepted) or holds SQL. The contract suite in ``tests/store`` runs against each.

Every method is async and cancellation-safe: a cancelled call either completed or left nothing behind.
A write whose caller is cancelled after handing it to the store may still commit (as a whole) or not;
the caller just stops waiting for the answer (a publish is then retried with the same ``id``).
Driver errors never escape: they are raised as :class:`relay.errors.StoreUnavailable` (``from exc``).
Time is passed in (``now_ms``, ``received_at``) so the store never reads a clock of its own, and so is
the clock skew: *expired* is always :func:`relay.protocol.validation.is_expired`
(``now_ms > expires_at + clock_skew_ms``). User-facing refusals are the errors of :mod:`relay.errors`
named in each docstring.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from relay.protocol.messages import StoredEvent


@attrs.frozen(kw_only=True)
class ServerSecrets:
    """The server's Ed25519 seed and the secret that keys tokens and hashes; the same on every node."""

    signing_seed: bytes = attrs.field(repr=False)
    token_secret: bytes = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class DeviceRecord:
    device_id: str
    user_id: str
    public_key: bytes = attrs.field(repr=False)
    name: str
    created_at: int
    last_seen_at: int | None = None
    revoked_at: int | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@attrs.frozen(kw_only=True)
class UnknownDevice:
    """No device with that id exists (and none of a deleted account did)."""


@attrs.frozen(kw_only=True)
class DeletedDevice:
    """The id belonged to a device of an account that was deleted (remembered as a keyed hash)."""


DeviceLookup = DeviceRecord | UnknownDevice | DeletedDevice


@attrs.frozen(kw_only=True)
class IssuedToken:
    """An enrolment token as issued: ``token`` is the b64 text shown once; only its hash is stored."""

    token: str = attrs.field(repr=False)
    expires_at: int


@attrs.frozen(kw_only=True)
class NewUser:
    user_id: str
    token: IssuedToken


@attrs.frozen(kw_only=True)
class Enrollment:
    """``POST /v1/enroll`` after its signature verified: everything the store must check and write."""

    token_hash: bytes = attrs.field(repr=False)
    public_key: bytes = attrs.field(repr=False)
    name: str  # already normalised (relay.protocol.names.normalize_device_name)
    name_key: str  # relay.protocol.names.device_name_key(name)
    max_devices: int
    now_ms: int


@attrs.frozen(kw_only=True)
class AppendRequest:
    """One validated publish (relay.protocol.validation.AcceptedPublish) from one device.

    ``received_at`` is the server's clock when the publish was accepted: it is stored, and it is the
    "now" of the quota checks (which count only unexpired events, using ``clock_skew_ms``).
    """

    user_id: str
    device_id: str
    id: str
    stream: str
    ts: int
    expires_at: int
    expect_seq: int | None
    body: bytes = attrs.field(repr=False)  # RFC 8785 canonical UTF-8 text
    received_at: int
    max_streams: int
    max_stored_bytes: int
    clock_skew_ms: int


@attrs.frozen(kw_only=True)
class Appended:
    """The committed event; ``duplicate`` when it was stored earlier under the same device and id."""

    event: StoredEvent
    duplicate: bool


@attrs.frozen(kw_only=True)
class MigrationStatus:
    """Migrations by name, in the order they apply (``relay admin db status``)."""

    applied: list[str]
    pending: list[str]


@attrs.frozen(kw_only=True)
class StoreStatistics:
    """A snapshot of the store's write path (trio's ``statistics()`` convention).

    ``write_transactions`` counts the write transactions run since the store opened (committed or
    rolled back); ``write_requests`` the write requests they carried. With group commit the first is
    smaller than the second. ``write_queue_depth`` is how many write requests wait for the writer now.
    """

    write_transactions: int
    write_requests: int
    write_queue_depth: int


class Store(Protocol):
    """What relay asks of its database. See the module docstring for the rules every method keeps."""

    # --- lifecycle ---------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply pending migrations (under a lock); return the names applied."""
        ...

    async def migration_status(self) -> MigrationStatus:
        """Which migrations are applied and which are pending."""
        ...

    def statistics(self) -> StoreStatistics:
        """A snapshot of the write path's counters."""
        ...

    async def close(self) -> None:
        """Finish what was accepted, then release every connection and thread."""
        ...

    async def load_or_create_secrets(self) -> ServerSecrets:
        """The server's secrets, created on first call and the same ever after."""
        ...

    # --- users and enrolment ---------------------------------------------------------------------

    async def create_user(self, *, now_ms: int, token_ttl_ms: int) -> NewUser:
        """A new user and an operator token for its first device."""
        ...

    async def create_token(
        self,
        *,
        user_id: str,
        now_ms: int,
        token_ttl_ms: int,
        issued_by: str | None = None,
        bound_key: bytes | None = None,
    ) -> IssuedToken:
        """Another enrolment token, valid while ``now_ms <= expires_at``.

        :class:`relay.errors.NotFound` for an unknown user, or an ``issued_by`` device that is not the
        user's; :class:`relay.errors.DeviceRevoked` when ``issued_by`` was revoked.
        """
        ...

    async def enroll(self, enrollment: Enrollment) -> DeviceRecord:
        """Consume the token and create the device, in one transaction.

        Refusals, checked in this order (the token stays usable for every one but success):
        :class:`InvalidToken` (unknown, used, expired (``now_ms > expires_at``), voided, bound to another
        key, or issued by a device since revoked), :class:`NameTaken` (``name_key`` of a non-revoked
        device of the user), :class:`KeyInUse` (any device of the server, revoked ones included),
        :class:`TooManyDevices` (``max_devices`` non-revoked devices already).
        """
        ...

    async def lookup_device(self, device_id: str) -> DeviceLookup:
        """What the store knows of a device id (handshake, signed requests)."""
        ...

    async def list_users(self) -> list[str]:
        """Every user id, oldest first (operators)."""
        ...

    async def list_devices(self, user_id: str) -> list[DeviceRecord]:
        """The user's devices, revoked ones included, oldest first."""
        ...

    async def touch_device(self, device_id: str, *, now_ms: int) -> None:
        """Record ``last_seen_at`` (called when a session closes)."""
        ...

    async def revoke_device(self, device_id: str, *, now_ms: int, user_id: str | None = None) -> DeviceRecord:
        """Revoke the device (§5) and void the unused tokens it issued; return it as revoked.

        Idempotent: an already revoked device is returned unchanged (its first ``revoked_at``).
        :class:`NotFound` for an unknown device, or one of another user when ``user_id`` is given
        (``None``: an operator). After this commits no append of the device commits, and its name is
        free again.
        """
        ...

    # --- events ----------------------------------------------------------------------------------

    async def append(self, request: AppendRequest) -> Appended:
        """Store one event and commit; return only once it is durable.

        Appends that arrive together share one transaction (group commit); each succeeds or fails
        alone. Checked in the order of PROTOCOL.md §4.2, steps 3 to 6:

        - :class:`QuotaExceeded` when storing the event would make the user hold more than
          ``max_streams`` streams with unexpired events or more than ``max_stored_bytes`` of unexpired
          bodies. A retry of an event already stored adds nothing, so it never exceeds a quota;
        - a duplicate (same device and ``id``, same ``stream`` and body bytes) answers the stored
          event with ``duplicate=True``, whatever the head is now; the same ``id`` with another stream
          or body is :class:`IdConflict`. An id is remembered until its event is purged;
        - :class:`SeqConflict` (with ``head``) when ``expect_seq`` is given and is not the head;
        - :class:`DeviceRevoked` when the device was revoked before this commit;
          :class:`AccountDeleted` when the device no longer exists.
        """
        ...

    async def stream_head(self, user_id: str, stream: str) -> int:
        """The stream's head (0 for a stream never written)."""
        ...

    async def read_events(
        self, user_id: str, stream: str, *, after: int, head: int, limit: int, now_ms: int, clock_skew_ms: int
    ) -> list[StoredEvent]:
        """Unexpired events with ``after < seq <= head`` in seq order, at most ``limit``."""
        ...

    async def list_streams(
        self, user_id: str, *, after: str | None, limit: int, now_ms: int, clock_skew_ms: int
    ) -> list[tuple[str, int]]:
        """Streams holding unexpired events, in byte order of name after ``after``, with heads."""
        ...

    async def recent_streams(
        self, user_id: str, *, limit: int, now_ms: int, clock_skew_ms: int
    ) -> tuple[dict[str, int], bool]:
        """The ``limit`` most recently written streams holding unexpired events, and whether more exist.

        Most recent first by the ``received_at`` of their last event, ties in byte order of name.
        """
        ...

    async def purge_expired(self, *, now_ms: int, clock_skew_ms: int, batch: int) -> int:
        """Delete up to ``batch`` expired events, soonest expired first, in one short transaction.

        Heads never decrease. Returns how many were deleted: call again while it returns ``batch``.
        """
        ...
