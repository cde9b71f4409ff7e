"""kill -9 of the daemon in the middle of a retrying write loop, then a restart on the same data
directory: every acknowledged write is in the log exactly once, and no write twice."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import httpx

import hybridstore as hs
from hybridstore import RetryPolicy, compat

BOT = "crashbot"
WRITES = 400
WRITERS = 4


def test_kill_9_during_retrying_writes(daemon):
    """Proves the retry rule end to end: 4 writers append 400 events (one per append, client
    event ids fixed before the first attempt) while the daemon is killed with SIGKILL twice and
    restarted on the same port and data directory; the writers ride it out through their
    retries. Afterwards each acknowledged write is in its stream exactly once, and no event is in
    twice (a retry whose first attempt was appended got the original result back)."""
    acked: list[list[int]] = [[] for _ in range(WRITERS)]
    failed: list[list[int]] = [[] for _ in range(WRITERS)]
    progress = threading.Semaphore(0)
    policy = RetryPolicy(attempts=30, base=0.02, cap=0.5)
    attempts = Counter()

    class Counting(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            attempts[request.method] += 1
            return super().handle_request(request)

    def writer(w: int) -> None:
        c = hs.Client(daemon.url, bot=BOT, retry=policy, timeout=5, transport=Counting())
        for i in range(w, WRITES, WRITERS):
            event = {"type": "MessageReceived", "data": {"telegram_message_id": i, "text": f"m{i}", "content_type": "text", "legacy_ts": None}}
            try:
                c.append(f"conv-{BOT}-{w}", [event])
                acked[w].append(i)
            except hs.HybridstoreError:
                failed[w].append(i)
            progress.release()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    for kill_after in (WRITES // 4, WRITES // 2):
        while sum(map(len, acked)) < kill_after:
            progress.acquire(timeout=10)
        daemon.kill()
        time.sleep(0.3)
        daemon.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)

    c = hs.Client(daemon.url, bot=BOT)
    total_acked = sum(map(len, acked))
    assert attempts["POST"] > WRITES, "the kills should have made some appends retry"
    assert total_acked >= WRITES - 8, f"too many writes failed through the restarts: {failed}"
    for w in range(WRITERS):
        texts = Counter(e.data["text"] for e in c.read_stream(f"conv-{BOT}-{w}", limit=10_000))
        assert all(texts[f"m{i}"] == 1 for i in acked[w]), "an acknowledged write is missing or doubled"
        assert all(n == 1 for n in texts.values()), f"a write landed twice: {[t for t, n in texts.items() if n > 1]}"
        assert set(texts) <= {f"m{i}" for i in acked[w] + failed[w]}


def test_kill_9_during_compat_writes(daemon, monkeypatch):
    """Proves the same for the compat layer: the bot's inbound sequence, with the daemon killed
    and restarted in the middle, leaves every acknowledged message once and message_count equal
    to the acknowledged inbound messages."""
    monkeypatch.setattr(compat, "_explicit", None)
    done: list[int] = []

    async def main() -> None:
        client = hs.AsyncClient(daemon.url, bot=BOT, retry=RetryPolicy(attempts=30, base=0.02, cap=0.5))
        girls = compat.GirlsManager(session=compat.Session(client))
        loop = asyncio.get_running_loop()
        killer = None
        for i in range(60):
            if i == 20:
                killer = loop.run_in_executor(None, lambda: (daemon.kill(), time.sleep(0.3), daemon.start()))
            await girls.append_conversation(77, {"direction": "in", "text": f"msg {i}"})
            await girls.ensure_girl(77, "Вера")
            await girls.update_last_activity(77)
            done.append(i)
        await killer
        p = await girls.load_profile(77)
        msgs = (await client.messages(77, limit=1000)).value
        assert [m.text for m in msgs] == [f"msg {i}" for i in done]
        assert p is not None and p.message_count == len(done) == 60
        await client.aclose()

    asyncio.run(main())
