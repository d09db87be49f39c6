"""Hostile HTTP: random requests from hypothesis, and a catalogue of raw abuse (item 2c).

Requests are written as raw bytes on a TCP stream (nothing a client library would tidy up): random
methods, paths (percent-encoded, dot segments, invalid UTF-8, raw non-ASCII bytes), queries, headers
(garbage ``Authorization``, huge values, bad ``Content-Length``) and bodies (bad JSON, random bytes,
1 MB). Whatever is sent:

- no answer is a 5xx (the server is healthy, so not even 503);
- an error the app answers is ``{"error": {"code", "message", "request_id"}}`` with a safe message and the
  ``request_id`` of ``X-Request-ID``; every ``401`` names the scheme in ``WWW-Authenticate``;
- nothing succeeds without a valid signature but the public reads (``/v1/server``, ``/healthz``,
  ``/readyz``, ``/metrics``, ``/openapi.json``) and ``OPTIONS``;
- no answer takes longer than the cap, no header shows the server's software, and a bystander user's
  session receives its events throughout.

Schemathesis runs against the OpenAPI document elsewhere; this is the part no schema describes.
"""

from __future__ import annotations

import collections
import json
import posixpath
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import h2.config
import h2.connection
import h2.events
import trio
from hostile import HOSTILE_STRINGS, json_values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from security_support import (
    CASES,
    STEP_S,
    Bystander,
    LiveServer,
    RawAnswer,
    bystander,
    check_http_answer,
    raw_http,
    secure_server,
    server_thread,
    upgrade_request,
)

from relay import crypto
from relay.client import DeviceCredentials

RANDOM_REQUESTS = 250
#: What may answer 2xx without a signature: public reads, and OPTIONS (which is never signed).
PUBLIC_PATHS = frozenset({b"/v1/server", b"/healthz", b"/readyz", b"/metrics", b"/openapi.json"})
OUTCOMES: collections.Counter[str] = collections.Counter()


def build(
    method: bytes,
    target: bytes,
    *,
    headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
    body: bytes = b"",
    host: bytes = b"127.0.0.1",
    content_length: bool = True,
) -> bytes:
    """One HTTP/1.1 request, exactly these bytes (``Connection: close``)."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + host, b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if content_length and (body or method in (b"POST", b"PATCH", b"PUT")):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def signature(
    server: LiveServer, creds: DeviceCredentials, method: bytes, target: bytes, body: bytes
) -> bytes:
    """A valid ``Authorization`` value of ``creds`` for exactly this request."""
    ts = server.now_ms()
    nonce = crypto.random_nonce(crypto.HTTP_NONCE_BYTES)
    signed = crypto.http_request_string(
        server.server_key, creds.device_id, method.decode(), target.decode(), ts, nonce, body
    )
    sig = creds.key.sign(signed)
    return f"Relay-Ed25519 device={creds.device_id}, ts={ts}, nonce={nonce}, sig={sig}".encode()


def check(
    answer: RawAnswer | None, *, method: bytes, target: bytes, signed: bool, request_id: bytes | None
) -> str:
    """The checks of the module docstring; returns the status, for the test's output."""
    assert answer is not None, "the server closed the connection without answering"
    check_http_answer(answer)
    assert "server" not in answer.headers, answer.headers  # no software banner
    path = _normal(unquote_to_bytes(target.split(b"?", 1)[0]))
    if 200 <= answer.status < 300 and not signed:
        assert method == b"OPTIONS" or (method in (b"GET", b"HEAD") and path in PUBLIC_PATHS), (
            method,
            target,
        )
    if answer.status == 401:
        assert answer.headers.get("www-authenticate") == "Relay-Ed25519", answer
        if method != b"HEAD":
            error = answer.json()["error"]
            assert set(error) == {"code", "message", "server_time", "request_id"}, error
            assert (error["code"], error["message"]) == ("unauthorized", "Unauthorized"), error
    if (
        request_id is not None
        and "x-request-id" in answer.headers
        and re.fullmatch(rb"[A-Za-z0-9._-]{1,128}", request_id)  # §6: a valid one is echoed
    ):
        assert answer.headers["x-request-id"] == request_id.decode(), (request_id, answer.headers)
    return str(answer.status)


