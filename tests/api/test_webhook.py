"""Signed webhook delivery, checked by the verifiers receivers really use.

Deliveries go over real HTTP to a receiver on 127.0.0.1 and are verified with the official
``openai`` SDK (``webhooks.unwrap``) and the ``standardwebhooks`` library.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
import standardwebhooks
import uvicorn
from openai.types.webhooks import RealtimeCallIncomingWebhookEvent

from callgate.api.app import create_app
from callgate.calls.webhook import (
    Delivery as Outcome,
)
from callgate.calls.webhook import (
    WebhookSender,
    backoff,
    build_incoming_event,
    classify,
    new_secret,
    sign,
)
from callgate.config import Settings

INVITE_HEADERS = [
    ("Via", "SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK-1"),
    ("Via", "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-2"),
    ("From", "<sip:+14155550100@trunk.example.com>;tag=abc"),
    ("To", "<sip:proj_callgate@gw.example.com>"),
    ("Authorization", 'Digest username="trunk", response="secret"'),
    ("Call-ID", "03782086-4ce9-44bf-8b2d-4e5f3b2a2b1c"),
    ("proxy-authorization", 'Digest username="proxy"'),
    ("X-Customer", "Zoë 42"),
]


# --- a real HTTP receiver ---------------------------------------------------------------------


@dataclass
class Delivery:
    body: bytes
    headers: dict[str, str]
    at: float


@dataclass
class Receiver:
    """An HTTP server in a thread; ``respond`` picks each delivery's status (and may block)."""

    respond: Callable[[Delivery, int], int | tuple[int, dict[str, str]]]
    deliveries: list[Delivery] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    @contextlib.contextmanager
    def running(self) -> Iterator[Receiver]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                delivery = Delivery(body, {k.lower(): v for k, v in self.headers.items()},
                                    time.monotonic())
                receiver.deliveries.append(delivery)
                answer = receiver.respond(delivery, len(receiver.deliveries))
                status, headers = answer if isinstance(answer, tuple) else (answer, {})
                with contextlib.suppress(OSError):  # the sender may have given up already
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/incoming?token=t0p"
        thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.release.set()
            server.shutdown()
            server.server_close()
            thread.join(5)

    def hang(self) -> int:
        self.release.wait(10)
        return 200


def always(status: int) -> Callable[[Delivery, int], int]:
    return lambda _delivery, _n: status


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def stop_after(seconds: float) -> Callable[[], bool]:
    """keep_trying() for a call that stops ringing ``seconds`` from now."""
    end = time.monotonic() + seconds
    return lambda: time.monotonic() < end


def no_other_tasks() -> bool:
    return asyncio.all_tasks() == {asyncio.current_task()}


def sdk(secret: str) -> openai.OpenAI:
    return openai.OpenAI(api_key="x", webhook_secret=secret, base_url="http://127.0.0.1:9/v1")


# --- the event and the signature --------------------------------------------------------------


def test_incoming_event_shape() -> None:
    event = build_incoming_event("rtc_abc", INVITE_HEADERS, now=1750287018.9)
    assert event["object"] == "event"
    assert event["type"] == "realtime.call.incoming"
    assert event["created_at"] == 1750287018
    assert event["id"].startswith("evt_") and len(event["id"]) == 36
    assert event["data"]["call_id"] == "rtc_abc"
    assert "sip_media_security" not in event["data"]
    # Order and repeats kept, authorization headers (any case) dropped.
    assert event["data"]["sip_headers"] == [
        {"name": name, "value": value} for name, value in INVITE_HEADERS
        if name.lower() not in ("authorization", "proxy-authorization")]
    assert len(event["data"]["sip_headers"]) == 6
    parsed = RealtimeCallIncomingWebhookEvent.model_validate(event)
    assert parsed.data.sip_headers[0].value.endswith("branch=z9hG4bK-1")

    secure = build_incoming_event("rtc_abc", [], media_security="srtp", now=0)
    assert secure["data"]["sip_media_security"] == "srtp"
    assert build_incoming_event("rtc_abc", [], now=0)["id"] != secure["id"]


