"""compat's diff: a whole-document save_profile → the events that make the stored document equal
to the saved one, and their effect through the fake daemon's copy of the projection."""

import asyncio
import json

import httpx
import pytest

import hybridstore as hs
from hybridstore import RetryPolicy, compat
from hybridstore.compat import GirlProfile, GirlsManager, profile_events

from fake_daemon import FakeDaemon, problem

BASE = {"chat_id": 7, "name": "Аня", "last_activity": None, "message_count": 0, "summary": {}, "profile": {}, "previous_response_id": None}


def doc(**changes):
    d = json.loads(json.dumps(BASE))
    d.update(changes)
    return d


def types(events):
    return [e["type"] for e in events]


def test_new_profile():
    """Proves a first save is ProfileCreated, facts, summaries, then the counters (only when they
    are not a new profile's)."""
    assert profile_events(None, doc()) == [{"type": "ProfileCreated", "data": {"name": "Аня"}}]
    full = doc(last_activity="2024-11-24T21:34:12Z", message_count=3, summary={"a1": "s"}, profile={"a1": {"x": 1}}, previous_response_id="resp_1")
    assert profile_events(None, full) == [
        {"type": "ProfileCreated", "data": {"name": "Аня"}},
        {"type": "ProfileFactsRecorded", "data": {"snapshot_id": "a1", "facts": {"x": 1}}},
        {"type": "ConversationAnalyzed", "data": {"analysis_id": "a1", "summary": "s"}},
        {"type": "ProfileLegacyStateImported", "data": {"last_activity": "2024-11-24T21:34:12Z", "message_count": 3, "previous_response_id": "resp_1"}},
    ]


def test_changes_become_the_smallest_events():
    """Proves each kind of change maps to its event, and an unchanged document to none."""
    stored = doc(summary={"a1": "s"}, profile={"a1": {"x": 1}})
    assert profile_events(stored, stored) == []
    assert profile_events(stored, doc(name="Анна", summary={"a1": "s"}, profile={"a1": {"x": 1}})) == [{"type": "ProfileRenamed", "data": {"name": "Анна"}}]
    added = doc(summary={"a1": "s", "a2": "t"}, profile={"a1": {"x": 1}, "a2": {"y": [1]}})
    assert profile_events(stored, added) == [
        {"type": "ProfileFactsRecorded", "data": {"snapshot_id": "a2", "facts": {"y": [1]}}},
        {"type": "ConversationAnalyzed", "data": {"analysis_id": "a2", "summary": "t"}},
    ]
    changed = doc(summary={"a1": "s2"}, profile={"a1": {"x": 1.0}})  # 1.0 is not 1 in JSON
    assert types(profile_events(stored, changed)) == ["ProfileFactsRecorded", "ConversationAnalyzed"]
    counters = doc(summary={"a1": "s"}, profile={"a1": {"x": 1}}, message_count=1, last_activity="t")
    assert profile_events(stored, counters) == [
        {"type": "ProfileLegacyStateImported", "data": {"last_activity": "t", "message_count": 1, "previous_response_id": None}}
    ]


def test_what_no_event_expresses_is_deleted_and_recreated():
    """Proves a removed snapshot or summary becomes ProfileDeleted + the whole document again
    (one atomic append), and a deleted profile ProfileDeleted."""
    stored = doc(summary={"a1": "s"}, profile={"a1": {"x": 1}, "a2": {}}, message_count=4)
    target = doc(summary={"a1": "s"}, profile={"a1": {"x": 1}}, message_count=4)
    assert types(profile_events(stored, target)) == ["ProfileDeleted", "ProfileCreated", "ProfileFactsRecorded", "ConversationAnalyzed", "ProfileLegacyStateImported"]
    assert types(profile_events(stored, doc(profile=stored["profile"]))) == ["ProfileDeleted", "ProfileCreated", "ProfileFactsRecorded", "ProfileFactsRecorded"]
    assert profile_events(stored, None) == [{"type": "ProfileDeleted", "data": {}}]
    assert profile_events(None, None) == []


def test_documents_the_store_cannot_hold_are_refused():
    for bad in [doc(profile={"s": "not an object"}), doc(message_count=-1), doc(summary={"a": 3})]:
        with pytest.raises(compat.ValidationError):
            profile_events(None, bad)


def test_girl_profile_validates_as_the_old():
    p = GirlProfile(chat_id="42", name="  Аня  ")
    assert p.chat_id == 42 and p.name == "Аня"
    assert GirlProfile(1, name="x" * 100).name == "x" * 64 and GirlProfile(1, name=None).name == ""
    with pytest.raises(compat.ValidationError):
        GirlProfile(chat_id=0)
    with pytest.raises(compat.DataStorageError):
        GirlProfile.from_dict({"name": "no chat id"})
    d = {"chat_id": 5, "name": "n", "last_activity": 1.5, "message_count": 2, "summary": {"1": "s"}, "profile": {"1": {}}, "previous_response_id": "r"}
    assert GirlProfile.from_dict(d).to_dict() == d
    assert GirlProfile.from_dict({"chat_id": 5}).to_dict() == {**BASE, "chat_id": 5, "name": ""}