def _normal(path: bytes) -> bytes:
    """``path`` with repeated slashes merged and dot segments resolved, as a router may see it."""
    return posixpath.normpath(re.sub(rb"/+", b"/", path)) if path.startswith(b"/") else path


# --- random requests ---------------------------------------------------------------------------------

ROUTES = [
    b"/v1/server",
    b"/v1/enroll",
    b"/v1/pairings",
    b"/v1/devices",
    b"/v1/devices/0f8fad5b-d9cb-469f-a165-70867728950e",
    b"/v1/devices/{own}",
    b"/v1/user",
    b"/v1/ws",
    b"/healthz",
    b"/readyz",
    b"/metrics",
    b"/openapi.json",
    b"/",
    b"/v2/devices",
]
METHODS = [b"GET", b"POST", b"PATCH", b"DELETE", b"PUT", b"HEAD", b"OPTIONS", b"TRACE", b"CONNECT", b"BREW"]


@st.composite
def paths(draw: st.DrawFn) -> bytes:
    path = draw(st.sampled_from(ROUTES))
    how = draw(st.sampled_from(["as is", "as is", "escaped", "dots", "slashes", "segment", "bytes", "upper"]))
    if how == "escaped":  # percent-encode some characters: routed decoded, signed as sent
        text = path.decode()
        index = draw(st.integers(min_value=1, max_value=max(1, len(text) - 1)))
        path = (text[:index] + quote(text[index:], safe="") if index < len(text) else text).encode()
    elif how == "dots":
        path = b"/v1/../v1/./" + path.lstrip(b"/")
    elif how == "slashes":
        path = path.replace(b"/", b"//")
    elif how == "segment":
        segment = draw(st.one_of(st.text(max_size=30), st.sampled_from(HOSTILE_STRINGS)))
        path = path + b"/" + quote(segment, safe="").encode()
    elif how == "bytes":  # raw non-ASCII and invalid UTF-8 in the request line, or escaped
        raw = draw(st.binary(min_size=1, max_size=8).filter(lambda b: not set(b) & set(b"\r\n ?#")))
        path = path + b"/" + (raw if draw(st.booleans()) else quote(raw, safe="").encode())
    elif how == "upper":
        path = path.upper()
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        pairs = draw(
            st.lists(
                st.tuples(st.sampled_from(["revoked", "a", "", "revoked[]"]), st.text(max_size=10)),
                max_size=3,
            )
        )
        path += b"?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs).encode()
    return path


