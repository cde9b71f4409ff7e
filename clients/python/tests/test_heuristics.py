"""The old bot's logic kept in compat: the keyword heuristic, the context digest, the focus topic
(fields.json), the LLM analysis with its no-key fallback, backups."""

import asyncio
import json
import types

import pytest

import hybridstore as hs
from hybridstore import RetryPolicy, compat
from hybridstore.compat import DEFAULT_FIELDS, GirlProfile, GirlsManager, focus_topic, heuristic_snapshot, profile_context

from fake_daemon import FakeDaemon


def manager(fake, **kw):
    client = hs.AsyncClient("http://fake", bot=fake.bot, retry=RetryPolicy(attempts=2, base=0), transport=fake.transport())
    return GirlsManager(session=compat.Session(client), **kw)


def test_keyword_heuristic():
    assert heuristic_snapshot("  Я люблю горы  ") == {"interests": "Я люблю горы"}
    assert heuristic_snapshot("Моя РАБОТА — дизайн, ездила в Стамбул") == {"work": "Моя РАБОТА — дизайн, ездила в Стамбул", "travel": "Моя РАБОТА — дизайн, ездила в Стамбул"}
    assert heuristic_snapshot("Хобби: йога; профессия — врач; путешествия") == {
        "interests": "Хобби: йога; профессия — врач; путешествия",
        "work": "Хобби: йога; профессия — врач; путешествия",
        "travel": "Хобби: йога; профессия — врач; путешествия",
    }
    assert heuristic_snapshot("привет, как дела?") == {}


def test_context_digest():
    p = GirlProfile(1, profile={
        "20240101000000": {"old": "ignored"},
        "20240102000000": {"interests": ["горы", "кофе", "йога"], "job": {"title": 1, "company": 2, "city": 3, "x": 4}, "mood": "  🙂 " + "x" * 100, "empty": "  ", "n": 5},
    })
    assert profile_context(p) == "interests: горы; кофе | job: title, company, city | mood: " + ("🙂 " + "x" * 100)[:60]
    assert profile_context(GirlProfile(1)) == ""
    assert profile_context(GirlProfile(1, profile={"1": "plain " * 100})) == ("plain " * 100)[:300]
    long = GirlProfile(1, profile={"1": {f"k{i}": "v" * 60 for i in range(20)}})
    assert len(profile_context(long)) <= 300 and profile_context(long).count(" | ") == 4


def test_focus_topic():
    fields = list(DEFAULT_FIELDS)
    assert focus_topic(GirlProfile(1), fields) == "interests"
    assert focus_topic(GirlProfile(1, profile={"1": {"Interests": 1, "WORK": 2}}), fields) == "travel"
    assert focus_topic(GirlProfile(1, profile={"1": {f: 1 for f in fields}}), fields) == "interests"
    assert focus_topic(GirlProfile(1, profile={"1": "x"}), fields) == "interests"
    assert focus_topic(GirlProfile(1), []) == "facts"


def test_update_profile_and_topics_through_the_store(tmp_path):
    """Proves update_profile adds a snapshot only when a keyword matched (the profile exists
    either way), and suggest_focus_topic reads fields.json."""
    fields = tmp_path / "fields.json"
    fields.write_text(json.dumps(["work", "goals"]))
    fake = FakeDaemon()

    async def main():
        gm = manager(fake, fields_path=str(fields))
        await gm.update_profile(5, "привет")
        assert (await gm.load_profile(5)).profile == {}
        await gm.update_profile(5, "Я работаю врачом")
        p = await gm.load_profile(5)
        (sid, snap), = p.profile.items()
        assert len(sid) == 14 and sid.isdigit() and snap == {"work": "Я работаю врачом"}
        assert await gm.get_profile_context(5) == "work: Я работаю врачом"
        assert await gm.suggest_focus_topic(5) == "goals"

    asyncio.run(main())
    assert [[e["type"] for e in a["events"]] for a in fake.appends] == [["ProfileCreated"], ["ProfileFactsRecorded"]]


def test_analysis_without_a_key_falls_back(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setattr(compat, "_AI_CLIENT", None)
    fake = FakeDaemon()

    async def main():
        gm = manager(fake)
        assert await gm.analyze_and_summarize(3, [{"text": "  "}, {}]) is None
        sid = await gm.analyze_and_summarize(3, [{"text": "первое"}, {"content": "второе " * 100}])
        return sid, await gm.load_profile(3), await gm.get_latest_summary_text(3)

    sid, p, latest = asyncio.run(main())
    expected = ("первое\n" + ("второе " * 100).strip())[:300]
    assert p.summary == {sid: expected} and p.profile == {sid: {"notes": expected}} and latest == expected


class FakeLLM:
    def __init__(self, answer=None, fail=False):
        self.calls = []
        self.answer, self.fail = answer, fail
        self.responses = types.SimpleNamespace(create=self.create)

    async def create(self, **kw):
        self.calls.append(kw)
        if self.fail:
            raise RuntimeError("quota")
        return types.SimpleNamespace(output_text=self.answer)


def test_analysis_with_an_llm_client():
    """Proves the LLM gets the newest snapshot and the texts as the old prompt had them, its JSON
    (even fenced) is stored under a new id, and a failing call returns None and stores nothing."""
    fake = FakeDaemon()
    llm = FakeLLM('```json\n{"summary": "Любит горы", "profile": {"interests": ["горы"]}}\n```')

    async def main():
        gm = manager(fake, ai_client=llm, model="test-model")
        await gm.save_profile(GirlProfile(4, "Катя", profile={"20240101000000": {"city": "Москва"}}))
        sid = await gm.analyze_and_summarize(4, [{"text": "я люблю горы"}])
        p = await gm.load_profile(4)
        failing = manager(fake, ai_client=FakeLLM(fail=True))
        assert await failing.analyze_and_summarize(4, [{"text": "x"}]) is None
        notdict = manager(fake, ai_client=FakeLLM('{"summary": "", "profile": [1]}'))
        sid2 = await notdict.analyze_and_summarize(4, [{"text": "y"}])
        return sid, p, sid2, await gm.load_profile(4)

    sid, p, sid2, p2 = asyncio.run(main())
    assert p.summary[sid] == "Любит горы" and p.profile[sid] == {"interests": ["горы"]}
    call = llm.calls[0]
    assert call["model"] == "test-model" and call["max_output_tokens"] == 400
    assert call["input"] == 'previous_profile: {"city": "Москва"}\nlast_messages:\nя люблю горы'
    assert p2.summary[sid2] == "y" and p2.profile[sid2] == {"notes": [1]}


def test_backup_and_no_ops(tmp_path):
    fake = FakeDaemon()

    async def main():
        gm = manager(fake, backups_dir=str(tmp_path / "backups"))
        await gm.load()
        await gm.save()
        path = await gm.backup_daily_chat(8, [{"ts": 1, "direction": "in", "text": "a"}])
        return path

    path = asyncio.run(main())
    data = json.loads(path.read_text())
    assert path.exists() and path.parent.name == "8"
    assert data["chat_id"] == 8 and data["name"] == "" and data["messages"][0]["text"] == "a"


def test_old_constructor_signature():
    gm = GirlsManager("somewhere")
    assert str(gm._data_dir) == "somewhere"
    assert str(GirlsManager(path="old").__dict__["_data_dir"]) == "old"
