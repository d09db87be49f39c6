"""Schemathesis against a live relay: every answer to generated requests matches ``docs/openapi.json``.

A relay serves on 127.0.0.1 from a thread of its own (:mod:`live_support`). The document is loaded
from ``docs/openapi.json`` when this module is imported (``test_openapi.py`` checks that the server
serves exactly that file): schemathesis's ``from_fixture``, which would load it from the server,
needs pytest's ``Node._nodeid``, gone in pytest 9.2.

Schemathesis generates requests for every operation, one test per operation (the examples, coverage
and fuzzing phases, positive and negative data, a fixed seed, derandomized), sends them, and fails
on any 5xx, any status code, content type, header or body the document does not give for the
operation, a method the document does not list that is not refused ``405`` with ``Allow``, malformed
data that is accepted, and a signed operation that answers without its signature.

The signed operations are signed for real (§3) by a device of a real user, so they get past ``401``:
its sibling device is sometimes the ``{device_id}`` renamed or revoked, and some enrolments carry a
real token and signature (some with a name or a key already taken), so that ``201``, ``204`` and
``409`` are checked too. A signer that was revoked or deleted is replaced by a new user's device.

Bounded: :data:`MAX_EXAMPLES` per operation and phase, the whole run within :data:`BUDGET_S` (the
test fails rather than run longer), each request within ``CALL_CAP_S``.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from live_support import CALL_CAP_S, SIGN_ME, LiveRelay, enrollment, live_relay
from schemathesis import GenerationMode

from relay import crypto

#: Examples per operation in the fuzzing phase (the coverage and examples phases add their own).
MAX_EXAMPLES = 12
#: Seed of the generation (with ``deterministic``, every run sends the same requests).
SEED = 20251124
#: The whole run must end within this many seconds (it takes a fraction of it).
BUDGET_S = 90.0
DEVICE_PATH = "/v1/devices/{device_id}"

CONFIG = {
    "seed": SEED,
    "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    "phases": {
        "examples": {"enabled": True},
        "coverage": {"enabled": True},
        "fuzzing": {"enabled": True},
        "stateful": {"enabled": False},
    },
    "checks": {
        "not_a_server_error": {"enabled": True},
        "status_code_conformance": {"enabled": True},
        "content_type_conformance": {"enabled": True},
        "response_headers_conformance": {"enabled": True},
        "response_schema_conformance": {"enabled": True},
        "negative_data_rejection": {"enabled": True},
        "unsupported_method": {"enabled": True},
        "allow_header_conformance": {"enabled": True},
        "ignored_auth": {"enabled": True},
        # Valid-looking data is refused by design: a random token is unknown, a random signature does
        # not verify, a random device id names no device. The statuses of those refusals are checked.
        "positive_data_acceptance": {"enabled": False},
        "missing_required_header": {"enabled": True},
    },
}


class Tally:
    """What the run sent and got: cases per operation, statuses per operation."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.cases = 0
        self.statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        self.tick = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def report(self) -> str:
        lines = [f"schemathesis: {self.cases} cases in {self.elapsed():.1f} s"]
        for label in sorted(self.statuses):
            counts = ", ".join(f"{status}×{n}" for status, n in sorted(self.statuses[label].items()))
            lines.append(f"  {label}: {counts}")
        return "\n".join(lines)


class SignMe:
    """Auth provider: marks the request of a signed operation for :class:`live_support.SigningAdapter`."""

    def get(self, case: schemathesis.Case, context: schemathesis.AuthContext) -> str | None:
        return SIGN_ME if context.operation.definition.raw.get("security") else None

    def set(self, case: schemathesis.Case, data: str, context: schemathesis.AuthContext) -> None:
        case.headers = {**(case.headers or {}), "Authorization": data}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRelay]:
    with live_relay(tmp_path_factory.mktemp("live-relay")) as started:
        yield started


@pytest.fixture(scope="module")
def tally(live: LiveRelay, request: pytest.FixtureRequest) -> Iterator[Tally]:
    """Counts the run; at its end, reports it and checks that the real devices and tokens took the
    signed operations past their refusals (for the operations that ran)."""
    counted = Tally()
    yield counted
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(counted.report().splitlines()[0])
    expected = {
        "POST /v1/enroll": {201, 400, 401, 409},
        "POST /v1/pairings": {201, 400, 401},
        "GET /v1/devices": {200, 400, 401},
        "PATCH /v1/devices/{device_id}": {200, 400, 401, 404},
        "DELETE /v1/devices/{device_id}": {204, 401, 404},
        "DELETE /v1/user": {200, 401},
    }
    for label, statuses in expected.items():
        if label not in counted.statuses:
            continue  # deselected
        missing = statuses - set(counted.statuses[label])
        assert not missing, f"{label} was never answered {sorted(missing)}:\n{counted.report()}"


DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
api = schemathesis.openapi.from_path(DOCUMENT, config=schemathesis.Config.from_dict(CONFIG))
api.auth(refresh_interval=None)(SignMe)


def is_positive(case: schemathesis.Case) -> bool:
    meta = case.meta
    return meta is not None and meta.generation.mode == GenerationMode.POSITIVE


def aim(case: schemathesis.Case, live: LiveRelay, tally: Tally) -> None:
    """Point some positive cases at real things: the sibling device, a real token and signature."""
    if not is_positive(case):
        return
    tally.tick += 1
    pair = live.pair or live.new_pair()
    if case.operation.path == DEVICE_PATH and tally.tick % 2 == 0:
        case.path_parameters = {**(case.path_parameters or {}), "device_id": pair.sibling.device_id}
    elif case.operation.path == "/v1/enroll" and isinstance(case.body, dict):
        name = case.body.get("name")
        if not isinstance(name, str) or tally.tick % 4 == 3:
            return
        _, token = live.new_token(pair.signer.user_id)
        key = crypto.SigningKey.generate()
        if tally.tick % 4 == 1:
            name = pair.signer.name  # 409 name_taken
        elif tally.tick % 4 == 2:
            key = pair.signer.key  # 409 key_in_use (or name_taken, checked first)
        case.body = enrollment(token, key, name)


def follow(case: schemathesis.Case, response: schemathesis.Response, live: LiveRelay) -> None:
    """Replace the pair once its signer can no longer sign, or its sibling can no longer be renamed."""
    pair = live.pair
    if pair is None:
        return
    status = response.status_code
    gone = status in (403, 410)
    gone |= case.operation.path == "/v1/user" and case.method.upper() == "DELETE" and status == 200
    gone |= case.operation.path == DEVICE_PATH and case.method.upper() == "DELETE" and status == 204
    if gone:
        live.new_pair()


@api.parametrize()
def test_every_answer_of_a_live_relay_matches_its_openapi_document(
    case: schemathesis.Case, live: LiveRelay, tally: Tally
) -> None:
    if tally.elapsed() > BUDGET_S:
        pytest.fail(f"the schemathesis run took over {BUDGET_S} s:\n{tally.report()}")
    aim(case, live, tally)
    response = case.call(base_url=live.url, session=live.session, timeout=CALL_CAP_S)
    tally.cases += 1
    tally.statuses[case.operation.label].update([response.status_code])
    follow(case, response, live)
    case.validate_response(
        response, transport_kwargs={"base_url": live.url, "session": live.session, "timeout": CALL_CAP_S}
    )
