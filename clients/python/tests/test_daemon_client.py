"""The client against a real daemon (started by the test): appends, conflicts, idempotent
retries, reads, subscriptions, errors and auth."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

import hybridstore as hs
from hybridstore import RetryPolicy

BOT = "pybot"


def received(text: str, n: int = 0) -> dict:
    return {"type": "MessageReceived", "data": {"telegram_message_id": n, "text": text, "content_type": "text", "legacy_ts": None}}


def sent(text: str) -> dict:
    return {"type": "MessageSent", "data": {"text": text, "kind": "reply", "generation": None, "legacy_ts": None}}


@pytest.mark.parametrize("via", ["tcp", "unix"])
def test_append_and_read_back(daemon, via):
    """Proves appends and every read route over TCP and the Unix socket: positions and stream
    versions, forward/backward stream reads, the whole log, and the typed reads (profile, head,
    last messages) with min_position."""
    url = daemon.url if via == "tcp" else daemon.unix_url
    with hs.Client(url, bot=BOT) as c:
        assert c.livez() and c.readyz()
        stream = f"conv-{BOT}-42"
        r1 = c.append(stream, [{"type": "ProfileCreated", "data": {"name": "Аня"}}], expected_version="no_stream")
        assert r1 == hs.AppendResult(0, 0, 0)
        r2 = c.append(stream, [received("привет", 1), sent("hi!")], expected_version=0)
        assert (r2.first_position, r2.last_position, r2.stream_version) == (1, 2, 2)
        facts = {"interests": ["горы", "кофе"], "age": 27, "job": {"title": None}}
        r3 = c.append(stream, [{"type": "ProfileFactsRecorded", "data": {"snapshot_id": "20240101000000", "facts": facts}}])

        events = c.read_stream(stream)
        assert [e.type for e in events] == ["ProfileCreated", "MessageReceived", "MessageSent", "ProfileFactsRecorded"]
        assert [e.stream_version for e in events] == [0, 1, 2, 3]
        assert events[1].batch_len == 2 and events[2].batch_index == 1 and events[1].bot_id == BOT
        assert events[1].event_id_supplied and events[3].data["facts"] == facts
        back = c.read_stream(stream, direction="backward", limit=2)
        assert [e.stream_version for e in back] == [3, 2]
        assert [e.stream_version for e in c.read_stream(stream, from_version=1, direction="backward")] == [1, 0]
        assert [e.stream_version for e in c.read_stream(stream, from_version=2, limit=1)] == [2]

        page = c.read_all(0, limit=3)
        assert [e.position for e in page.events] == [0, 1, 2] and page.next == 3
        assert [e.position for e in c.read_all(page.next).events] == [3]

        doc = c.profile(42, min_position=r3.last_position)
        assert doc.applied_end >= r3.last_position + 1 and doc.source
        assert doc.value is not None and doc.value.name == "Аня" and doc.value.profile == {"20240101000000": facts}
        assert doc.value.message_count == 2
        head = c.head(42, min_position=r3.last_position).value
        assert head is not None and (head.messages_in, head.messages_out, head.unanswered) == (1, 1, 0)
        msgs = c.messages(42, limit=20, min_position=r3.last_position).value
        assert [(m.direction, m.text) for m in msgs] == [("in", "привет"), ("out", "hi!")]
        assert [m.text for m in c.messages(42, limit=1).value] == ["hi!"]
        assert c.profile(43).value is None
        assert c.user(42).value is None
        assert c.config("global", "greeting").value is None
        assert c.component_state("profiles").value == "disabled"


def test_conflict_carries_the_actual_version(daemon):
    """Proves optimistic concurrency: no_stream on an existing stream and a stale exact version
    raise WrongExpectedVersion with the actual version, and append nothing."""
    c = hs.Client(daemon.url, bot=BOT)
    s = f"conv-{BOT}-1"
    c.append(s, [received("a"), received("b")], expected_version="no_stream")
    with pytest.raises(hs.WrongExpectedVersion) as info:
        c.append(s, [received("c")], expected_version="no_stream")
    assert info.value.actual_version == 1 and info.value.status == 409
    with pytest.raises(hs.WrongExpectedVersion) as info:
        c.append(s, [received("c")], expected_version=0)
    assert info.value.actual_version == 1
    with pytest.raises(hs.WrongExpectedVersion) as info:
        c.append(f"conv-{BOT}-2", [received("c")], expected_version=0)
    assert info.value.actual_version is None
    assert len(c.read_stream(s)) == 2 and c.read_stream(f"conv-{BOT}-2") == []


def test_idempotent_retries(daemon):
    """Proves the same append sent again (same client ids, or the same Idempotency-Key) returns
    the original result and appends nothing, even with an exact expected version that is stale
    by then; and keys reused for other events are a 422."""
    c = hs.Client(daemon.url, bot=BOT)
    s = f"conv-{BOT}-7"
    ids = [str(hs.uuid7()), str(hs.uuid7())]
    events = [dict(received("x"), id=ids[0]), dict(sent("y"), id=ids[1])]
    first = c.append(s, events, expected_version="no_stream")
    again = c.append(s, events, expected_version="no_stream")
    assert again == first and len(c.read_stream(s)) == 2

    k1 = c.append(s, [received("z")], idempotency_key="tg:7:100:in")
    k2 = c.append(s, [received("z")], idempotency_key="tg:7:100:in")
    assert k1 == k2 and len(c.read_stream(s)) == 3
    assert c.read_stream(s)[2].idempotency_key == "tg:7:100:in:0"

    with pytest.raises(hs.IdempotencyConflict):
        c.append(s, [dict(received("x"), id=ids[0]), dict(received("new"), id=str(hs.uuid7()))])
    assert len(c.read_stream(s)) == 3


class LoseFirstAnswer(httpx.BaseTransport):
    """Forwards to the daemon, but loses the answer of the first append: the daemon appended,
    the client saw a timeout."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.posts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST":
            self.posts += 1
            if self.posts == 1:
                response.read()
                response.close()
                raise httpx.ReadTimeout("answer lost", request=request)
        return response


