"""The store contract: what the gateway, the HTTP layer and the admin commands may ask of a store.

Implementations (``sqlite.py``; ``postgres.py`` later) live beside this module and are chosen by
``relay.app`` from the settings; nothing outside ``relay/store/`` imports them or holds SQL.

Every method is async and cancellation-safe: a cancelled call either completed or left nothing behind.
Driver errors never escape: they are raised as :class:`relay.errors.StoreUnavailable` (``from exc``).
Time is passed in (``now_ms``) so the store never reads a clock of its own, except where a method says
so. User-facing refusals are the errors of :mod:`relay.errors` named in each docstring.
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
    """One validated publish (relay.protocol.validation.AcceptedPublish) from one device."""

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


@attrs.frozen(kw_only=True)
class Appended:
    """The committed event; ``duplicate`` when it was stored earlier under the same device and id."""

    event: StoredEvent
    duplicate: bool


class Store(Protocol):
    """What relay asks of its database. See the module docstring for the rules every method keeps."""

    # --- lifecycle ---------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply pending migrations (under a lock); return the names applied."""
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
        """Another enrolment token. :class:`relay.errors.NotFound` for an unknown user."""
        ...

    async def enroll(self, enrollment: Enrollment) -> DeviceRecord:
        """Consume the token and create the device, in one transaction.

        Refusals (the token stays usable for every one but success): :class:`InvalidToken` (unknown,
        used, expired, voided, or bound to another key), :class:`NameTaken`, :class:`KeyInUse`,
        :class:`TooManyDevices`.
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

    # --- events ----------------------------------------------------------------------------------

    async def append(self, request: AppendRequest) -> Appended:
        """Store one event and commit; return only once it is durable.

        Appends that arrive together share one transaction (group commit); each succeeds or fails
        alone. Refusals: :class:`IdConflict`, :class:`SeqConflict` (with ``head``),
        :class:`QuotaExceeded`, :class:`DeviceRevoked` (the device was revoked before the commit).
        """
        ...

    async def stream_head(self, user_id: str, stream: str) -> int:
        """The stream's head (0 for a stream never written)."""
        ...

    async def read_events(
        self, user_id: str, stream: str, *, after: int, head: int, limit: int, now_ms: int
    ) -> list[StoredEvent]:
        """Unexpired events with ``after < seq <= head`` in seq order, at most ``limit``."""
        ...

    async def list_streams(
        self, user_id: str, *, after: str | None, limit: int, now_ms: int
    ) -> list[tuple[str, int]]:
        """Streams holding unexpired events, in byte order of name after ``after``, with heads."""
        ...

    async def recent_streams(self, user_id: str, *, limit: int, now_ms: int) -> tuple[dict[str, int], bool]:
        """The ``limit`` most recently written streams holding unexpired events, and whether more exist."""
        ...

    async def purge_expired(self, *, now_ms: int, clock_skew_ms: int, batch: int) -> int:
        """Delete up to ``batch`` expired events; heads never decrease. Returns how many were deleted."""
        ...
