"""A relay served on loopback from a thread of its own, for synchronous clients (schemathesis, requests).

:func:`live_relay` runs ``relay serve`` (:func:`relay.serving.serve`, Hypercorn, SQLite in a temporary
data dir) in a thread with its own trio loop, capped at :data:`SERVE_CAP_S`, and hands the test thread
a :class:`LiveRelay`: its URL, a way to run coroutines on the server's loop (to mint tokens from its
store), and the devices that sign requests.

Signing: a request whose ``Authorization`` is exactly :data:`SIGN_ME` is signed, by the
:class:`SigningAdapter` mounted on :attr:`LiveRelay.session`, just before it is sent, over the bytes
that are sent (method, path and query as on the request line, body), for :attr:`LiveRelay.signer`
(§3). Any other ``Authorization``, or none, goes out as it is, so a client that drops or forges the
header is refused like any other.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import attrs
import orjson
import requests
import trio
from requests.adapters import HTTPAdapter

from relay import crypto
from relay.app import RelayApp, create_app
from relay.client import DeviceCredentials
from relay.client.http import SignedAuth
from relay.config import Settings
from relay.http.limits import HttpLimits
from relay.http.runtime import Runtime
from relay.ops.ratelimit import LocalLimiter, RateLimit
from relay.serving import serve

T = TypeVar("T")

#: The longest the server may run (start-up included): everything a test does with it fits in this.
SERVE_CAP_S = 120.0
#: The longest one request, one start-up or one stop may take.
CALL_CAP_S = 10.0
#: The server's drain bound: how long its stop waits for connections still open (ms).
DRAIN_MS = 1000
#: The ``Authorization`` value that asks :class:`SigningAdapter` to sign the request.
SIGN_ME = "Relay-Ed25519 sign-me"
#: Rate limits no test client reaches: the limits themselves are tested in ``test_http_ops.py``.
UNREACHABLE = RateLimit(rate=1_000_000, burst=1_000_000)


@attrs.define(eq=False)
class Pair:
    """A user with two devices: ``signer`` signs the requests, ``sibling`` is there to be renamed and
    revoked."""

    signer: DeviceCredentials
    sibling: DeviceCredentials


@attrs.define(eq=False)
class LiveRelay:
    url: str
    app: RelayApp
    token: trio.lowlevel.TrioToken
    stop: trio.Event
    session: requests.Session = attrs.field(factory=requests.Session)
    pair: Pair | None = None
    #: Pairs made so far (each replaces one whose signer was revoked or deleted).
    pairs_made: int = 0

    @property
    def runtime(self) -> Runtime:
        runtime = self.app.extensions["relay"]
        assert isinstance(runtime, Runtime)
        return runtime

    @property
    def server_key(self) -> str:
        return self.runtime.server_key.public_key_b64

    def on_loop(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call()`` on the server's trio loop and return its result (from the test thread)."""

        async def capped() -> T:
            with trio.fail_after(CALL_CAP_S):
                return await call()

        return trio.from_thread.run(capped, trio_token=self.token)

    def new_token(self, user_id: str | None = None) -> tuple[str, str]:
        """A token for a new user's first device, or for another device of ``user_id``: (user, token)."""
        store, clock = self.runtime.store, self.runtime.clock
        if user_id is None:
            created = self.on_loop(lambda: store.create_user(now_ms=clock.now_ms(), token_ttl_ms=900_000))
            return created.user_id, created.token.token
        issued = self.on_loop(
            lambda: store.create_token(user_id=user_id, now_ms=clock.now_ms(), token_ttl_ms=900_000)
        )
        return user_id, issued.token

    def enroll(self, name: str, user_id: str | None = None) -> DeviceCredentials:
        """A new device (of a new user unless ``user_id``), enrolled over HTTP."""
        user_id, token = self.new_token(user_id)
        key = crypto.SigningKey.generate()
        answer = self.post_json("/v1/enroll", enrollment(token, key, name))
        assert answer.status_code == 201, answer.text
        body = answer.json()
        return DeviceCredentials(
            url=self.url,
            server_key=self.server_key,
            user_id=body["user_id"],
            device_id=body["device_id"],
            name=body["name"],
            key=key,
        )

    def post_json(self, path: str, body: Mapping[str, object]) -> requests.Response:
        return requests.post(self.url + path, data=orjson.dumps(body), timeout=CALL_CAP_S)

    def new_pair(self) -> Pair:
        """Replace :attr:`pair` by a new user's two devices."""
        signer = self.enroll("signer")
        sibling = self.enroll("sibling", signer.user_id)
        self.pair = Pair(signer=signer, sibling=sibling)
        self.pairs_made += 1
        return self.pair

    @property
    def signer(self) -> DeviceCredentials:
        return (self.pair or self.new_pair()).signer