def test_retry_after_a_lost_answer_appends_once(daemon):
    """Proves the client's own retry after a timeout (the first attempt was appended) gets the
    original result back: the event is in the stream once."""
    lossy = LoseFirstAnswer(httpx.HTTPTransport())
    c = hs.Client(daemon.url, bot=BOT, retry=RetryPolicy(attempts=3, base=0.01), transport=lossy)
    r = c.append(f"conv-{BOT}-9", [received("once")], expected_version="no_stream")
    assert lossy.posts == 2 and r.stream_version == 0
    assert [e.data["text"] for e in c.read_stream(f"conv-{BOT}-9")] == ["once"]


def test_bad_requests_and_limits(daemon):
    """Proves 400 names the bad field, 413 over the body limit, and nothing is appended."""
    c = hs.Client(daemon.url, bot=BOT)
    s = f"conv-{BOT}-3"
    with pytest.raises(hs.BadRequest) as info:
        c.append(s, [{"type": "ProfileCreated", "data": {}}])
    assert info.value.field and info.value.field.startswith("/events/0")
    with pytest.raises(hs.BadRequest):
        c.append(s, [{"type": "NoSuchEvent", "data": {}}])
    with pytest.raises(hs.PayloadTooLarge) as info:
        c.append(s, [received("x" * (2 * 1024 * 1024))])
    assert info.value.status == 413
    assert c.read_stream(s) == []


def test_auth(make_daemon):
    """Proves bearer tokens: none or a wrong one is 401, a read token writing or a write token
    on an admin route is 403; the right kinds pass; health needs none."""
    d = make_daemon(env={"HYBRIDSTORE_READ_TOKEN": "read-token-0123456789", "HYBRIDSTORE_WRITE_TOKEN": "write-token-0123456789", "HYBRIDSTORE_ADMIN_TOKEN": "admin-token-0123456789"})
    s = f"conv-{BOT}-5"
    assert hs.Client(d.url).livez()
    with pytest.raises(hs.Unauthorized):
        hs.Client(d.url, bot=BOT).profile(5)
    with pytest.raises(hs.Unauthorized):
        hs.Client(d.url, token="nope", bot=BOT).profile(5)
    with pytest.raises(hs.Forbidden):
        hs.Client(d.url, token="read-token-0123456789").append(s, [received("x")])
    with pytest.raises(hs.Forbidden):
        hs.Client(d.url, token="write-token-0123456789").migrations()
    hs.Client(d.url, token="write-token-0123456789").append(s, [received("x")])
    assert len(hs.Client(d.url, token="read-token-0123456789").read_stream(s)) == 1
    assert isinstance(hs.Client(d.url, token="admin-token-0123456789").migrations(), list)


def test_migrations(daemon):
    """Proves the admin routes: the status list, and a refused step as TransitionRefused."""
    c = hs.Client(daemon.url, bot=BOT)
    c.append(f"conv-{BOT}-1", [received("x")])
    assert all(isinstance(m, hs.ComponentStatus) for m in c.migrations(bot=BOT))
    with pytest.raises(hs.TransitionRefused) as info:
        c.set_migration(BOT, "profiles", "database-only")
    assert info.value.reason


def test_long_poll(daemon):
    """Proves read_all waits for the first event when there is none yet."""
    c = hs.Client(daemon.url, bot=BOT)
    assert c.read_all(0, wait_ms=50).events == []
    t = threading.Timer(0.3, lambda: hs.Client(daemon.url).append(f"conv-{BOT}-1", [received("late")]))
    t.start()
    page = c.read_all(0, wait_ms=10_000)
    t.join()
    assert [e.data["text"] for e in page.events] == ["late"] and page.next == 1


def test_subscribe_resumes_across_a_restart(daemon):
    """Proves subscribe() delivers every event once and in order from `from_position`, and that
    after the daemon stops (ending the connection) and starts again on the same data directory
    it reconnects with Last-Event-ID and goes on where it was."""

    async def main() -> list[int]:
        got: list[hs.RecordedEvent] = []
        async with hs.AsyncClient(daemon.url, bot=BOT, retry=RetryPolicy(base=0.05, cap=0.5)) as c:
            await c.append(f"conv-{BOT}-1", [received("before")])

            async def consume() -> None:
                async for e in c.subscribe(from_position=0):
                    got.append(e)
                    if len(got) == 7:
                        return

            task = asyncio.create_task(consume())
            for i in range(3):
                await c.append(f"conv-{BOT}-1", [received(f"a{i}")])
            while len(got) < 4:
                await asyncio.sleep(0.02)
            await asyncio.get_running_loop().run_in_executor(None, daemon.stop)
            await asyncio.get_running_loop().run_in_executor(None, daemon.start)
            for i in range(3):
                await c.append(f"conv-{BOT}-1", [received(f"b{i}")])
            await asyncio.wait_for(task, 30)
        assert [e.data["text"] for e in got] == ["before", "a0", "a1", "a2", "b0", "b1", "b2"]
        return [e.position for e in got]

    assert asyncio.run(main()) == list(range(7))


def test_sync_subscribe_from_a_position(daemon):
    c = hs.Client(daemon.url, bot=BOT)
    for i in range(5):
        c.append(f"conv-{BOT}-1", [received(str(i))])
    it = c.subscribe(from_position=2)
    assert [next(it).position for _ in range(3)] == [2, 3, 4]
    it.close()
