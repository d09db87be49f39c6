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

Accounts leave keyed hashes behind, never ids (PROTOCOL.md §5): the revocation log's ``subject`` is
:func:`revocation_subject` of a device or user id, and a deleted device is remembered (for
``lookup_device``) as ``keyed_hash(token_secret, DELETED_DEVICE_LABEL, device_id)``, both under the
store's own ``token_secret`` (:meth:`Store.load_or_create_secrets`). Housekeeping (expired nonces,
deleted-device hashes, old log entries and tokens) is :meth:`Store.purge_housekeeping`, apart from
:meth:`Store.purge_expired`, which deletes events only.
"""

from __future__ import annotations

from typing import Literal, Protocol

import attrs

from relay import crypto
from relay.protocol.messages import StoredEvent

#: How long the revocation log keeps an entry (ms). Nodes poll it every 250 ms; a node that fell
#: further behind than this must re-check its live sessions against the store instead.
REVOCATION_LOG_RETENTION_MS = 600_000
#: How long an enrolment token is kept after it expired (ms; it is refused like an unknown one all
#: along), so that recent enrolment trouble can still be looked into; then it is deleted.
EXPIRED_TOKEN_RETENTION_MS = 86_400_000
#: The ``keyed_hash`` label of revocation log subjects (device and user ids alike).
REVOCATION_LOG_LABEL = "relay-revocation-log-v1"
#: The ``keyed_hash`` label under which a deleted account's device ids are remembered.
DELETED_DEVICE_LABEL = "relay-deleted-device-v1"


def revocation_subject(token_secret: bytes, subject_id: str) -> bytes:
    """The ``subject`` of a revocation log entry about ``subject_id`` (a device or a user id).

    A node hashes the device and user ids of its live sessions with this (and the server's
    ``token_secret``) to recognise the entries that concern them; the log never holds an id.
    """
    return crypto.keyed_hash(token_secret, REVOCATION_LOG_LABEL, subject_id)


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
    """No device with that id exists (nor is it remembered as a deleted account's device)."""


@attrs.frozen(kw_only=True)
class DeletedDevice:
    """The id belonged to a device of a deleted account (remembered as a keyed hash, for a while)."""


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


RevocationKind = Literal["device_revoked", "user_deleted"]


@attrs.frozen(kw_only=True)
class RevocationEntry:
    """One entry of the revocation log: a device was revoked or a user deleted, ``at`` (the caller's now).

    ``id`` increases in commit order and is never reused; ``subject`` is :func:`revocation_subject`
    of the device id (``device_revoked``) or the user id (``user_deleted``).
    """

    id: int
    kind: RevocationKind
    subject: bytes
    at: int


@attrs.frozen(kw_only=True)
class DeletedCounts:
    """What :meth:`Store.delete_user` deleted, in stored rows (revoked devices and expired events too)."""

    devices: int
    streams: int
    events: int


@attrs.frozen(kw_only=True)
class UserSummary:
    """One user as ``relay admin user show`` prints it; every count is of one snapshot.

    ``devices`` are the non-revoked devices, ``revoked_devices`` the others; ``streams`` counts the
    streams holding unexpired events, ``events`` the unexpired events and ``stored_bytes`` their bodies'
    canonical UTF-8 bytes (what the quotas count).
    """

    user_id: str
    created_at: int
    devices: int
    revoked_devices: int
    streams: int
    events: int
    stored_bytes: int


@attrs.frozen(kw_only=True)
class NodeRecord:
    """A server process that shares this database, as its last heartbeat described it."""

    node_id: str
    shared_bus: bool  # False: it fans out only to its own sessions (the in-process bus)
    expires_at: int


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

    # --- nodes sharing the database (readiness) ---------------------------------------------------

    async def heartbeat_node(self, node_id: str, *, shared_bus: bool, now_ms: int, ttl_ms: int) -> None:
        """Record that ``node_id`` is alive until ``now_ms + ttl_ms`` (insert or renew)."""
        ...

    async def live_nodes(self, *, now_ms: int) -> list[NodeRecord]:
        """The nodes whose heartbeat has not expired at ``now_ms``, in node id order."""
        ...

    async def forget_node(self, node_id: str) -> None:
        """Remove ``node_id``'s heartbeat (a node shutting down). Idempotent."""
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

    async def lookup_device(self, device_id: str, *, now_ms: int | None = None) -> DeviceLookup:
        """What the store knows of a device id (handshake, signed requests).

        :class:`DeletedDevice` for a device of an account deleted by :meth:`delete_user`, while
        ``now_ms <= expires_at`` of its memory; after that :class:`UnknownDevice`. Without ``now_ms``
        the memory counts until :meth:`purge_housekeeping` forgets it.
        """
        ...

    async def get_user(self, user_id: str, *, now_ms: int, clock_skew_ms: int) -> UserSummary:
        """The user's counts (see :class:`UserSummary`); :class:`NotFound` for an unknown user."""
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
        (``None``: an operator). After this commits no append or rename of the device commits, and its
        name is free again. The first revocation appends a ``device_revoked`` entry to the revocation
        log in the same transaction; an idempotent call appends nothing.
        """
        ...

    async def rename_device(
        self, device_id: str, *, name: str, name_key: str, now_ms: int, user_id: str | None = None
    ) -> DeviceRecord:
        """Give the device ``name`` (normalised by the caller, ``name_key`` its key); return it renamed.

        :class:`NotFound` for an unknown device, one of another user when ``user_id`` is given
        (``None``: an operator), or a revoked one. :class:`NameTaken` when another non-revoked device
        of the user has ``name_key`` (its own current key is no obstacle: a change of case is a rename).
        The database enforces the uniqueness, so of two concurrent renames to one name exactly one
        commits. ``now_ms`` is the time of the rename (the store keeps no rename time).
        """
        ...

    async def delete_user(self, user_id: str, *, now_ms: int, remember_ms: int) -> DeletedCounts:
        """Delete the user and everything of it, in one transaction (PROTOCOL.md §5).

        Devices (revoked ones too), streams, events, enrolment tokens (also those its devices issued),
        remembered nonces and the user itself; no row of the database holds its ids, keys, names or
        events afterwards. In the same transaction: a ``user_deleted`` entry in the revocation log, and
        each device id remembered as a keyed hash until ``now_ms + remember_ms``, for
        :meth:`lookup_device`. :class:`NotFound` for an unknown user. Appends of its devices then fail
        with :class:`AccountDeleted`.
        """
        ...

    # --- revocation log and nonces ---------------------------------------------------------------

    async def latest_revocation(self) -> int:
        """The highest id in the revocation log (0 when nothing was ever logged); a cheap read.

        Never decreases: ids are never reused and pruning always keeps the newest entry. Nodes poll
        this (every 250 ms) and call :meth:`revocations_since` only when it moved.
        """
        ...

    async def revocations_since(self, after: int, *, limit: int = 1000) -> list[RevocationEntry]:
        """Log entries with ``id > after``, ascending, at most ``limit``.

        Entries are kept :data:`REVOCATION_LOG_RETENTION_MS` (the newest one longer): a reader whose
        ``after`` is older than the oldest entry left may have missed some.
        """
        ...

    async def remember_nonce(self, device_id: str, nonce: str, *, expires_at: int, now_ms: int) -> bool:
        """Remember the (device, nonce) pair of a signed request until ``expires_at`` (PROTOCOL.md §3).

        True when the pair was not remembered, or only until before ``now_ms``; False when it is
        remembered and unexpired (``now_ms <= expires_at``: a replay), which changes nothing. Atomic:
        of concurrent calls with one pair exactly one is True. The nonce is stored as given (it is sent
        in clear and proves nothing alone). :class:`AccountDeleted` when the device does not exist.
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
        Events only: the rest is :meth:`purge_housekeeping`.
        """
        ...

    async def purge_housekeeping(self, *, now_ms: int, batch: int) -> int:
        """Forget up to ``batch`` rows, in one short transaction, of what is kept only for a while.

        In this order: nonces remembered until before ``now_ms``, deleted-device hashes remembered
        until before ``now_ms``, revocation log entries with ``at`` older than
        :data:`REVOCATION_LOG_RETENTION_MS` (never the newest entry), and enrolment tokens that
        expired more than :data:`EXPIRED_TOKEN_RETENTION_MS` ago. Returns how many rows were deleted:
        call again while it returns ``batch``.
        """
        ...