@st.composite
def authorizations(draw: st.DrawFn) -> bytes | None:
    """``Authorization`` values: none, garbage, the right shape with wrong values, mangled spellings."""
    kind = draw(st.sampled_from(["none", "garbage", "shaped", "mangled", "signed", "signed"]))
    if kind == "none":
        return None
    if kind == "garbage":
        return (
            draw(st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode)))
            .replace(b"\r", b"")
            .replace(b"\n", b"")
        )
    device = draw(st.one_of(st.uuids().map(str), st.sampled_from(HOSTILE_STRINGS)))
    ts = draw(st.one_of(st.integers(min_value=0, max_value=2**64), st.sampled_from(["", "-1", "1e3", "01"])))
    nonce = draw(st.binary(max_size=20).map(crypto.b64encode))
    sig = draw(st.binary(min_size=60, max_size=68).map(crypto.b64encode))
    value = f"Relay-Ed25519 device={device}, ts={ts}, nonce={nonce}, sig={sig}"
    if kind == "mangled":
        value = draw(
            st.sampled_from(
                [
                    value.replace(", ", ","),
                    value.replace("Relay-Ed25519 ", "Relay-Ed25519  "),
                    value + ", ",
                    value + ", extra=1",
                    value.upper(),
                    value.replace("device=", 'device="') + '"',
                    "Bearer " + value,
                    value.replace("Relay-Ed25519", "relay-ed25519"),
                ]
            )
        )
    if kind == "signed":
        return b"{signed}"  # filled in by the test with a real signature of the request
    return value.encode("utf-8", "surrogatepass").replace(b"\r", b"").replace(b"\n", b"")


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["empty", "json", "json", "object", "bytes", "bad json", "big"]))
    if kind == "empty":
        return b""
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "object":  # the members the endpoints read, with hostile values
        members = draw(
            st.dictionaries(
                st.sampled_from(["token", "public_key", "name", "sig", "x"]), json_values, max_size=5
            )
        )
        return json.dumps(members).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "bad json":
        return draw(st.sampled_from([b"{", b'{"a":1,"a":2}', b"\xef\xbb\xbf{}", b"{'a': 1}", b'{"a": NaN}']))
    return b"{" + b'"a": "' + b"x" * draw(st.sampled_from([131_060, 131_100, 1 << 20])) + b'"}'


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    headers: list[tuple[bytes, bytes]] = []
    if draw(st.booleans()):
        headers.append(
            (b"Content-Type", draw(st.sampled_from([b"application/json", b"text/plain", b"\xff"])))
        )
    request_id = None
    if draw(st.booleans()):
        request_id = draw(st.one_of(st.text(max_size=140), st.sampled_from(["abc", "a" * 128, "a" * 129])))
        request_id = request_id.encode("utf-8", "surrogatepass").replace(b"\r", b"").replace(b"\n", b"")
        headers.append((b"X-Request-ID", request_id))
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        headers.append((draw(st.sampled_from([b"X-A", b"Cookie", b"Origin", b"Accept"])), b"v" * 100))
    return {
        "method": draw(st.sampled_from(METHODS)),
        "target": draw(paths()),
        "authorization": draw(authorizations()),
        "headers": headers,
        "request_id": request_id,
        "body": draw(bodies()),
    }


async def send_random(server: LiveServer, creds: DeviceCredentials, request: dict[str, Any]) -> None:
    method: bytes = request["method"]
    target: bytes = request["target"].replace(b"{own}", creds.device_id.encode())
    body: bytes = request["body"]
    headers = list(request["headers"])
    authorization = request["authorization"]
    signed = False
    if authorization == b"{signed}":
        destructive = method == b"DELETE" and (b"/v1/user" in target or creds.device_id.encode() in target)
        if destructive or not target.isascii():
            authorization = None  # never delete the fuzzed device or its user; only ASCII targets are signed
        else:
            authorization = signature(server, creds, method, target, body)
            signed = True
    if authorization is not None:
        headers.append((b"Authorization", authorization))
    with trio.fail_after(STEP_S):
        answer = await raw_http(server, build(method, target, headers=headers, body=body))
    status = check(answer, method=method, target=target, signed=signed, request_id=request["request_id"])
    OUTCOMES[f"{'signed' if signed else 'unsigned'} {status}"] += 1


def test_random_hostile_requests_never_get_a_5xx_an_unsafe_error_or_anything_unsigned(data_dir: Path) -> None:
    with server_thread(data_dir) as portal:
        watcher = Bystander(portal.server)
        portal.start(watcher.run)
        creds = portal.run(portal.server.enroll, "fuzzed")

        @settings(
            max_examples=RANDOM_REQUESTS,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.filter_too_much,
            ],
        )
        @given(request=requests())
        def exchange(request: dict[str, Any]) -> None:
            CASES["random HTTP requests (hypothesis)"] += 1
            try:
                portal.run(send_random, portal.server, creds, request)
            except (
                AssertionError,
                trio.TooSlowError,
            ) as exc:  # name the request (hypothesis shows bytes badly)
                raise AssertionError(f"{exc!r} for {_shown(request)}") from exc

        exchange()
        portal.run(watcher.verify)
        print(watcher.summary(), sorted(OUTCOMES.items()))


