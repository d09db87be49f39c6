"""Settings: the configuration of a relay process, read once and validated once.

:meth:`Settings.from_env` builds them from the ``RELAY_*`` variables of PROTOCOL.md §8 plus the flags
of ``relay serve`` (``--host``, ``--port``, ``--workers``). Library code never reads ``os.environ``:
the entry point (:mod:`relay.cli`) passes it in explicitly.

Rules, decided once for every variable:

- An unset or empty variable takes its default (``RELAY_REDIS_URL=`` is the same as not setting it).
- A bad value raises one :class:`ConfigError` whose message is one line naming the variable and
  what is wrong with the value. URLs are shown with their userinfo and password parameters
  redacted, so a message never leaks a password into a log.
- A ``RELAY_*`` variable that is not in the table below is refused the same way, with a suggestion:
  a typo such as ``RELAY_HEARTBEAT_SM`` must not be silently ignored. ``RELAY_TEST_*`` is reserved
  for the test suite and ignored here.
- Every integer is at least 1 (a zero timeout or quota is refused, not taken to mean "none").
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import SplitResult, urlsplit

import attrs

from relay.protocol.messages import Limits

__all__ = ["ENV_VARIABLES", "ConfigError", "Settings", "redact_url"]

#: Protocol integers lie in 0..2^53-1 (PROTOCOL.md §1); several settings are sent to clients.
_MAX_INT = 2**53 - 1
#: Seconds-valued settings are turned into milliseconds; keep those exact too.
_MAX_SECONDS = _MAX_INT // 1000
#: §1: a frame is never smaller than the largest event plus this much room for the envelope.
FRAME_OVERHEAD_BYTES = 4096
#: The replay page size is fixed by the protocol (§4.4), not configurable.
REPLAY_PAGE = 100

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_MAX_SHOWN_CHARS = 80


class ConfigError(Exception):
    """A setting is wrong. ``str(error)`` is one line naming the variable; print it and exit 2."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(problem)


def redact_url(text: str) -> str:
    """``text`` with the userinfo of a URL and any ``password=`` parameter replaced by ``***``.

    Works on malformed URLs too: everything before the last ``@`` (after the scheme) is hidden, since
    an unescaped ``/`` or ``@`` in a password would fool a URL parser.
    """
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    rest = re.sub(r"(?i)(password|passwd|pwd)=[^&#\s]*", r"\1=***", rest)
    return f"{scheme}{sep}{rest}"


def _show(value: object, *, url: bool = False) -> str:
    if isinstance(value, str):
        text = redact_url(value) if url else value
        if len(text) > _MAX_SHOWN_CHARS:
            text = text[: _MAX_SHOWN_CHARS - 3] + "..."
        return repr(text)  # repr escapes newlines and control characters: the message stays one line
    if isinstance(value, tuple):
        return repr(",".join(str(v) for v in value))
    return str(value)


# --- converters (environment text → value) and checks (value → ok or ValueError) ---------------------


def _to_int(text: str) -> int:
    stripped = text.strip()
    if re.fullmatch(r"[+-]?[0-9]+", stripped) is None:
        raise ValueError("must be an integer")
    return int(stripped)


def _positive_int(upper: int) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if type(value) is not int:
            raise ValueError("must be an integer")
        if value < 1:
            raise ValueError("must be a positive integer (at least 1)")
        if value > upper:
            raise ValueError(f"must be at most {upper}")

    return check


def _check_env(value: Any) -> None:
    if value not in ("production", "development"):
        raise ValueError("must be 'production' or 'development'")


def _check_log_level(value: Any) -> None:
    if value not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")


