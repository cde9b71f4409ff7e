"""subscribe(): SSE parsing, and resumption after a dropped connection with Last-Event-ID."""

import asyncio
import json

import httpx

import hybridstore as hs
from hybridstore import RetryPolicy
from hybridstore._core import SseParser

FAST = RetryPolicy(attempts=5, base=0, jitter=0)


def recorded(position: int) -> dict:
    return {
        "position": position, "stream": "conv-bot-1", "stream_version": position, "batch_index": 0, "batch_len": 1,
        "event_id": f"id-{position}", "event_id_supplied": False, "idempotency_key": None, "recorded_at": 1,
        "occurred_at": 1, "schema_version": 2, "bot_id": "bot",
        "event": {"type": "MessageReceived", "data": {"telegram_message_id": None, "text": f"m{position}", "content_type": "text", "legacy_ts": None}},
    }


def sse(*positions: int, keepalive: bool = True) -> bytes:
    out = ": keep-alive\n\n" if keepalive else ""
    for p in positions:
        out += f"id: {p}\nevent: event\ndata: {json.dumps(recorded(p))}\n\n"
    return out.encode()


class Dropping(httpx.AsyncByteStream, httpx.SyncByteStream):
    """A body that yields some bytes, then fails as a dropped connection does."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self):
        yield self.data
        raise httpx.ReadError("connection reset")

    def __iter__(self):
        yield self.data
        raise httpx.ReadError("connection reset")


def script():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        n = len(seen)
        headers = {"content-type": "text/event-stream"}
        if n == 1:  # two events, then the connection drops mid-stream
            return httpx.Response(200, headers=headers, stream=Dropping(sse(5, 6)))
        if n == 2:  # the daemon is restarting
            return httpx.Response(503, json={"type": "/problems/unavailable", "status": 503, "detail": "starting"})
        if n == 3:  # resumes; repeats 6 (must not be delivered twice), then ends the stream
            return httpx.Response(200, headers=headers, content=sse(6, 7))
        return httpx.Response(200, headers=headers, content=sse(8))

    return handler, seen


def check(seen, positions):
    assert positions == [5, 6, 7, 8]
    assert seen[0].url.params.get("from") == "5" and "last-event-id" not in seen[0].headers
    assert seen[1].headers["last-event-id"] == "6" and "from" not in seen[1].url.params
    assert seen[2].headers["last-event-id"] == "6"
    assert seen[3].headers["last-event-id"] == "7"
    assert all(r.headers["accept"] == "text/event-stream" for r in seen)


def test_async_subscribe_resumes_with_last_event_id():
    """Proves the async iterator reconnects after a dropped stream, a 503 and a clean end, each
    time sending Last-Event-ID = the last position delivered, and delivers each position once."""
    handler, seen = script()

    async def main():
        out = []
        async with hs.AsyncClient("http://d", retry=FAST, transport=httpx.MockTransport(handler)) as c:
            async for e in c.subscribe(from_position=5):
                out.append(e.position)
                assert e.type == "MessageReceived" and e.data["text"] == f"m{e.position}"
                if len(out) == 4:
                    break
        return out

    check(seen, asyncio.run(main()))


def test_sync_subscribe_resumes_with_last_event_id():
    handler, seen = script()
    c = hs.Client("http://d", retry=FAST, transport=httpx.MockTransport(handler))
    out = []
    for e in c.subscribe(from_position=5):
        out.append(e.position)
        if len(out) == 4:
            break
    check(seen, out)


def test_subscribe_gives_up_after_bounded_reconnects_and_on_4xx():
    calls = []

    def refused(request):
        calls.append(request)
        raise httpx.ConnectError("refused", request=request)

    c = hs.Client("http://d", retry=FAST, transport=httpx.MockTransport(refused))
    try:
        list(c.subscribe(reconnects=2))
    except hs.ConnectionFailed:
        pass
    else:
        raise AssertionError("expected ConnectionFailed")
    assert len(calls) == 3

    def forbidden(request):
        return httpx.Response(401, json={"type": "/problems/unauthorized", "status": 401, "detail": "no token"})

    c = hs.Client("http://d", retry=FAST, transport=httpx.MockTransport(forbidden))
    try:
        next(iter(c.subscribe()))
    except hs.Unauthorized:
        pass
    else:
        raise AssertionError("expected Unauthorized")


def test_sse_parser():
    p = SseParser()
    lines = ": keep-alive", "", "id: 3", "event: event", "data: {\"a\":", "data: 1}", "", "retry: 10", "data:x", ""
    out = [r for r in (p.feed(line) for line in lines) if r]
    assert out == [("3", "event", "{\"a\":\n1}"), (None, "message", "x")]