def _shown(request: dict[str, Any]) -> str:
    shown = {
        key: (value[:300] + b"..." if isinstance(value, bytes) and len(value) > 300 else value)
        for key, value in request.items()
    }
    return repr(shown)


# --- a catalogue of raw abuse ------------------------------------------------------------------------


def catalogue(server: LiveServer, creds: DeviceCredentials) -> dict[str, tuple[bytes, set[int]]]:
    """name → (the raw request, the statuses it may get)."""
    good_auth = signature(server, creds, b"GET", b"/v1/devices", b"")
    host = f"127.0.0.1:{server.port}".encode()
    enroll = b"/v1/enroll"
    valid_shape = (
        b"Relay-Ed25519 device="
        + creds.device_id.encode()
        + b", ts="
        + str(server.now_ms()).encode()
        + b", nonce="
        + b"A" * 22
        + b", sig="
        + b"A" * 86
    )

    def get_devices(authorization: bytes) -> bytes:
        return build(b"GET", b"/v1/devices", headers=[(b"Authorization", authorization)], host=host)

    cases: dict[str, tuple[bytes, set[int]]] = {
        "no Authorization": (build(b"GET", b"/v1/devices", host=host), {401}),
        "an empty Authorization": (get_devices(b""), {401}),
        "Authorization of 8 KB of garbage": (get_devices(b"x" * 8192), {401}),
        "Authorization of invalid UTF-8": (get_devices(b"Relay-Ed25519 \xff\xfe\xfd"), {401}),
        "Authorization with a NUL": (get_devices(b"Relay-Ed25519 device=\x00"), {400, 401}),
        "the right shape, a signature of zeros": (get_devices(valid_shape), {401}),
        "a valid header twice": (
            build(b"GET", b"/v1/devices", headers=[(b"Authorization", good_auth)] * 2, host=host),
            {401},
        ),
        "a valid request": (get_devices(good_auth), {200}),
        "the same request replayed (its nonce again)": (get_devices(good_auth), {401}),
        "the valid header's signature on another path": (
            build(b"GET", b"/v1/devices?revoked=true", headers=[(b"Authorization", good_auth)], host=host),
            {401},
        ),
        "Basic credentials": (get_devices(b"Basic YWRtaW46YWRtaW4="), {401}),
        "Bearer token": (get_devices(b"Bearer " + b"A" * 43), {401}),
        "a 100 KB header": (build(b"GET", b"/healthz", headers=[(b"X-A", b"a" * 100_000)], host=host), {431}),
        "a 1 MB header": (build(b"GET", b"/healthz", headers=[(b"X-A", b"a" * (1 << 20))], host=host), {431}),
        "10,000 headers": (
            build(b"GET", b"/healthz", headers=[(b"X-A", b"a")] * 10_000, host=host),
            {200, 431},
        ),
        "a 100 KB path": (build(b"GET", b"/" + b"a" * 100_000, host=host), {404, 414, 431}),
        "invalid UTF-8 in the path": (build(b"GET", b"/v1/\xff\xfe", host=host), {400, 404}),
        "escaped invalid UTF-8 in the path": (build(b"GET", b"/v1/devices/%ff%fe", host=host), {404}),
        "an escaped NUL in the path": (build(b"GET", b"/v1/dev%00ices", host=host), {404}),
        "dot segments": (build(b"GET", b"/v1/../../../etc/passwd", host=host), {400, 404}),
        "an upper-case device id": (
            build(b"DELETE", b"/v1/devices/" + creds.device_id.upper().encode(), host=host),
            {404},
        ),
        "a garbage request line": (b"\x00\x01garbage\r\n\r\n", {400}),
        "HTTP/0.9": (b"GET /healthz\r\n\r\n", {400}),
        "no Host": (b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", {400}),
        "two Hosts": (
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
            {200, 400},
        ),
        "an unknown method": (build(b"BREW", b"/v1/devices", host=host), {405}),
        "bad JSON": (build(b"POST", enroll, body=b'{"token":', host=host), {400}),
        "a repeated member": (build(b"POST", enroll, body=b'{"token":"a","token":"b"}', host=host), {400}),
        "a byte order mark": (build(b"POST", enroll, body=b"\xef\xbb\xbf{}", host=host), {400}),
        "invalid UTF-8 in the body": (build(b"POST", enroll, body=b'{"name":"\xff"}', host=host), {400}),
        "1e400 in the body": (build(b"POST", enroll, body=b'{"name":1e400}', host=host), {400}),
        "nesting 10,000 deep": (build(b"POST", enroll, body=b"[" * 10_000 + b"]" * 10_000, host=host), {400}),
        "a 1 MB body": (build(b"POST", enroll, body=b"a" * (1 << 20), host=host), {413}),
        "a 1 MB chunked body": (
            b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + b"100000\r\n"
            + b"a" * (1 << 20)
            + b"\r\n0\r\n\r\n",
            {413},
        ),
        "a 1 MB signed body": (
            build(
                b"POST",
                b"/v1/pairings",
                body=b"a" * (1 << 20),
                headers=[(b"Authorization", valid_shape)],
                host=host,
            ),
            {401, 413},
        ),
        "a Content-Length of 10^20": (
            build(
                b"POST",
                enroll,
                body=b"{}",
                headers=[(b"Content-Length", b"1" + b"0" * 20)],
                content_length=False,
            ),
            {400, 413},
        ),
        "a negative Content-Length": (
            build(b"POST", enroll, body=b"{}", headers=[(b"Content-Length", b"-1")], content_length=False),
            {400},
        ),
        "Content-Length and Transfer-Encoding": (
            b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n0\r\n\r\n",
            {400},
        ),
        "two Content-Lengths": (
            b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n"
            b"Connection: close\r\n\r\n{}",
            {400},
        ),
        "a header folded over two lines": (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\nConnection: close\r\n\r\n",
            {200, 400},
        ),
        "a bare LF": (b"GET /healthz HTTP/1.1\nHost: x\nConnection: close\n\n", {200, 400}),
        "a space before the colon": (
            b"GET /healthz HTTP/1.1\r\nHost : x\r\nConnection: close\r\n\r\n",
            {400},
        ),
        "an upgrade to WebSocket elsewhere": (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            {400, 404},
        ),
        "a WebSocket upgrade of another version": (
            b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: x\r\nSec-WebSocket-Version: 99\r\n\r\n",
            {400, 426},
        ),
        "a plain GET of the WebSocket endpoint": (build(b"GET", b"/v1/ws", host=host), {400}),
        "an X-Request-ID of 10 KB": (
            build(b"GET", b"/healthz", headers=[(b"X-Request-ID", b"a" * 10_000)]),
            {200},
        ),
        "an X-Request-ID with a script": (
            build(b"GET", b"/nowhere", headers=[(b"X-Request-ID", b"<script>alert(1)</script>")]),
            {404},
        ),
        "an Origin of another site": (
            build(b"GET", b"/v1/server", headers=[(b"Origin", b"https://evil.example")]),
            {200},
        ),
    }
    return cases


async def test_raw_abuse_of_the_http_layer_is_refused_without_a_5xx_or_a_leak(server: LiveServer) -> None:
    creds = await server.enroll("abused")
    statuses: collections.Counter[str] = collections.Counter()
    async with bystander(server):
        for name, (request, allowed) in catalogue(server, creds).items():
            with trio.fail_after(STEP_S):
                answer = await raw_http(server, request)
            assert answer is not None, name
            assert answer.status in allowed, (name, answer)
            method = request.split(b" ", 1)[0]
            target = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b"/"
            check(answer, method=method, target=target, signed=name == "a valid request", request_id=None)
            if "x-request-id" not in answer.headers:
                statuses[f"{answer.status} from Hypercorn, empty body"] += 1
                assert answer.body == b"", (name, answer)
            else:
                statuses[f"{answer.status} from the app"] += 1
            CASES["hand-made HTTP abuse cases"] += 1
        with trio.fail_after(STEP_S):  # the server still answers properly signed requests
            answer = await raw_http(
                server,
                build(
                    b"GET",
                    b"/v1/devices",
                    headers=[(b"Authorization", signature(server, creds, b"GET", b"/v1/devices", b""))],
                ),
            )
        assert answer is not None, answer
        assert answer.status == 200, answer
        assert [d["device_id"] for d in answer.json()["devices"]] == [creds.device_id]
    print(sorted(statuses.items()))


# --- HTTP/2 ------------------------------------------------------------------------------------------


async def h2_exchange(server: LiveServer, requests: list[tuple[str, str]], *, resets: int = 0) -> list[Any]:
    """Speak HTTP/2 with prior knowledge (cleartext): ``resets`` streams opened and reset at once (the
    "rapid reset" flood), then ``requests`` (method, path); the statuses and bodies, in order, or the
    GOAWAY's error code if the server ended the connection."""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    stream = await trio.open_tcp_stream(server.host, server.port)
    try:
        for _ in range(resets):
            stream_id = connection.get_next_available_stream_id()
            connection.send_headers(stream_id, _h2_headers(server, "GET", "/healthz"))
            connection.reset_stream(stream_id)
        wanted: dict[int, int] = {}
        for index, (method, path) in enumerate(requests):
            stream_id = connection.get_next_available_stream_id()
            connection.send_headers(stream_id, _h2_headers(server, method, path), end_stream=True)
            wanted[stream_id] = index
        await stream.send_all(connection.data_to_send())
        answers: list[Any] = [None] * len(requests)
        statuses: dict[int, int] = {}
        bodies: dict[int, bytes] = collections.defaultdict(bytes)
        while any(answer is None for answer in answers):
            data = await stream.receive_some(65536)
            if not data:
                break
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    statuses[event.stream_id] = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id in wanted:
                    answers[wanted[event.stream_id]] = (statuses[event.stream_id], bodies[event.stream_id])
                elif isinstance(event, h2.events.StreamReset) and event.stream_id in wanted:
                    answers[wanted[event.stream_id]] = ("reset", event.error_code)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return [("goaway", event.error_code, event.last_stream_id)]
            await stream.send_all(connection.data_to_send())
        return answers
    finally:
        await trio.aclose_forcefully(stream)


def _h2_headers(server: LiveServer, method: str, path: str) -> list[tuple[str, str]]:
    return [
        (":method", method),
        (":path", path),
        (":scheme", "http"),
        (":authority", f"127.0.0.1:{server.port}"),
    ]


async def test_http2_with_prior_knowledge_gets_the_same_answers_and_survives_a_rapid_reset_flood(
    server: LiveServer,
) -> None:
    # Hypercorn answers a connection that opens with the HTTP/2 preface in HTTP/2 (h2c): the same app,
    # the same refusals. RESETS streams opened and reset at once (CVE-2023-44487's pattern) cost CPU
    # (measured and printed; Hypercorn ends such a connection with GOAWAY after keep_alive_max_requests,
    # 1,000) but nothing lasting: a new connection is answered and the bystander is undisturbed.
    async with bystander(server):
        with trio.fail_after(STEP_S):
            answers = await h2_exchange(
                server, [("GET", "/healthz"), ("GET", "/v1/devices"), ("BREW", "/v1/user")]
            )
        assert [status for status, _ in answers] == [200, 401, 405]
        assert json.loads(answers[1][1])["error"]["message"] == "Unauthorized"
        with trio.fail_after(STEP_S):
            started, cpu = trio.current_time(), time.process_time()
            flooded = await h2_exchange(server, [("GET", "/healthz")], resets=RESETS)
        wall, cpu = trio.current_time() - started, time.process_time() - cpu
        print(
            f"rapid reset of {RESETS} streams: {flooded}, {wall:.1f} s,"
            f" {cpu:.1f} s of CPU (server and client)"
        )
        assert flooded[0] == (200, b'{"status":"ok"}') or flooded[0][0] in ("goaway", "reset"), flooded
        with trio.fail_after(STEP_S):
            again = await h2_exchange(server, [("GET", "/healthz")])
        assert again == [(200, b'{"status":"ok"}')]
    CASES[f"HTTP/2 exchanges (one with {RESETS} reset streams)"] += 3


# --- connections the server must close ----------------------------------------------------------------

#: Hypercorn's keep_alive_timeout (relay does not change it): an idle connection is closed after it.
KEEP_ALIVE_TIMEOUT_S = 5.0
#: Streams opened and reset at once on one HTTP/2 connection (more than Hypercorn's 1,000 per connection).
RESETS = 1200
CONNECTIONS_PER_KIND = 40


async def until_closed_by_server(server: LiveServer, request: bytes) -> tuple[float, bytes]:
    """Send ``request``, then read until the server closes; how long it took, and what came."""
    stream = await trio.open_tcp_stream(server.host, server.port)
    started = trio.current_time()
    data = b""
    try:
        if request:
            await stream.send_all(request)
        while chunk := await stream.receive_some(65536):
            data += chunk
    except trio.BrokenResourceError:
        pass
    finally:
        await trio.aclose_forcefully(stream)
    return trio.current_time() - started, data


async def test_the_server_closes_connections_that_asked_for_it_or_went_quiet(server: LiveServer) -> None:
    # Until relay/gateway/asgi.py shielded the end of each answer, Quart-Trio cancelled Hypercorn's
    # close: every HTTP connection stayed open until the client closed it, so a client could hold any
    # number of sockets with one request each (see docs/reliability.md).
    kinds = {
        "Connection: close": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 2.0),
        "HTTP/1.0": (b"GET /healthz HTTP/1.0\r\n\r\n", 2.0),
        "an error, Connection: close": (
            b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            2.0,
        ),
        "one keep-alive request, then silence": (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", None),
        "nothing at all": (b"", None),
    }
    results: dict[str, list[tuple[float, bytes]]] = collections.defaultdict(list)

    async def one(kind: str, request: bytes) -> None:
        results[kind].append(await until_closed_by_server(server, request))

    with trio.fail_after(KEEP_ALIVE_TIMEOUT_S + STEP_S):
        async with trio.open_nursery() as nursery:
            for kind, (request, _) in kinds.items():
                for _ in range(CONNECTIONS_PER_KIND):
                    nursery.start_soon(one, kind, request)
    for kind, (request, bound) in kinds.items():
        times = [elapsed for elapsed, _ in results[kind]]
        limit = bound if bound is not None else KEEP_ALIVE_TIMEOUT_S + 3.0
        assert len(times) == CONNECTIONS_PER_KIND, (kind, max(times))
        assert max(times) < limit, (kind, max(times))
        if request:
            assert all(data.startswith(b"HTTP/1.") for _, data in results[kind]), kind
        CASES["connections the server must close"] += len(times)
        print(f"{kind}: closed by the server after {min(times):.2f}..{max(times):.2f} s")


async def test_a_malformed_upgrade_leaves_no_session_behind(data_dir: Path) -> None:
    async with secure_server(data_dir, drain_timeout_ms=100) as server:
        gateway = server.app.services.gateway
        assert gateway is not None
        stray = upgrade_request(server.host, server.port) + b"\x00"  # Hypercorn issue 225's trigger
        with trio.fail_after(STEP_S):
            answer = await raw_http(server, stray)
        assert answer is not None
        assert answer.status == 400
        CASES["malformed upgrades (issue 225)"] += 1
        with trio.fail_after(1.0):
            while gateway.session_count:  # noqa: ASYNC110 (no event to wait on)
                await trio.sleep(0.02)