def test_sign_matches_standard_webhooks() -> None:
    secret = new_secret()
    body = b'{"hello":"world"}'
    expected = standardwebhooks.Webhook(secret).sign(
        "wh_1", datetime.fromtimestamp(1700000000, tz=UTC), body.decode())
    assert sign(secret, "wh_1", 1700000000, body) == expected
    assert sign(secret, "wh_1", 1700000001, body) != expected


def test_new_secret() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:], validate=True)) == 32
    assert new_secret() != secret


def test_bad_secret_is_refused_at_startup() -> None:
    with pytest.raises(ValueError):
        WebhookSender(["http://127.0.0.1:9/"], "whsec_***not base64***", timeout=1)


def test_retry_policy() -> None:
    assert [classify(s) for s in (200, 204, 299)] == ["delivered"] * 3
    assert [classify(s) for s in (500, 502, 503, 599, 408, 429)] == ["retry"] * 6
    assert [classify(s) for s in (301, 400, 401, 403, 404, 410, 422)] == ["give_up"] * 7
    assert [backoff(n, 0.25, 2.0) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


# --- delivery over HTTP -----------------------------------------------------------------------


def _deliver(urls: list[str], secret: str | None, event: dict[str, Any], *,
             keep_trying: Callable[[], bool] = lambda: True,
             **options: Any) -> tuple[Outcome, float]:
    async def main() -> tuple[Outcome, float]:
        async with WebhookSender(urls, secret, **{"timeout": 2.0, **options}) as sender:
            started = time.monotonic()
            ok = await sender.deliver(event, keep_trying=keep_trying)
            elapsed = time.monotonic() - started
        assert no_other_tasks()
        return ok, elapsed

    result: tuple[Outcome, float] = run(main())
    return result


def test_delivery_verifies_with_openai_sdk_and_standard_webhooks() -> None:
    secret = new_secret()
    event = build_incoming_event("rtc_u0_DfKR6woNn4gWn4VhY6e4C", INVITE_HEADERS,
                                 media_security="rtp", now=time.time())
    with Receiver(always(200)).running() as receiver:
        ok, _ = _deliver([receiver.url], secret, event)
    assert ok
    [delivery] = receiver.deliveries
    headers = delivery.headers
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("callgate")
    assert headers["webhook-id"].startswith("wh_")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert headers["webhook-signature"].startswith("v1,")

    unwrapped = sdk(secret).webhooks.unwrap(delivery.body, headers)
    assert isinstance(unwrapped, RealtimeCallIncomingWebhookEvent)
    assert unwrapped.type == "realtime.call.incoming"
    assert unwrapped.id == event["id"]
    assert unwrapped.data.call_id == "rtc_u0_DfKR6woNn4gWn4VhY6e4C"
    assert unwrapped.data.sip_media_security == "rtp"
    assert [(h.name, h.value) for h in unwrapped.data.sip_headers] == [
        (n, v) for n, v in INVITE_HEADERS if "authorization" not in n.lower()]
    assert standardwebhooks.Webhook(secret).verify(delivery.body, headers) == event


def test_raw_secret_verifies_with_openai_sdk() -> None:
    # Not whsec_: the SDK keys the HMAC with the secret's own UTF-8 bytes.
    secret = "my-plain-shared-secret"
    event = build_incoming_event("rtc_1", INVITE_HEADERS, now=time.time())
    with Receiver(always(204)).running() as receiver:
        ok, _ = _deliver([receiver.url], secret, event)
    assert ok
    [delivery] = receiver.deliveries
    assert sdk(secret).webhooks.unwrap(delivery.body, delivery.headers).id == event["id"]


def test_signature_is_checked_by_the_verifiers() -> None:
    secret = new_secret()
    event = build_incoming_event("rtc_1", INVITE_HEADERS, now=time.time())
    with Receiver(always(200)).running() as receiver:
        assert _deliver([receiver.url], secret, event)[0]
    [delivery] = receiver.deliveries
    body, headers = delivery.body, delivery.headers
    client, std = sdk(secret), standardwebhooks.Webhook(secret)
    client.webhooks.verify_signature(body, headers)  # the genuine article passes

    def rejected(body: bytes, headers: dict[str, str], client: openai.OpenAI = client,
                 std: standardwebhooks.Webhook = std) -> None:
        with pytest.raises(ValueError):  # InvalidWebhookSignatureError is a ValueError
            client.webhooks.unwrap(body, headers)
        with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
            std.verify(body, headers)

    tampered = body.replace(b"rtc_1", b"rtc_2")
    assert tampered != body
    rejected(tampered, headers)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(tampered, headers)

    other = new_secret()
    rejected(body, headers, sdk(other), standardwebhooks.Webhook(other))

    msg_id = headers["webhook-id"]
    stale = int(time.time()) - 301
    resigned = {**headers, "webhook-timestamp": str(stale),
                "webhook-signature": sign(secret, msg_id, stale, body)}
    rejected(body, resigned)
    fresh = int(time.time()) - 290  # inside the 300 s window: the same signing verifies
    client.webhooks.verify_signature(body, {**headers, "webhook-timestamp": str(fresh),
                                            "webhook-signature": sign(secret, msg_id, fresh,
                                                                      body)})
    # A signature from one timestamp does not carry over to another.
    rejected(body, {**headers, "webhook-timestamp": str(fresh)})

    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        rejected(body, {k: v for k, v in headers.items() if k != name})


@pytest.mark.parametrize("first", [500, 503, 408, 429])
def test_retried_until_acknowledged(first: int) -> None:
    secret = new_secret()
    event = build_incoming_event("rtc_retry", INVITE_HEADERS, now=time.time())

    def respond(_delivery: Delivery, n: int) -> int | tuple[int, dict[str, str]]:
        if n == 1:
            return (first, {"retry-after": "0"}) if first == 429 else first
        return 200

    with Receiver(respond).running() as receiver:
        ok, elapsed = _deliver([receiver.url], secret, event, initial_backoff=0.1)
    assert ok
    assert len(receiver.deliveries) == 2
    assert elapsed >= 0.1
    first_try, second_try = receiver.deliveries
    assert second_try.at - first_try.at >= 0.09
    # One delivery id across attempts (the receiver's idempotency key), each attempt signed.
    assert first_try.headers["webhook-id"] == second_try.headers["webhook-id"]
    for delivery in receiver.deliveries:
        assert sdk(secret).webhooks.unwrap(delivery.body, delivery.headers).id == event["id"]


def test_retry_after_is_honoured() -> None:
    responses = iter([(429, {"retry-after": "1"}), (200, {})])
    with Receiver(lambda _d, _n: next(responses)).running() as receiver:
        ok, _ = _deliver([receiver.url], None, build_incoming_event("rtc_1", [], now=0),
                         initial_backoff=0.05, max_backoff=5.0)
    assert ok
    first_try, second_try = receiver.deliveries
    assert second_try.at - first_try.at >= 0.95


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 301])
def test_client_errors_are_final(status: int) -> None:
    with Receiver(always(status)).running() as receiver:
        ok, elapsed = _deliver([receiver.url], new_secret(),
                               build_incoming_event("rtc_1", [], now=0), initial_backoff=0.05,
                               max_elapsed=2.0)
    assert not ok
    assert len(receiver.deliveries) == 1
    assert elapsed < 1.0