def _to_switch(text: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    raise ValueError("must be on or off")


def _check_switch(value: Any) -> None:
    if type(value) is not bool:
        raise ValueError("must be on or off")


def _check_log_format(value: Any) -> None:
    if value not in ("json", "text"):
        raise ValueError("must be json (one JSON object per line) or text")


def _check_path(value: Any) -> None:
    if not isinstance(value, Path) or not str(value) or "\0" in str(value):
        raise ValueError("must be a directory path")


def _split_url(value: str, what: str) -> SplitResult:
    if any(c.isspace() for c in value):
        raise ValueError(f"{what} must not contain white space")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0..65535
    except ValueError:
        raise ValueError(f"is not a valid {what}") from None
    return parts


def _check_database_url(value: Any) -> None:
    if value is None:
        return
    parts = _split_url(value, "URL")
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ValueError("must be a postgresql:// or postgres:// URL (leave it unset for SQLite)")
    if parts.fragment:
        raise ValueError("must not have a #fragment")


def _check_redis_url(value: Any) -> None:
    if value is None:
        return
    parts = _split_url(value, "URL")
    if parts.scheme.lower() not in ("redis", "rediss"):
        raise ValueError("must be a redis:// or rediss:// URL")
    if parts.path not in ("", "/") and re.fullmatch(r"/[0-9]+", parts.path) is None:
        raise ValueError("the path of a Redis URL must be a database number, such as /0")
    if parts.fragment:
        raise ValueError("must not have a #fragment")


def _check_public_url(value: Any) -> None:
    if value is None:
        return
    parts = _split_url(value, "URL")
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if "@" in parts.netloc:
        raise ValueError("must not contain a user name or password")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError("must be a base URL, without ?query or #fragment")


def _normalise_origin(text: str) -> str:
    parts = _split_url(text, "origin")
    default_port = {"http": 80, "https": 443}.get(parts.scheme.lower())
    if default_port is None or not parts.hostname:
        raise ValueError(f"{redact_url(text)!r} is not an origin such as https://app.example.com")
    if "@" in parts.netloc:
        raise ValueError(f"{redact_url(text)!r} is not an origin (it holds user info)")
    if parts.path not in ("",) or parts.query or parts.fragment or text[-1] in "?#":
        raise ValueError(f"{text!r} is not an origin (no path, query or user info; no trailing slash)")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = "" if parts.port in (None, default_port) else f":{parts.port}"
    return f"{parts.scheme.lower()}://{host}{port}"


def _to_origins(text: str) -> tuple[str, ...]:
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise ValueError("must be a comma-separated list of origins, without empty items")
    return tuple(_normalise_origin(item) for item in items)


def _check_origins(value: Any) -> None:
    if not isinstance(value, tuple):
        raise ValueError("must be a tuple of origins")
    for origin in value:
        if not isinstance(origin, str) or _normalise_origin(origin) != origin:
            raise ValueError(f"{origin!r} is not an origin in normal form (lower case, no default port)")


def _check_host(value: Any) -> None:
    if not isinstance(value, str):
        raise ValueError("must be a host name or an IP address")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        label = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
        if re.fullmatch(rf"{label}(\.{label})*\.?", value) is None or len(value) > 253:
            raise ValueError("must be a host name or an IP address") from None


def _check_port(value: Any, *, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    if type(value) is not int or not low <= value <= 65535:
        raise ValueError(f"must be a port number in {low}..65535")


def _check_bind(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ValueError("must be host:port")
    host, sep, port = value.rpartition(":")
    if not sep or not host or re.fullmatch(r"[0-9]{1,5}", port) is None:
        raise ValueError("must be host:port, such as 127.0.0.1:9100")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError("must be host:port with a valid IPv6 address in brackets") from None
    elif ":" in host:
        raise ValueError("must be host:port; write an IPv6 address in brackets, such as [::1]:9100")
    else:
        _check_host(host)
    _check_port(int(port), allow_zero=False)


def _nothing(text: str) -> str:
    return text


@attrs.frozen
class _Setting:
    field: str
    #: The environment variable, or None for a setting that only a flag of ``relay serve`` sets.
    env: str | None
    convert: Callable[[str], object]
    check: Callable[[Any], None]
    url: bool = False

    @property
    def name(self) -> str:
        return self.env if self.env is not None else "--" + self.field


# --- the settings ---------------------------------------------------------------------------------------


def _validate(instance: Settings) -> None:
    for setting in _SETTINGS:
        value = getattr(instance, setting.field)
        try:
            setting.check(value)
        except ValueError as exc:
            raise ConfigError(
                setting.name, f"{setting.name}={_show(value, url=setting.url)}: {exc}"
            ) from None
    s = instance
    if s.max_frame_bytes < s.max_event_bytes + FRAME_OVERHEAD_BYTES:
        raise ConfigError(
            "RELAY_MAX_FRAME_BYTES",
            f"RELAY_MAX_FRAME_BYTES={s.max_frame_bytes}: must be at least RELAY_MAX_EVENT_BYTES + "
            f"{FRAME_OVERHEAD_BYTES} = {s.max_event_bytes + FRAME_OVERHEAD_BYTES}",
        )
    if s.default_ttl_s > s.max_ttl_s:
        raise ConfigError(
            "RELAY_DEFAULT_TTL_S",
            f"RELAY_DEFAULT_TTL_S={s.default_ttl_s}: must not exceed RELAY_MAX_TTL_S ({s.max_ttl_s})",
        )
    if s.metrics_bind is not None and int(s.metrics_bind.rpartition(":")[2]) == s.port:
        raise ConfigError(
            "RELAY_METRICS_BIND",
            f"RELAY_METRICS_BIND={s.metrics_bind!r}: must be another port than the server's ({s.port})",
        )
    if s.workers > 1 and s.redis_url is None:
        raise ConfigError(
            "--workers",
            f"--workers={s.workers}: more than one worker needs RELAY_REDIS_URL "
            "(each worker would otherwise fan out only to its own sessions)",
        )


@attrs.frozen(kw_only=True)
class Settings:
    """The validated configuration of one relay process. Construct with :meth:`from_env`.

    Direct construction (tests, ``attrs.evolve``) is validated the same way and raises
    :class:`ConfigError` for a bad value.
    """

    env: Literal["production", "development"] = "production"
    data_dir: Path = Path("relay-data")
    # Never in repr: a URL may carry a password, and a Settings may end up in a traceback or a log.
    database_url: str | None = attrs.field(default=None, repr=False)
    redis_url: str | None = attrs.field(default=None, repr=False)
    handshake_timeout_ms: int = 10_000
    heartbeat_ms: int = 20_000
    clock_skew_ms: int = 300_000
    max_event_bytes: int = 65_536
    max_frame_bytes: int = 131_072
    default_ttl_s: int = 604_800
    max_ttl_s: int = 2_592_000
    token_ttl_s: int = 900
    publish_rate: int = 200
    publish_burst: int = 400
    # Not in §8's table (an addition): WebSocket handshakes per client address, per second and burst.
    handshake_rate: int = 10
    handshake_burst: int = 100
    max_inflight: int = 64
    max_replays: int = 4
    max_devices: int = 20
    max_streams: int = 10_000
    max_stored_bytes: int = 1_073_741_824
    drain_timeout_ms: int = 10_000
    cors_origins: tuple[str, ...] = ()
    public_url: str | None = None
    metrics_bind: str | None = None
    log_level: str = "info"
    log_format: str = "json"
    # Not in §8's table (an addition): Hypercorn's send fast path (relay.gateway.fastpath).
    fast_send: bool = True
    # flags of `relay serve`
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1

    def __attrs_post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Settings from ``RELAY_*`` variables in ``environ``, then ``overrides`` (field name → value).

        An override of ``None`` is ignored, so unset command-line flags can be passed as they are.
        Raises :class:`ConfigError` (one line naming the variable) for a bad or unknown variable.
        """
        _refuse_unknown(environ)
        values: dict[str, Any] = {}
        for setting in _SETTINGS:
            if setting.env is None:
                continue
            text = environ.get(setting.env, "")
            if text == "":
                continue
            try:
                values[setting.field] = setting.convert(text)
            except ValueError as exc:
                raise ConfigError(
                    setting.env, f"{setting.env}={_show(text, url=setting.url)}: {exc}"
                ) from None
        for field, value in overrides.items():
            if field not in _FIELDS:
                raise TypeError(f"Settings has no field {field!r}")
            if value is not None:
                values[field] = value
        return cls(**values)

    @property
    def production(self) -> bool:
        """True unless ``RELAY_ENV=development``: clients then never see error detail (§4.6)."""
        return self.env == "production"

    @property
    def limits(self) -> Limits:
        """The limits announced to clients in ``welcome`` and ``GET /v1/server``."""
        return Limits(
            max_event_bytes=self.max_event_bytes,
            max_frame_bytes=self.max_frame_bytes,
            replay_page=REPLAY_PAGE,
            clock_skew_ms=self.clock_skew_ms,
            max_ttl_s=self.max_ttl_s,
            default_ttl_s=self.default_ttl_s,
            publish_rate=self.publish_rate,
            publish_burst=self.publish_burst,
            max_replays=self.max_replays,
            max_inflight=self.max_inflight,
        )

    @property
    def log_level_number(self) -> int:
        """The :mod:`logging` level of ``RELAY_LOG_LEVEL``."""
        level: int = logging.getLevelNamesMapping()[self.log_level.upper()]
        return level


def _int_setting(field: str, upper: int = _MAX_INT) -> _Setting:
    return _Setting(field, f"RELAY_{field.upper()}", _to_int, _positive_int(upper))


_SETTINGS: tuple[_Setting, ...] = (
    _Setting("env", "RELAY_ENV", lambda text: text.strip().lower(), _check_env),
    _Setting("data_dir", "RELAY_DATA_DIR", Path, _check_path),
    _Setting("database_url", "RELAY_DATABASE_URL", _nothing, _check_database_url, url=True),
    _Setting("redis_url", "RELAY_REDIS_URL", _nothing, _check_redis_url, url=True),
    _int_setting("handshake_timeout_ms"),
    _int_setting("heartbeat_ms"),
    _int_setting("clock_skew_ms"),
    _int_setting("max_event_bytes"),
    _int_setting("max_frame_bytes"),
    _int_setting("default_ttl_s", _MAX_SECONDS),
    _int_setting("max_ttl_s", _MAX_SECONDS),
    _int_setting("token_ttl_s", _MAX_SECONDS),
    _int_setting("publish_rate"),
    _int_setting("publish_burst"),
    _int_setting("handshake_rate"),
    _int_setting("handshake_burst"),
    _int_setting("max_inflight"),
    _int_setting("max_replays"),
    _int_setting("max_devices"),
    _int_setting("max_streams"),
    _int_setting("max_stored_bytes"),
    _int_setting("drain_timeout_ms"),
    _Setting("cors_origins", "RELAY_CORS_ORIGINS", _to_origins, _check_origins, url=True),
    _Setting(
        "public_url", "RELAY_PUBLIC_URL", lambda text: text.rstrip("/") or text, _check_public_url, url=True
    ),
    _Setting("metrics_bind", "RELAY_METRICS_BIND", _nothing, _check_bind),
    _Setting("log_level", "RELAY_LOG_LEVEL", lambda text: text.strip().lower(), _check_log_level),
    _Setting("log_format", "RELAY_LOG_FORMAT", lambda text: text.strip().lower(), _check_log_format),
    _Setting("fast_send", "RELAY_FAST_SEND", _to_switch, _check_switch),
    _Setting("host", None, _nothing, _check_host),
    _Setting("port", None, int, lambda value: _check_port(value, allow_zero=True)),
    _Setting("workers", None, int, _positive_int(64)),
)

_FIELDS = frozenset(a.name for a in attrs.fields(Settings))
assert {s.field for s in _SETTINGS} == _FIELDS, "every field of Settings has exactly one _Setting"

#: Every environment variable relay reads, in the order of PROTOCOL.md §8.
ENV_VARIABLES: tuple[str, ...] = tuple(s.env for s in _SETTINGS if s.env is not None)

#: Variables with this prefix belong to the test suite (tests/conftest.py), not to the server.
_RESERVED_PREFIX = "RELAY_TEST_"


def _refuse_unknown(environ: Mapping[str, str]) -> None:
    unknown = sorted(
        name
        for name in environ
        if name.startswith("RELAY_") and name not in ENV_VARIABLES and not name.startswith(_RESERVED_PREFIX)
    )
    if not unknown:
        return
    first = unknown[0]
    close = difflib.get_close_matches(first, ENV_VARIABLES, n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]}?)" if close else ""
    more = f"; {len(unknown) - 1} more unknown RELAY_* variable(s)" if len(unknown) > 1 else ""
    raise ConfigError(first, f"{first}: unknown setting, refusing to ignore it{hint}{more}")
