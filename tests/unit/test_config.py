"""Settings: every RELAY_* variable of PROTOCOL.md §8 with its default, a good value and its bad values."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from relay.config import ENV_VARIABLES, ConfigError, Settings, redact_url
from relay.protocol.messages import Limits

#: PROTOCOL.md §8, in its order: variable → (Settings field, default).
TABLE: dict[str, tuple[str, object]] = {
    "RELAY_ENV": ("env", "production"),
    "RELAY_DATA_DIR": ("data_dir", Path("relay-data")),
    "RELAY_DATABASE_URL": ("database_url", None),
    "RELAY_REDIS_URL": ("redis_url", None),
    "RELAY_HANDSHAKE_TIMEOUT_MS": ("handshake_timeout_ms", 10_000),
    "RELAY_HEARTBEAT_MS": ("heartbeat_ms", 20_000),
    "RELAY_CLOCK_SKEW_MS": ("clock_skew_ms", 300_000),
    "RELAY_MAX_EVENT_BYTES": ("max_event_bytes", 65_536),
    "RELAY_MAX_FRAME_BYTES": ("max_frame_bytes", 131_072),
    "RELAY_DEFAULT_TTL_S": ("default_ttl_s", 604_800),
    "RELAY_MAX_TTL_S": ("max_ttl_s", 2_592_000),
    "RELAY_TOKEN_TTL_S": ("token_ttl_s", 900),
    "RELAY_PUBLISH_RATE": ("publish_rate", 200),
    "RELAY_PUBLISH_BURST": ("publish_burst", 400),
    "RELAY_HANDSHAKE_RATE": ("handshake_rate", 10),
    "RELAY_HANDSHAKE_BURST": ("handshake_burst", 100),
    "RELAY_MAX_INFLIGHT": ("max_inflight", 64),
    "RELAY_MAX_REPLAYS": ("max_replays", 4),
    "RELAY_MAX_DEVICES": ("max_devices", 20),
    "RELAY_MAX_STREAMS": ("max_streams", 10_000),
    "RELAY_MAX_STORED_BYTES": ("max_stored_bytes", 1_073_741_824),
    "RELAY_DRAIN_TIMEOUT_MS": ("drain_timeout_ms", 10_000),
    "RELAY_CORS_ORIGINS": ("cors_origins", ()),
    "RELAY_PUBLIC_URL": ("public_url", None),
    "RELAY_METRICS_BIND": ("metrics_bind", None),
    "RELAY_LOG_LEVEL": ("log_level", "info"),
    # Not in §8's table: additions, recorded in docs/protocol.md.
    "RELAY_LOG_FORMAT": ("log_format", "json"),
    "RELAY_FAST_SEND": ("fast_send", True),
}

INTEGER_VARIABLES = [
    name for name, (_, default) in TABLE.items() if type(default) is int  # bool is not an integer here
]

GOOD: list[tuple[str, str, object]] = [
    ("RELAY_ENV", "development", "development"),
    ("RELAY_ENV", "Production", "production"),
    ("RELAY_DATA_DIR", "/var/lib/relay", Path("/var/lib/relay")),
    (
        "RELAY_DATABASE_URL",
        "postgresql://relay:pw@db.internal:5432/relay",
        "postgresql://relay:pw@db.internal:5432/relay",
    ),
    (
        "RELAY_DATABASE_URL",
        "postgres:///relay?host=/run/postgresql",
        "postgres:///relay?host=/run/postgresql",
    ),
    ("RELAY_REDIS_URL", "redis://cache:6379/0", "redis://cache:6379/0"),
    ("RELAY_REDIS_URL", "rediss://:secret@cache.example", "rediss://:secret@cache.example"),
    ("RELAY_HANDSHAKE_TIMEOUT_MS", "5000", 5000),
    ("RELAY_HEARTBEAT_MS", " 15000 ", 15000),
    ("RELAY_CLOCK_SKEW_MS", "60000", 60000),
    ("RELAY_MAX_EVENT_BYTES", "1024", 1024),
    ("RELAY_MAX_FRAME_BYTES", "262144", 262144),
    ("RELAY_DEFAULT_TTL_S", "3600", 3600),
    ("RELAY_MAX_TTL_S", "604800", 604800),
    ("RELAY_TOKEN_TTL_S", "60", 60),
    ("RELAY_PUBLISH_RATE", "10", 10),
    ("RELAY_PUBLISH_BURST", "20", 20),
    ("RELAY_MAX_INFLIGHT", "8", 8),
    ("RELAY_MAX_REPLAYS", "1", 1),
    ("RELAY_MAX_DEVICES", "5", 5),
    ("RELAY_MAX_STREAMS", "100", 100),
    ("RELAY_MAX_STORED_BYTES", "1048576", 1_048_576),
    ("RELAY_DRAIN_TIMEOUT_MS", "30000", 30000),
    ("RELAY_CORS_ORIGINS", "https://app.example.com", ("https://app.example.com",)),
    (
        "RELAY_CORS_ORIGINS",
        "https://App.Example.com:443, http://localhost:3000,http://[::1]:80",
        ("https://app.example.com", "http://localhost:3000", "http://[::1]"),
    ),
    ("RELAY_PUBLIC_URL", "https://relay.example.com/", "https://relay.example.com"),
    ("RELAY_PUBLIC_URL", "http://10.0.0.2:8080/relay", "http://10.0.0.2:8080/relay"),
    ("RELAY_METRICS_BIND", "127.0.0.1:9100", "127.0.0.1:9100"),
    ("RELAY_METRICS_BIND", "[::1]:9100", "[::1]:9100"),
    ("RELAY_METRICS_BIND", "metrics.internal:9100", "metrics.internal:9100"),
    ("RELAY_LOG_LEVEL", "DEBUG", "debug"),
    ("RELAY_LOG_LEVEL", "warning", "warning"),
    ("RELAY_FAST_SEND", "off", False),
    ("RELAY_FAST_SEND", " ON ", True),
]

BAD: list[tuple[str, str, str]] = [
    ("RELAY_ENV", "prod", "must be 'production' or 'development'"),
    ("RELAY_DATABASE_URL", "mysql://u:hunter2@db/relay", "must be a postgresql:// or postgres:// URL"),
    ("RELAY_DATABASE_URL", "db.internal:5432", "must be a postgresql:// or postgres:// URL"),
    ("RELAY_DATABASE_URL", "postgresql://u:hunter2@db:port/relay", "is not a valid URL"),
    ("RELAY_DATABASE_URL", "postgresql://u:hunter2@[db/relay", "is not a valid URL"),
    ("RELAY_DATABASE_URL", "postgresql://db/relay#x", "fragment"),
    ("RELAY_DATABASE_URL", "postgresql://db/ relay", "white space"),
    ("RELAY_REDIS_URL", "http://cache:6379", "must be a redis:// or rediss:// URL"),
    ("RELAY_REDIS_URL", "redis://:hunter2@cache:99999", "is not a valid URL"),
    ("RELAY_REDIS_URL", "redis://cache/zero", "database number"),
    ("RELAY_REDIS_URL", "redis://cache/0#x", "fragment"),
    ("RELAY_CORS_ORIGINS", "https://a.example,", "without empty items"),
    ("RELAY_CORS_ORIGINS", "*", "is not an origin"),
    ("RELAY_CORS_ORIGINS", "https://a.example/", "is not an origin"),
    ("RELAY_CORS_ORIGINS", "https://a.example/app", "is not an origin"),
    ("RELAY_CORS_ORIGINS", "ftp://a.example", "is not an origin"),
    ("RELAY_CORS_ORIGINS", "https://user@a.example", "is not an origin"),
    ("RELAY_PUBLIC_URL", "relay.example.com", "must be an http:// or https:// URL with a host"),
    ("RELAY_PUBLIC_URL", "https://", "must be an http:// or https:// URL with a host"),
    ("RELAY_PUBLIC_URL", "https://relay.example.com/?x=1", "without ?query or #fragment"),
    (
        "RELAY_PUBLIC_URL",
        "https://admin:hunter2@relay.example.com",
        "must not contain a user name or password",
    ),
    ("RELAY_PUBLIC_URL", "https://relay.example.com:0x50", "is not a valid URL"),
    ("RELAY_METRICS_BIND", "9100", "must be host:port"),
    ("RELAY_METRICS_BIND", ":9100", "must be host:port"),
    ("RELAY_METRICS_BIND", "127.0.0.1:", "must be host:port"),
    ("RELAY_METRICS_BIND", "127.0.0.1:70000", "port number in 1..65535"),
    ("RELAY_METRICS_BIND", "::1:9100", "in brackets"),
    ("RELAY_METRICS_BIND", "[nope]:9100", "valid IPv6 address"),
    ("RELAY_METRICS_BIND", "bad host:9100", "host name or an IP address"),
    ("RELAY_LOG_LEVEL", "verbose", "must be one of debug, info, warning, error, critical"),
    ("RELAY_FAST_SEND", "maybe", "must be on or off"),
]


def one_line_error(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(environ)
    message = str(caught.value)
    assert "\n" not in message
    assert "\r" not in message
    return message


def test_the_variables_are_those_of_protocol_section_8_and_the_documented_additions() -> None:
    assert tuple(TABLE) == ENV_VARIABLES


@pytest.mark.parametrize(("variable", "field", "default"), [(k, *v) for k, v in TABLE.items()])
def test_an_unset_variable_takes_its_default(variable: str, field: str, default: object) -> None:
    assert getattr(Settings.from_env({}), field) == default


@pytest.mark.parametrize("variable", list(TABLE))
def test_an_empty_variable_is_the_same_as_an_unset_one(variable: str) -> None:
    assert Settings.from_env({variable: ""}) == Settings()


@pytest.mark.parametrize(("variable", "text", "expected"), GOOD)
def test_a_good_value_is_read(variable: str, text: str, expected: object) -> None:
    field = TABLE[variable][0]
    assert getattr(Settings.from_env({variable: text}), field) == expected


@pytest.mark.parametrize(("variable", "text", "problem"), BAD)
def test_a_bad_value_is_refused_with_one_line_naming_the_variable(
    variable: str, text: str, problem: str
) -> None:
    message = one_line_error({variable: text})
    assert message.startswith(f"{variable}=")
    assert problem in message
    assert "hunter2" not in message


@pytest.mark.parametrize("variable", INTEGER_VARIABLES)
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ten", "must be an integer"),
        ("1.5", "must be an integer"),
        ("1e3", "must be an integer"),
        ("0x10", "must be an integer"),
        ("1_000", "must be an integer"),
        ("0", "must be a positive integer"),
        ("-5", "must be a positive integer"),
        (str(2**53), "must be at most"),
    ],
)
def test_an_integer_variable_refuses_anything_but_a_positive_integer(
    variable: str, text: str, problem: str
) -> None:
    message = one_line_error({variable: text})
    assert message.startswith(f"{variable}=")
    assert problem in message


@pytest.mark.parametrize("variable", ["RELAY_DEFAULT_TTL_S", "RELAY_MAX_TTL_S", "RELAY_TOKEN_TTL_S"])
def test_seconds_stay_exact_in_milliseconds(variable: str) -> None:
    assert "must be at most 9007199254740" in one_line_error({variable: str(2**53 // 1000 + 1)})


def test_the_frame_limit_must_leave_room_for_the_largest_event() -> None:
    message = one_line_error({"RELAY_MAX_EVENT_BYTES": "100000", "RELAY_MAX_FRAME_BYTES": "104095"})
    assert message == "RELAY_MAX_FRAME_BYTES=104095: must be at least RELAY_MAX_EVENT_BYTES + 4096 = 104096"
    settings = Settings.from_env({"RELAY_MAX_EVENT_BYTES": "100000", "RELAY_MAX_FRAME_BYTES": "104096"})
    assert settings.max_frame_bytes == 104096


def test_the_default_ttl_may_not_exceed_the_maximum() -> None:
    message = one_line_error({"RELAY_DEFAULT_TTL_S": "7200", "RELAY_MAX_TTL_S": "3600"})
    assert message == "RELAY_DEFAULT_TTL_S=7200: must not exceed RELAY_MAX_TTL_S (3600)"


def test_a_typo_in_a_variable_name_is_refused_with_a_suggestion() -> None:
    message = one_line_error({"RELAY_HEARTBEAT_SM": "1000"})
    assert (
        message
        == "RELAY_HEARTBEAT_SM: unknown setting, refusing to ignore it (did you mean RELAY_HEARTBEAT_MS?)"
    )


def test_several_unknown_variables_are_counted_in_the_one_line() -> None:
    message = one_line_error({"RELAY_ZZZ": "1", "RELAY_YYY": "2"})
    assert message == "RELAY_YYY: unknown setting, refusing to ignore it; 1 more unknown RELAY_* variable(s)"


def test_variables_outside_relays_namespace_and_the_test_suites_are_ignored() -> None:
    environ = {"RELAY_TEST_POSTGRES_URL": "postgresql://x/y", "PATH": "/bin", "relay_heartbeat_ms": "x"}
    assert Settings.from_env(environ) == Settings()


def test_a_long_bad_value_is_shortened_and_control_characters_escaped() -> None:
    message = one_line_error({"RELAY_ENV": "x" * 200 + "\nmore"})
    assert len(message) < 160
    assert "..." in message


def test_the_error_names_the_variable_in_its_attributes() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"RELAY_HEARTBEAT_MS": "0"})
    assert caught.value.name == "RELAY_HEARTBEAT_MS"
    assert caught.value.problem == str(caught.value)


# --- flags of `relay serve` (overrides) --------------------------------------------------------------


def test_flags_override_and_none_means_not_given() -> None:
    settings = Settings.from_env({}, host="0.0.0.0", port=9000, workers=None)
    assert (settings.host, settings.port, settings.workers) == ("0.0.0.0", 9000, 1)
    assert (Settings().host, Settings().port) == ("127.0.0.1", 8080)


def test_an_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        Settings.from_env({}, hots="0.0.0.0")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"port": 65536}, "--port=65536: must be a port number in 0..65535"),
        ({"port": -1}, "--port=-1: must be a port number in 0..65535"),
        ({"host": "not a host"}, "--host='not a host': must be a host name or an IP address"),
        ({"host": "-bad.example"}, "--host='-bad.example': must be a host name or an IP address"),
        ({"workers": 0}, "--workers=0: must be a positive integer (at least 1)"),
    ],
)
def test_a_bad_flag_is_refused_with_one_line_naming_the_flag(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({}, **overrides)
    assert str(caught.value) == message


@pytest.mark.parametrize("host", ["::", "::1", "0.0.0.0", "localhost", "relay.example.com."])
def test_hosts_may_be_names_or_addresses(host: str) -> None:
    assert Settings(host=host).host == host


def test_more_than_one_worker_needs_a_shared_bus() -> None:
    with pytest.raises(ConfigError, match=r"^--workers=2: more than one worker needs RELAY_REDIS_URL"):
        Settings.from_env({}, workers=2)
    assert Settings.from_env({"RELAY_REDIS_URL": "redis://cache"}, workers=2).workers == 2


# --- direct construction is validated the same way -----------------------------------------------------


def test_direct_construction_and_evolve_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"^RELAY_HEARTBEAT_MS=0: "):
        Settings(heartbeat_ms=0)
    with pytest.raises(ConfigError, match=r"^RELAY_CORS_ORIGINS="):
        attrs.evolve(Settings(), cors_origins=("HTTPS://A.example",))
    with pytest.raises(ConfigError, match=r"^RELAY_CORS_ORIGINS="):
        Settings(cors_origins=["https://a.example"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^RELAY_DATA_DIR="):
        Settings(data_dir="relay-data")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^RELAY_HEARTBEAT_MS="):
        Settings(heartbeat_ms=True)
    with pytest.raises(ConfigError, match=r"^--host="):
        Settings(host=8080)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^RELAY_METRICS_BIND="):
        Settings(metrics_bind=9100)  # type: ignore[arg-type]


def test_settings_are_frozen() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]


# --- derived values ------------------------------------------------------------------------------------


def test_limits_carry_the_configured_values() -> None:
    settings = Settings.from_env(
        {
            "RELAY_MAX_EVENT_BYTES": "1000",
            "RELAY_MAX_FRAME_BYTES": "6000",
            "RELAY_CLOCK_SKEW_MS": "1000",
            "RELAY_MAX_TTL_S": "100",
            "RELAY_DEFAULT_TTL_S": "50",
            "RELAY_PUBLISH_RATE": "3",
            "RELAY_PUBLISH_BURST": "6",
            "RELAY_MAX_REPLAYS": "2",
            "RELAY_MAX_INFLIGHT": "7",
        }
    )
    assert settings.limits == Limits(
        max_event_bytes=1000,
        max_frame_bytes=6000,
        replay_page=100,
        clock_skew_ms=1000,
        max_ttl_s=100,
        default_ttl_s=50,
        publish_rate=3,
        publish_burst=6,
        max_replays=2,
        max_inflight=7,
    )
    assert Settings().limits == Limits()


def test_production_is_the_default_and_development_is_explicit() -> None:
    assert Settings().production
    assert not Settings.from_env({"RELAY_ENV": "development"}).production


@pytest.mark.parametrize(
    ("level", "number"), [("debug", 10), ("info", 20), ("warning", 30), ("critical", 50)]
)
def test_log_level_number(level: str, number: int) -> None:
    assert Settings(log_level=level).log_level_number == number


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://relay:hunter2@db/relay", "postgresql://***@db/relay"),
        ("postgresql://relay:hun/ter@2@db/relay", "postgresql://***@db/relay"),
        ("relay:hunter2@db/relay", "***@db/relay"),
        (
            "postgresql://db/relay?user=relay&password=hunter2&sslmode=require",
            "postgresql://db/relay?user=relay&password=***&sslmode=require",
        ),
        (
            "postgresql://db/relay?sslpassword=hunter2&sslmode=require",
            "postgresql://db/relay?sslpassword=***&sslmode=require",
        ),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
    ],
)
def test_redact_url_hides_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_settings_never_show_a_url_password_in_repr_or_str() -> None:
    settings = Settings.from_env(
        {
            "RELAY_DATABASE_URL": "postgresql://relay:hunter2@db/relay",
            "RELAY_REDIS_URL": "redis://:sekrit@cache:6379/0",
        }
    )
    assert settings.database_url == "postgresql://relay:hunter2@db/relay"
    for text in (repr(settings), str(settings)):
        assert "hunter2" not in text
        assert "sekrit" not in text


def test_an_origin_with_user_info_is_refused_without_showing_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"RELAY_CORS_ORIGINS": "https://u:secretpw@app.example.com"})
    assert "RELAY_CORS_ORIGINS" in str(info.value)
    assert "secretpw" not in str(info.value)