def manager(fake: FakeDaemon) -> GirlsManager:
    client = hs.AsyncClient("http://fake", bot=fake.bot, retry=RetryPolicy(attempts=3, base=0), transport=fake.transport())
    return GirlsManager(session=compat.Session(client))


def appended_types(fake):
    return [[e["type"] for e in a["events"]] for a in fake.appends]


def test_save_profile_through_the_store():
    """Proves save_profile appends the diff with the stream's exact version, and the stored
    document (the fake's projection) then equals the saved one; a save of the same document
    appends nothing."""
    fake = FakeDaemon()

    async def main():
        gm = manager(fake)
        p = GirlProfile(7, "Аня", summary={"a1": "s"}, profile={"a1": {"x": 1}})
        await gm.save_profile(p)
        p.profile["a2"] = {"y": 2}
        p.message_count = 9
        await gm.save_profile(p)
        await gm.save_profile(p)
        del p.profile["a1"]
        await gm.save_profile(p)
        return p, await gm.load_profile(7)

    saved, loaded = asyncio.run(main())
    assert loaded.to_dict() == saved.to_dict()
    assert appended_types(fake) == [
        ["ProfileCreated", "ProfileFactsRecorded", "ConversationAnalyzed"],
        ["ProfileFactsRecorded", "ProfileLegacyStateImported"],
        ["ProfileDeleted", "ProfileCreated", "ProfileFactsRecorded", "ConversationAnalyzed", "ProfileLegacyStateImported"],
    ]
    assert [a["expected_version"] for a in fake.appends] == ["no_stream", 2, 4]


def test_append_conversation_keeps_the_old_counters():
    """Proves a message is MessageReceived/MessageSent with legacy_ts = the old ts, and, on a chat
    with a profile, ends with ProfileLegacyStateImported restoring the counters the projection
    bumps: message_count stays the old bot's (update_last_activity's) counter."""
    fake = FakeDaemon()

    async def main():
        gm = manager(fake)
        await gm.append_conversation(7, {"direction": "in", "text": "привет"})  # before any profile
        await gm.ensure_girl(7, "Аня")
        await gm.update_last_activity(7)
        await gm.append_conversation(7, {"direction": "out", "text": "hi", "ts": "2024-11-24T21:00:00Z"})
        return await gm.load_profile(7)

    p = asyncio.run(main())
    assert appended_types(fake) == [["MessageReceived"], ["ProfileCreated"], ["ProfileLegacyStateImported"], ["MessageSent", "ProfileLegacyStateImported"]]
    assert p.message_count == 1 and p.last_activity.endswith("Z") and "rfc3339" not in p.last_activity
    msg = fake.appends[3]["events"][0]
    assert msg["data"] == {"text": "hi", "kind": "reply", "generation": None, "legacy_ts": "2024-11-24T21:00:00Z"}
    assert msg["occurred_at"] == 1732482000000
    first = fake.appends[0]["events"][0]["data"]
    assert first["text"] == "привет" and first["legacy_ts"].endswith("Z") and first["content_type"] == "text"
    with pytest.raises(compat.ValidationError):
        asyncio.run(manager(fake).append_conversation(7, {"direction": "sideways", "text": "?"}))


def test_a_concurrent_writer_is_not_overwritten():
    """Proves a write that meets 409 (another process appended in between) reads again and
    applies its change to the new state: two increments both count."""
    fake = FakeDaemon()
    state = {"raced": False}

    def race(request):
        if request.method == "POST" and not state["raced"] and fake.profiles.get(7):
            state["raced"] = True
            # Another process bumps the counter first.
            other = fake.profiles[7]
            fake._append("conv-bot-7", {"expected_version": "any", "events": [{"type": "ProfileLegacyStateImported", "data": {"last_activity": "x", "message_count": other["message_count"] + 1, "previous_response_id": None}}]}, None)
        return None

    async def main():
        gm = manager(fake)
        await gm.ensure_girl(7)
        fake.intercept = race
        await gm.update_last_activity(7)
        return await gm.load_profile(7)

    p = asyncio.run(main())
    assert state["raced"] and p.message_count == 2
    conflicts = [r for r in fake.requests if r.method == "POST"]
    assert len(conflicts) == 3  # ensure, the refused attempt, the recomputed one


def test_list_girls_reads_only_what_changed():
    """Proves list_girls follows the log from where it stopped and re-reads only the profiles of
    chats that had events since, and sees deletions."""
    fake = FakeDaemon()

    async def main():
        gm = manager(fake)
        for chat in (1, 2, 3):
            await gm.ensure_girl(chat, f"n{chat}")
        first = [p.chat_id for p in await gm.list_girls()]
        fake.requests.clear()
        await gm.list_girls()
        idle = list(fake.requests)
        await gm.update_last_activity(2)
        await gm.delete_girl(3)
        fake.requests.clear()
        after = [(p.chat_id, p.message_count) for p in await gm.list_girls()]
        return first, idle, after, list(fake.requests)

    first, idle, after, reqs = asyncio.run(main())
    assert first == [1, 2, 3]
    assert [r.url.path for r in idle] == ["/v1/all"]
    assert after == [(1, 0), (2, 1)]
    profile_reads = sorted(r.url.path for r in reqs if "/profiles/" in r.url.path)
    assert profile_reads == ["/v1/bots/bot/profiles/2", "/v1/bots/bot/profiles/3"]
