"""compat against a real daemon: the old bot's own call sequence ending JSON-equal to what
`hybridstore export-legacy` writes, and the committed legacy fixtures read back through
GirlsManager.load_profile equal to their files."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import hybridstore as hs
from hybridstore import compat
from hybridstore.compat import GirlsManager, append_conversation  # the bot's two imports

from conftest import FIXTURES, run_cli

BOT = "girlbot"


@pytest.fixture
def as_the_bot(monkeypatch, tmp_path):
    """The bot's environment: the daemon's address and the bot id, no OpenAI key (the no-key
    fallback), a clock that advances a second per reading (analysis ids never collide, so the
    expectations below are exact), backups and fields.json in a scratch directory."""

    def configure(daemon):
        monkeypatch.setenv("HYBRIDSTORE_URL", daemon.url)
        monkeypatch.setenv("HYBRIDSTORE_BOT", BOT)
        monkeypatch.delenv("HYBRIDSTORE_TOKEN", raising=False)
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        monkeypatch.setenv("BACKUPS_DIR", str(tmp_path / "backups"))
        monkeypatch.setattr(compat, "_AI_CLIENT", None)
        monkeypatch.setattr(compat, "_explicit", None)
        clock = [datetime(2024, 11, 24, 18, 0, 0, 123456)]

        def tick():
            clock[0] += timedelta(seconds=1)
            return clock[0]

        monkeypatch.setattr(compat, "_utcnow", tick)
        monkeypatch.chdir(tmp_path)

    return configure


async def inbound(girls: GirlsManager, chat_id: int, name: str, text: str) -> None:
    """What src/core/bot.py does per inbound message."""
    await append_conversation(chat_id, {"direction": "in", "text": text})
    girls_list = await girls.list_girls()  # the bot's "active chats" gauge
    assert isinstance(girls_list, list)
    await girls.ensure_girl(chat_id, name)
    await girls.update_last_activity(chat_id)
    await girls.update_profile(chat_id, text)


async def reply(girls: GirlsManager, chat_id: int, series: list[str], history: list[dict], n: int) -> str:
    """What the delayed reply does once per series."""
    context = await girls.get_profile_context(chat_id)
    topic = await girls.suggest_focus_topic(chat_id)
    summary = await girls.get_latest_summary_text(chat_id)
    prev = await girls.get_previous_response_id(chat_id)
    assert isinstance(context, str) and topic in compat.DEFAULT_FIELDS
    text = f"reply {n} (topic {topic}, after {prev}, knowing {summary!r:.20})"
    await girls.set_previous_response_id(chat_id, f"resp_{chat_id}_{n}")
    await append_conversation(chat_id, {"direction": "out", "text": text})
    history.extend([{"role": "user", "content": t} for t in series] + [{"role": "assistant", "content": text}])
    sid = await girls.analyze_and_summarize(chat_id, history[-10:])
    assert sid is not None and re.fullmatch(r"\d{14}", sid)
    return sid


def test_the_bot_sequence_ends_equal_to_export_legacy(daemon, as_the_bot, tmp_path):
    """Proves the old bot's calls (inbound, reply, the backup timer, the admin commands) through
    compat give the documents the old bot would have kept (message_count = inbound messages,
    last_activity = the last update_last_activity, the heuristic's snapshots, the fallback
    analyses, the response id), and that after the daemon stops, export-legacy writes exactly
    those documents and conversations (ts as the old bot wrote them)."""
    as_the_bot(daemon)
    chats = {
        501: ("Аня", ["Привет!", "Я люблю горы и кофе", "А ты чем занимаешься?"], ["Работаю дизайнером", "Летом ездила в Стамбул 🇹🇷"]),
        502: ("Маша", ["hi"], ["ok", "моя профессия — врач"]),
    }

    async def main():
        girls = GirlsManager()  # the old call: the store comes from the environment
        expected = {}
        for chat_id, (name, first, second) in chats.items():
            history: list[dict] = []
            sids = []
            for i, series in enumerate([first, second]):
                for text in series:
                    await inbound(girls, chat_id, name, text)
                sids.append(await reply(girls, chat_id, series, history, i))
            expected[chat_id] = (first + second, sids)
        # The backup timer and the admin commands.
        for g in await girls.list_girls():
            path = await girls.backup_daily_chat(g.chat_id, [])
            assert path.exists()
        await girls.ensure_girl(503, "admin-made")
        assert (await girls.get_profile(503)).name == "admin-made"
        assert await girls.delete_girl(503) is True and await girls.delete_girl(503) is False
        assert await girls.get_profile(503) is None
        await girls.load()
        await girls.save()

        profiles = {p.chat_id: p for p in await girls.list_girls()}
        assert sorted(profiles) == [501, 502]
        c = hs.AsyncClient()
        conversations = {}
        for chat_id in chats:
            msgs = (await c.messages(chat_id, limit=100)).value
            conversations[chat_id] = [{"ts": m.legacy_ts, "direction": m.direction, "text": m.text} for m in msgs]
            assert (await girls.load_profile(chat_id)).to_dict() == profiles[chat_id].to_dict()
        await c.aclose()
        return expected, profiles, conversations

    expected, profiles, conversations = asyncio.run(main())

    for chat_id, (texts, sids) in expected.items():
        p = profiles[chat_id]
        name = chats[chat_id][0]
        assert p.name == name
        assert p.message_count == len(texts)
        assert re.fullmatch(r"2024-11-24T18:\d\d:\d\d\.123456Z", p.last_activity)
        assert p.previous_response_id == f"resp_{chat_id}_1"
        assert sorted(p.summary) == sorted(sids)
        matched = [t for t in texts if compat.heuristic_snapshot(t)]
        snapshots = [s for s in p.profile.values() if "notes" not in s]
        assert [s for s in snapshots] == [compat.heuristic_snapshot(t) for t in matched]
        assert all(p.profile[sid] == {"notes": p.summary[sid]} for sid in sids)
        conv = conversations[chat_id]
        assert [(m["direction"], m["text"]) for m in conv if m["direction"] == "in"] == [("in", t) for t in texts]
        assert [m["direction"] for m in conv].count("out") == 2
        assert all(re.fullmatch(r"2024-11-24T18:\d\d:\d\d\.123456Z", m["ts"]) for m in conv)

    assert daemon.stop() == 0
    out = tmp_path / "exported"
    run_cli("--data-dir", str(daemon.data_dir), "export-legacy", "--bot", BOT, "--out", str(out))
    assert sorted(f.name for f in (out / "girls_data").iterdir()) == ["501.json", "502.json"]
    for chat_id in chats:
        assert json.loads((out / "girls_data" / f"{chat_id}.json").read_text()) == profiles[chat_id].to_dict()
        assert json.loads((out / "conversations" / f"{chat_id}.json").read_text()) == conversations[chat_id]


def importable_fixtures(proc) -> dict[int, Path]:
    """The fixtures' profile files the importer takes: `{chat_id}.json` names, minus the chats it
    reports as not imported (malformed files)."""
    failed = {int(m) for m in re.findall(r"\(chat (-?\d+) not imported\)", proc.stdout + proc.stderr)}
    files = {}
    for f in (FIXTURES / "girls_data").iterdir():
        m = re.fullmatch(r"(-?\d+)\.json", f.name)
        if m and str(int(m.group(1))) == m.group(1) and int(m.group(1)) not in failed:
            files[int(m.group(1))] = f
    return files


def test_imported_fixtures_read_back_equal_to_their_files(make_daemon, tmp_path, monkeypatch):
    """Proves the committed legacy fixtures imported with `hybridstore import-legacy` read back
    through GirlsManager.load_profile equal to their files (odd times, NULs, floats kept), that
    list_girls lists exactly them, and that a compat write on an imported chat keeps the
    document equal to what export-legacy then writes."""
    data = tmp_path / "data"
    proc = run_cli("--data-dir", str(data), "import-legacy", "--bot", BOT, "--girls-dir", str(FIXTURES / "girls_data"), "--conversations-dir", str(FIXTURES / "conversations"), check=False)
    assert proc.returncode in (0, 1), proc.stderr
    files = importable_fixtures(proc)
    assert 999 not in files and 100001 in files and len(files) >= 4
    daemon = make_daemon(data)
    monkeypatch.setattr(compat, "_explicit", None)

    async def main():
        client = hs.AsyncClient(daemon.unix_url, bot=BOT)
        girls = GirlsManager(session=compat.Session(client))
        for chat_id, f in sorted(files.items()):
            loaded = await girls.load_profile(chat_id)
            assert loaded is not None, chat_id
            assert loaded.to_dict() == json.loads(f.read_text(encoding="utf-8")), chat_id
        assert sorted(p.chat_id for p in await girls.list_girls()) == sorted(files)
        assert await girls.load_profile(100004) is None  # a conversation without a profile file
        await girls.append_conversation(100001, {"direction": "in", "text": "я снова тут, ездила в Стамбул"})
        await girls.update_last_activity(100001)
        await girls.update_profile(100001, "я снова тут, ездила в Стамбул")
        after = await girls.load_profile(100001)
        await client.aclose()
        return after

    after = asyncio.run(main())
    before = json.loads(files[100001].read_text(encoding="utf-8"))
    assert after.message_count == before["message_count"] + 1
    assert {k: v for k, v in after.summary.items()} == before["summary"]
    assert daemon.stop() == 0
    out = tmp_path / "exported"
    run_cli("--data-dir", str(data), "export-legacy", "--bot", BOT, "--out", str(out))
    assert json.loads((out / "girls_data" / "100001.json").read_text()) == after.to_dict()
    for chat_id, f in files.items():
        if chat_id != 100001:
            assert json.loads((out / "girls_data" / f"{chat_id}.json").read_text()) == json.loads(f.read_text(encoding="utf-8"))