def enrollment(token: str, key: crypto.SigningKey, name: str) -> dict[str, str]:
    """A correctly signed enrolment body."""
    public_key = key.public_key_b64
    return {
        "token": token,
        "public_key": public_key,
        "name": name,
        "sig": key.sign(crypto.enroll_string(token, public_key, name)),
    }


class SigningAdapter(HTTPAdapter):
    """Signs, as the live relay's current signer, every request whose ``Authorization`` is :data:`SIGN_ME`."""

    def __init__(self, live: LiveRelay) -> None:
        super().__init__()
        self._live = live

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        if request.headers.get("Authorization") == SIGN_ME:
            body = request.body if request.body is not None else b""
            if isinstance(body, str):
                body = body.encode("utf-8")
                request.body = body
                request.headers["Content-Length"] = str(len(body))
            assert isinstance(body, bytes), "only whole bodies can be signed"
            target = request.path_url  # exactly what goes on the request line
            auth = SignedAuth(self._live.signer)
            request.headers["Authorization"] = auth.header(str(request.method), target, body)
        return super().send(request, *args, **kwargs)


async def _serve(data_dir: Path, started: queue.Queue[LiveRelay | BaseException]) -> None:
    settings = Settings(data_dir=data_dir, host="127.0.0.1", port=0, drain_timeout_ms=DRAIN_MS)
    app = create_app(settings)
    runtime = app.extensions["relay"]
    assert isinstance(runtime, Runtime)
    runtime.limits = HttpLimits(address=LocalLimiter(UNREACHABLE), device=LocalLimiter(UNREACHABLE))
    stop = trio.Event()
    try:
        with trio.fail_after(SERVE_CAP_S):
            async with trio.open_nursery() as nursery:
                urls: list[str] = await nursery.start(
                    partial(serve, settings, shutdown_trigger=stop.wait, app=app)
                )
                live = LiveRelay(url=urls[0], app=app, token=trio.lowlevel.current_trio_token(), stop=stop)
                live.session.mount("http://", SigningAdapter(live))
                started.put(live)
    except BaseException as exc:
        started.put(exc)  # read only if start-up failed; a later failure shows in the test's requests
        raise


@contextlib.contextmanager
def live_relay(data_dir: Path) -> Iterator[LiveRelay]:
    """A relay serving on 127.0.0.1 from its own thread until the block ends (module docstring)."""
    started: queue.Queue[LiveRelay | BaseException] = queue.Queue()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            trio.run(_serve, data_dir, started)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, name="live-relay", daemon=True)
    thread.start()
    live = started.get(timeout=CALL_CAP_S)
    if isinstance(live, BaseException):
        thread.join(timeout=CALL_CAP_S)
        raise live
    try:
        yield live
    finally:
        live.session.close()
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(live.stop.set, trio_token=live.token)
        thread.join(timeout=CALL_CAP_S)
        assert not thread.is_alive(), "the live relay did not stop"
        if failures:
            raise failures[0]
