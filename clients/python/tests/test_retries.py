"""Retries: the idempotency key / event ids are fixed before the first attempt and every retry
sends the same body; transport errors, 503 and 504 are retried with bounded backoff; 4xx never."""

import asyncio
import json

import httpx
import pytest

import hybridstore as hs
from hybridstore import RetryPolicy

FAST = RetryPolicy(attempts=5, base=0, jitter=0)
OK = {"first_position": 10, "last_position": 11, "stream_version": 1}
EVENTS = [
    {"type": "MessageReceived", "data": {"telegram_message_id": 1, "text": "hi", "content_type": "text", "legacy_ts": None}},
    {"type": "MessageSent", "data": {"text": "hello", "kind": "reply", "generation": None, "legacy_ts": None}},
]


def scripted(*steps):
    """A transport answering with ``steps`` in turn (an exception class is raised); records
    every request."""
    seen = []

    def handler(request):
        seen.append(request)
        step = steps[min(len(seen) - 1, len(steps) - 1)]
        if isinstance(step, type) and issubclass(step, Exception):
            raise step("scripted failure", request=request)
        status, body = step
        return httpx.Response(status, json=body)

    return handler, seen


def unavailable():
    return (503, {"type": "/problems/unavailable", "status": 503, "detail": "not ready"})


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError, "503", "504"],
)
def test_retry_reuses_event_ids(failure):
    """Proves a write failing twice (connection refused, a timeout after sending, a dropped
    connection, 503, 504) is sent three times with byte-identical bodies: the same client event
    ids (UUIDv7), so the daemon answers a retry of a recorded append with its original result."""
    step = {"503": unavailable(), "504": (504, {"type": "/problems/timeout", "status": 504, "detail": "slow"})}.get(failure, failure)
    handler, seen = scripted(step, step, (200, OK))
    c = hs.Client("http://d", retry=FAST, transport=httpx.MockTransport(handler))
    result = c.append("conv-bot-1", EVENTS, expected_version="no_stream")
    assert result == hs.AppendResult(10, 11, 1)
    assert len(seen) == 3
    bodies = [json.loads(r.content) for r in seen]
    assert bodies[0] == bodies[1] == bodies[2]
    ids = [e["id"] for e in bodies[0]["events"]]
    assert len(set(ids)) == 2 and all(len(i) == 36 and i[14] == "7" for i in ids)
    assert bodies[0]["expected_version"] == "no_stream"


def test_retry_reuses_idempotency_key_header():
    """Proves an append-wide idempotency key goes in the Idempotency-Key header of every
    attempt (and events then carry no generated ids: the header keys them)."""
    handler, seen = scripted(httpx.ConnectError, unavailable(), (200, OK))
    c = hs.Client("http://d", retry=FAST, transport=httpx.MockTransport(handler))
    c.append("conv-bot-1", EVENTS, idempotency_key="tg:1:77:in")
    assert len(seen) == 3
    assert {r.headers["idempotency-key"] for r in seen} == {"tg:1:77:in"}
    assert all("id" not in e for e in json.loads(seen[0].content)["events"])


def test_given_ids_and_keys_are_kept():
    handler, seen = scripted((200, OK))
    c = hs.Client("http://d", retry=FAST, transport=httpx.MockTransport(handler))
    c.append("s", [hs.NewEvent("ProfileDeleted", {}, id="0190a0a0-0000-7000-8000-000000000000"), {"type": "ProfileDeleted", "data": {}, "key": "k1"}])
    events = json.loads(seen[0].content)["events"]
    assert events[0]["id"] == "0190a0a0-0000-7000-8000-000000000000"
    assert events[1] == {"type": "ProfileDeleted", "data": {}, "key": "k1"}


@pytest.mark.parametrize(
    "status,kind,cls",
    [
        (400, "bad-request", hs.BadRequest),
        (401, "unauthorized", hs.Unauthorized),
        (403, "forbidden", hs.Forbidden),
        (409, "wrong-expected-version", hs.WrongExpectedVersion),
        (413, "payload-too-large", hs.PayloadTooLarge),
        (422, "idempotency-conflict", hs.IdempotencyConflict),
        (503, "not-served-here", hs.NotServedHere),
        (500, "internal", hs.InternalError),
    ],
)
def test_client_errors_are_not_retried(status, kind, cls):
    """Proves 4xx (and a replica's not-served-here, and a 500) are raised after one attempt."""
    handler, seen = scripted((status, {"type": f"/problems/{kind}", "status": status, "detail": "no"}), (200, OK))
    c = hs.Client("http://d", retry=FAST, transport=httpx.MockTransport(handler))
    with pytest.raises(cls):
        c.append("s", EVENTS)
    assert len(seen) == 1


def test_retries_are_bounded():
    """Proves a daemon that never answers costs exactly `attempts` tries, then ConnectionFailed
    (an Unavailable, status 0)."""
    handler, seen = scripted(httpx.ConnectError)
    c = hs.Client("http://d", retry=RetryPolicy(attempts=4, base=0, jitter=0), transport=httpx.MockTransport(handler))
    with pytest.raises(hs.ConnectionFailed) as info:
        c.append("s", EVENTS)
    assert len(seen) == 4 and isinstance(info.value, hs.Unavailable) and info.value.status == 0


