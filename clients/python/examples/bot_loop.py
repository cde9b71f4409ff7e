"""The old bot's message loop (src/core/bot.py of Hanbiike/dating-cheater) against a running
daemon, with only the storage imports changed. Telegram and OpenAI are simulated: a few partners
write, the bot updates their profiles, replies, analyses the conversation (the no-key fallback,
unless OPENAI_API_KEY is set) and reads everything back.

    hybridstore --data-dir ./data serve &           # listening on http://127.0.0.1:8740
    HYBRIDSTORE_BOT=girlbot python examples/bot_loop.py

HYBRIDSTORE_URL (default http://127.0.0.1:8740, or unix:/path.sock) and HYBRIDSTORE_TOKEN (a
write token, if the daemon has tokens) say where the daemon is.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

# The two lines that change in the bot:
from hybridstore.compat import GirlsManager          # was: from src.core.girls_manager import GirlsManager
from hybridstore.compat import append_conversation   # was: from src.utils.logger import append_conversation

PARTNERS = {
    710001: ("Аня", ["Привет! 😊", "Я люблю горы и кофе", "Работаю дизайнером"]),
    710002: ("Маша", ["hi", "летом ездила в Стамбул", "а у тебя какое хобби?"]),
    710003: ("Катя", ["ку", "моя профессия — врач", "устала сегодня"]),
}


async def handle_inbound(girls: GirlsManager, chat_id: int, name: str, text: str) -> None:
    """The bot's NewMessage handler and process_user_message, storage calls in their order."""
    await append_conversation(chat_id, {"direction": "in", "text": text})
    girls_list = await girls.list_girls()  # the "active chats" gauge, per inbound message
    await girls.ensure_girl(chat_id, name)
    await girls.update_last_activity(chat_id)
    await girls.update_profile(chat_id, text)
    print(f"  in  {chat_id} {name}: {text!r} (active chats: {len(girls_list)})")


async def reply_series(girls: GirlsManager, chat_id: int, series: list[str], history: list[dict]) -> None:
    """The delayed reply of a 40 s series (without the wait)."""
    profile_context = await girls.get_profile_context(chat_id)
    focus_topic = await girls.suggest_focus_topic(chat_id)
    latest_summary = await girls.get_latest_summary_text(chat_id)
    previous = await girls.get_previous_response_id(chat_id)
    reply = f"Интересно! Расскажи про {focus_topic}?"  # the LLM's reply, simulated
    await girls.set_previous_response_id(chat_id, f"resp_{chat_id}_{int(time.time() * 1000)}")
    await append_conversation(chat_id, {"direction": "out", "text": reply})
    history += [{"content": t} for t in series] + [{"content": reply}]
    summary_id = await girls.analyze_and_summarize(chat_id, history[-10:])
    print(f"  out {chat_id}: {reply!r}")
    print(f"      context={profile_context!r} summary_before={latest_summary!r:.40} previous_response={previous}")
    print(f"      analysis {summary_id} stored")


async def main() -> None:
    os.environ.setdefault("HYBRIDSTORE_BOT", "girlbot")
    girls = GirlsManager()
    started = time.perf_counter()
    histories: dict[int, list[dict]] = {chat: [] for chat in PARTNERS}
    print(f"bot {os.environ['HYBRIDSTORE_BOT']} at {os.environ.get('HYBRIDSTORE_URL', 'http://127.0.0.1:8740')}")
    for round_ in range(len(next(iter(PARTNERS.values()))[1])):
        print(f"round {round_ + 1}")
        chats = list(PARTNERS.items())
        random.shuffle(chats)
        # Partners write at once; each chat is served in order, chats concurrently.
        await asyncio.gather(*(handle_inbound(girls, chat, name, texts[round_]) for chat, (name, texts) in chats))
        await asyncio.gather(*(reply_series(girls, chat, [texts[round_]], histories[chat]) for chat, (name, texts) in chats))
    print("read back (what the 30-minute timer and the admin commands see):")
    for g in await girls.list_girls():
        if g.chat_id not in PARTNERS:
            continue
        p = await girls.get_profile(g.chat_id)
        assert p is not None
        print(f"  {p.chat_id} {p.name}: message_count={p.message_count} last_activity={p.last_activity} "
              f"snapshots={len(p.profile)} summaries={len(p.summary)} previous_response_id={p.previous_response_id}")
        print(f"      latest summary: {await girls.get_latest_summary_text(g.chat_id)!r:.80}")
    print(f"done in {time.perf_counter() - started:.2f}s")


if __name__ == "__main__":
    asyncio.run(main())