def test_no_backoff_wait_once_the_call_stopped_ringing() -> None:
    # The call was answered or cancelled during the first attempt: no point sleeping 2 s.
    ringing = [True]

    def respond(_delivery: Delivery, _n: int) -> int:
        ringing[0] = False
        return 503

    with Receiver(respond).running() as receiver:
        ok, elapsed = _deliver([receiver.url], None, build_incoming_event("rtc_1", [], now=0),
                               keep_trying=lambda: ringing[0], initial_backoff=2.0)
    assert not ok
    assert len(receiver.deliveries) == 1
    assert elapsed < 1.0


def test_server_errors_retry_only_while_the_call_rings() -> None:
    with Receiver(always(500)).running() as receiver:
        ok, elapsed = _deliver([receiver.url], new_secret(),
                               build_incoming_event("rtc_1", [], now=0),
                               keep_trying=stop_after(0.6), initial_backoff=0.05,
                               max_backoff=0.1)
    assert not ok
    assert 0.5 <= elapsed < 1.5
    assert len(receiver.deliveries) >= 4


def test_total_time_is_bounded_even_if_the_call_rings_on() -> None:
    with Receiver(always(503)).running() as receiver:
        ok, elapsed = _deliver([receiver.url], None, build_incoming_event("rtc_1", [], now=0),
                               initial_backoff=0.05, max_backoff=0.1, max_elapsed=0.5)
    assert not ok
    assert elapsed < 1.2
    assert len(receiver.deliveries) >= 3