def test_backoff_is_exponential_and_capped():
    p = RetryPolicy(attempts=9, base=0.05, cap=2.0, jitter=0)
    assert [p.delay(n) for n in range(8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]


def test_transition_is_retried_only_when_unsent():
    """Proves a migration step (not idempotent) is retried after a refused connection but not
    after a timeout once sent."""
    done = {"bot": "b", "component": "profiles", "from": "disabled", "to": "dual-write", "position": 3, "forced": False}
    handler, seen = scripted(httpx.ConnectError, (200, done))
    c = hs.Client("http://d", retry=FAST, transport=httpx.MockTransport(handler))
    assert c.set_migration("b", "profiles", "dual-write").to == "dual-write" and len(seen) == 2
    handler, seen = scripted(httpx.ReadTimeout, (200, done))
    c = hs.Client("http://d", retry=FAST, transport=httpx.MockTransport(handler))
    with pytest.raises(hs.ConnectionFailed):
        c.set_migration("b", "profiles", "dual-write")
    assert len(seen) == 1


RECEIPT = {
    "receipt_id": "01a231ab-6856-72d0-a51e-df08d8923026",
    "subject": {"kind": "chat", "bot": "b", "chat_id": 42},
    "erasure_position": 2,
    "erased_at": "2026-12-01T12:54:06.675Z",
    "keys_destroyed": [{"stream": "conv-b-42", "epoch": 1}],
    "key_store_generation": 2,
    "sealed_events_shredded": 2,
    "plaintext_events_remaining": 0,
    "sinks": [{"sink": "log-projection", "position": 2, "reached": True}],
    "complete": True,
    "checked_at": "2026-12-01T12:54:06.678Z",
    "future_member": {"kept": True},
}


def test_erase_request_and_its_timeout():
    """Proves erase sends {"chat"|"user", "wait_s"} (whole seconds, rounded up) to the bot's
    erasures route with a timeout covering wait_s, parses the receipt (unknown members kept in
    raw), and refuses both/neither ids or a bad wait_s before any request."""
    handler, seen = scripted((200, RECEIPT))
    c = hs.Client("http://d", bot="b", timeout=5, retry=FAST, transport=httpx.MockTransport(handler))
    r = c.erase(chat_id=42, wait_s=29.5)
    assert seen[0].method == "POST" and seen[0].url.path == "/v1/bots/b/erasures"
    assert json.loads(seen[0].content) == {"chat": 42, "wait_s": 30}
    assert seen[0].extensions["timeout"]["read"] == 35
    assert r.receipt_id == RECEIPT["receipt_id"] and r.erasure_position == 2 and r.complete
    assert r.keys_destroyed == [hs.ErasedKey("conv-b-42", 1)]
    assert r.sinks == [hs.SinkReceipt("log-projection", 2, True, None)] and r.sinks_not_reached == []
    assert r.raw["future_member"] == {"kept": True}
    c.erase(user_id=7, bot="other", wait_s=None)
    assert seen[1].url.path == "/v1/bots/other/erasures" and json.loads(seen[1].content) == {"user": 7}
    assert seen[1].extensions["timeout"]["read"] == 15  # the daemon's default wait, 10 s
    c.erasure_receipt(RECEIPT["receipt_id"], wait_s=700)
    assert seen[2].method == "GET" and seen[2].url.path == f"/v1/bots/b/erasures/{RECEIPT['receipt_id']}"
    assert seen[2].url.params["wait_s"] == "700" and seen[2].extensions["timeout"]["read"] == 605
    for bad in [dict(), dict(chat_id=1, user_id=1), dict(chat_id=True), dict(chat_id=1.5), dict(chat_id=1, wait_s=-1)]:
        with pytest.raises(ValueError):
            c.erase(**bad)
    assert len(seen) == 3


def test_erase_is_retried_only_when_unsent():
    """Proves an erasure is retried after a refused connection or a 503 unavailable, but not
    after a timeout once sent (a second erasure is harmless but not free), nor on a 4xx."""
    for first in (httpx.ConnectError, unavailable()):
        handler, seen = scripted(first, (200, RECEIPT))
        c = hs.Client("http://d", bot="b", retry=FAST, transport=httpx.MockTransport(handler))
        assert c.erase(chat_id=42).complete and len(seen) == 2
        assert seen[0].content == seen[1].content
    handler, seen = scripted(httpx.ReadTimeout, (200, RECEIPT))
    c = hs.Client("http://d", bot="b", retry=FAST, transport=httpx.MockTransport(handler))
    with pytest.raises(hs.ConnectionFailed):
        c.erase(chat_id=42)
    assert len(seen) == 1
    for status, kind, cls in [(403, "forbidden", hs.Forbidden), (404, "unknown-subject", hs.UnknownSubject), (400, "bad-request", hs.BadRequest)]:
        handler, seen = scripted((status, {"type": f"/problems/{kind}", "status": status, "detail": "no"}), (200, RECEIPT))
        c = hs.Client("http://d", bot="b", retry=FAST, transport=httpx.MockTransport(handler))
        with pytest.raises(cls):
            c.erase(chat_id=42)
        assert len(seen) == 1


def test_async_client_retries_with_the_same_ids():
    """Proves the asyncio client follows the same rule."""
    handler, seen = scripted(httpx.ReadTimeout, unavailable(), (200, OK))

    async def main():
        async with hs.AsyncClient("http://d", retry=FAST, transport=httpx.MockTransport(handler)) as c:
            return await c.append("conv-bot-1", EVENTS, expected_version=4)

    assert asyncio.run(main()).stream_version == 1
    bodies = [r.content for r in seen]
    assert len(bodies) == 3 and bodies[0] == bodies[1] == bodies[2]
    assert json.loads(bodies[0])["expected_version"] == 4


def test_uuid7_is_v7_and_monotonic():
    ids = [hs.uuid7() for _ in range(5000)]
    assert all(u.version == 7 and u.variant == "specified in RFC 4122" for u in ids)
    assert [str(u) for u in ids] == sorted(str(u) for u in ids)
    assert len(set(ids)) == len(ids)
