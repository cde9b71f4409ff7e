"""The Python client's figures (issue 10, "Benchmarks"): from one asyncio process with 64 tasks,
durable appends per second and the p50/p99 latency of the profile and last-20-messages reads.

    hybridstore --data-dir ./bench-data serve &
    python clients/python/examples/bench.py [--url http://127.0.0.1:8740] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import hybridstore as hs



def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1e6


async def main(url: str | None, seconds: float, bot: str, TASKS: int) -> None:
    async with hs.AsyncClient(url, bot=bot) as c:
        for chat in range(TASKS):
            await c.append(f"conv-{bot}-{chat}", [{"type": "ProfileCreated", "data": {"name": f"n{chat}"}}])
        appended = 0
        deadline = time.perf_counter() + seconds

        async def appender(chat: int) -> None:
            nonlocal appended
            while time.perf_counter() < deadline:
                await c.append(f"conv-{bot}-{chat}", [{"type": "MessageReceived", "data": {"telegram_message_id": None, "text": "hello there", "content_type": "text", "legacy_ts": None}}])
                appended += 1

        start = time.perf_counter()
        await asyncio.gather(*(appender(chat) for chat in range(TASKS)))
        elapsed = time.perf_counter() - start
        print(f"appends: {appended} in {elapsed:.2f}s = {appended / elapsed:,.0f}/s with {TASKS} tasks (one event each, durable)")

        lat: dict[str, list[float]] = {"profile": [], "messages(20)": []}
        deadline = time.perf_counter() + seconds

        async def reader(chat: int) -> None:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                await c.profile(chat)
                lat["profile"].append(time.perf_counter() - t)
                t = time.perf_counter()
                await c.messages(chat, limit=20)
                lat["messages(20)"].append(time.perf_counter() - t)

        await asyncio.gather(*(reader(chat) for chat in range(TASKS)))
        for name, samples in lat.items():
            print(f"{name}: {len(samples)} reads, p50 {pct(samples, 0.5):,.0f} µs, p99 {pct(samples, 0.99):,.0f} µs ({TASKS} concurrent tasks)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--url")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--bot", default="benchbot")
    ap.add_argument("--tasks", type=int, default=64)
    args = ap.parse_args()
    asyncio.run(main(args.url, args.seconds, args.bot, args.tasks))