def test_hanging_receiver_times_out_and_stops_with_the_call(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="callgate.calls.webhook")
    receiver = Receiver(lambda _d, _n: receiver.hang())
    with receiver.running():
        ok, elapsed = _deliver([receiver.url], new_secret(),
                               build_incoming_event("rtc_hang", [], now=0), timeout=0.3,
                               keep_trying=stop_after(0.7), initial_backoff=0.05)
    assert not ok
    # Attempts of at most 0.3 s each until the call stops ringing, plus the last attempt.
    assert 0.6 <= elapsed < 1.5
    assert len(receiver.deliveries) >= 2
    failures = [r for r in caplog.records if r.getMessage() == "webhook.attempt_failed"]
    assert failures and all(getattr(r, "error", None) == "timeout" for r in failures)
    [final] = [r for r in caplog.records if r.getMessage() == "webhook.failed"]
    assert getattr(final, "call_id", None) == "rtc_hang"
    assert getattr(final, "reason", None) == "stopped"
    assert "t0p" not in caplog.text  # the URL's token is not logged


def test_receiver_down(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="callgate.calls.webhook")
    ok, elapsed = _deliver([closed_port_url()], new_secret(),
                           build_incoming_event("rtc_down", [], now=0),
                           keep_trying=stop_after(0.5), initial_backoff=0.05, max_backoff=0.1)
    assert not ok
    assert elapsed < 1.5
    attempts = [r for r in caplog.records if r.getMessage() == "webhook.attempt_failed"]
    assert len(attempts) >= 3
    assert all(getattr(r, "call_id", None) == "rtc_down" for r in attempts)


def test_invalid_url_gives_up_at_once() -> None:
    ok, elapsed = _deliver(["ftp://127.0.0.1/hook"], None,
                           build_incoming_event("rtc_1", [], now=0))
    assert not ok and elapsed < 0.5


def test_every_url_gets_the_event_and_one_acknowledgement_is_enough() -> None:
    event = build_incoming_event("rtc_fan", INVITE_HEADERS, now=time.time())
    with Receiver(always(404)).running() as refusing, Receiver(always(200)).running() as ok_rx:
        ok, _ = _deliver([closed_port_url(), refusing.url, ok_rx.url], new_secret(), event,
                         keep_trying=stop_after(0.3), initial_backoff=0.05)
    assert ok
    assert len(refusing.deliveries) == 1 and len(ok_rx.deliveries) == 1
    assert refusing.deliveries[0].headers["webhook-id"] == ok_rx.deliveries[0].headers[
        "webhook-id"]


def test_urls_are_served_concurrently() -> None:
    def slow(_delivery: Delivery, _n: int) -> int:
        time.sleep(0.4)
        return 200

    with Receiver(slow).running() as one, Receiver(slow).running() as two:
        ok, elapsed = _deliver([one.url, two.url], None,
                               build_incoming_event("rtc_1", [], now=0))
    assert ok
    assert 0.4 <= elapsed < 0.75


def test_each_event_gets_its_own_delivery_id() -> None:
    with Receiver(always(200)).running() as receiver:
        for call_id in ("rtc_1", "rtc_2"):
            assert _deliver([receiver.url], None, build_incoming_event(call_id, [], now=0))[0]
    first, second = receiver.deliveries
    assert first.headers["webhook-id"] != second.headers["webhook-id"]


def test_unsigned_when_no_secret() -> None:
    with Receiver(always(200)).running() as receiver:
        assert _deliver([receiver.url], None, build_incoming_event("rtc_1", [], now=0))[0]
    assert "webhook-signature" not in receiver.deliveries[0].headers
    assert receiver.deliveries[0].headers["webhook-id"].startswith("wh_")


def test_no_urls() -> None:
    assert not _deliver([], None, build_incoming_event("rtc_1", [], now=0))[0]


def test_keep_trying_that_raises_does_not_escape() -> None:
    def broken() -> bool:
        raise RuntimeError("registry gone")

    ok, _ = _deliver([closed_port_url()], None, build_incoming_event("rtc_1", [], now=0),
                     keep_trying=broken)
    assert not ok


def test_cancelling_delivery_leaves_no_tasks() -> None:
    receiver = Receiver(lambda _d, _n: receiver.hang())

    async def main() -> None:
        async with WebhookSender([receiver.url, receiver.url], None, timeout=5) as sender:
            task = asyncio.create_task(sender.deliver(build_incoming_event("rtc_1", [], now=0),
                                                      keep_trying=lambda: True))
            while len(receiver.deliveries) < 2:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert no_other_tasks()

    with receiver.running():
        run(main())


# --- the receiver accepts from inside its handler, as the guide's example does ----------------


class RecordingControl:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    async def accept(self, call_id: str, session: dict[str, Any]) -> None:
        self.calls.append(("accept", call_id, session))

    async def reject(self, call_id: str, status_code: int) -> None:
        self.calls.append(("reject", call_id, status_code))

    async def refer(self, call_id: str, target_uri: str) -> None:
        self.calls.append(("refer", call_id, target_uri))

    async def hangup(self, call_id: str) -> None:
        self.calls.append(("hangup", call_id, None))


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on this very event loop."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def test_receiver_accepts_inside_its_handler_while_delivery_waits() -> None:
    secret = new_secret()
    control = RecordingControl()
    app = create_app(Settings(api_key="sk-test", webhook_secret=secret), control)
    base: dict[str, str] = {}
    accepted: list[str] = []

    def respond(delivery: Delivery, _n: int) -> int:
        # Blocking, in the receiver's thread, like the guide's Flask handler: verify, then
        # accept over REST, then acknowledge. The REST API runs on the sender's event loop.
        client = openai.OpenAI(api_key="sk-test", webhook_secret=secret,
                               base_url=base["url"] + "/v1", max_retries=0, timeout=5)
        event = client.webhooks.unwrap(delivery.body, delivery.headers)
        assert isinstance(event, RealtimeCallIncomingWebhookEvent)
        client.realtime.calls.accept(event.data.call_id, type="realtime", model="gpt-realtime",
                                     instructions="You are a support agent.")
        accepted.append(event.data.call_id)
        return 200

    async def main() -> Outcome:
        async with serve(app) as url:
            base["url"] = url
            with Receiver(respond).running() as receiver:
                async with WebhookSender([receiver.url], secret, timeout=5) as sender:
                    ok = await sender.deliver(
                        build_incoming_event("rtc_inline", INVITE_HEADERS, now=time.time()),
                        keep_trying=lambda: not accepted)
        return ok

    assert run(main()).delivered
    assert accepted == ["rtc_inline"]
    assert control.calls == [("accept", "rtc_inline", {
        "type": "realtime", "model": "gpt-realtime", "instructions": "You are a support agent."})]


def test_event_body_is_compact_json() -> None:
    with Receiver(always(200)).running() as receiver:
        event = build_incoming_event("rtc_1", INVITE_HEADERS, now=time.time())
        assert _deliver([receiver.url], None, event)[0]
    body = receiver.deliveries[0].body
    assert json.loads(body) == event
    assert body.isascii()


def test_a_receiver_that_is_gone_or_down_ends_the_ringing_at_once() -> None:
    event = build_incoming_event("rtc_gone", [], now=0)
    with Receiver(always(410)).running() as gone:
        delivery, elapsed = _deliver([gone.url], None, event)
    assert not delivery and delivery.reasons == ("refused",) and delivery.sip_status == 480
    assert elapsed < 0.5 and len(gone.deliveries) == 1
    # Connection refused three times in a row: down, 503 (the trunk may try elsewhere),
    # after well under a second rather than the whole accept timeout.
    delivery, elapsed = _deliver([closed_port_url()], None, event)
    assert delivery.reasons == ("unreachable",) and delivery.sip_status == 503
    assert elapsed < 1.5
    # The call stopped ringing (accepted over REST meanwhile): nothing to end.
    delivery, _ = _deliver([closed_port_url()], None, event, keep_trying=lambda: False)
    assert delivery.reasons == ("stopped",) and delivery.sip_status is None
