"""Erasing a person through the client, against a real daemon (started by the test): the receipt,
asking for it again, the reads that answer erased, the errors and the token needed, and the
compat layer reading an erased chat partner as a chat without a profile."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

import hybridstore as hs
from hybridstore import compat
from hybridstore.compat import GirlsManager

BOT = "erabot"
TOKENS = {
    "HYBRIDSTORE_READ_TOKEN": "read-token-0123456789",
    "HYBRIDSTORE_WRITE_TOKEN": "write-token-0123456789",
    "HYBRIDSTORE_ADMIN_TOKEN": "admin-token-0123456789",
}


def received(text: str, n: int = 0) -> dict:
    return {"type": "MessageReceived", "data": {"telegram_message_id": n, "text": text, "content_type": "text", "legacy_ts": None}}


def sent(text: str) -> dict:
    return {"type": "MessageSent", "data": {"text": text, "kind": "reply", "generation": None, "legacy_ts": None}}


def chat_with_texts(c: hs.Client, chat_id: int) -> int:
    """A chat partner with a profile, facts and two messages; returns how many events."""
    events = [
        {"type": "ProfileCreated", "data": {"name": "Аня Секретова"}},
        {"type": "ProfileFactsRecorded", "data": {"snapshot_id": "20240101000000", "facts": {"work": "врач в клинике"}}},
        received("мой адрес: Лесная 5", 1),
        sent("запомнил"),
    ]
    c.append(f"conv-{BOT}-{chat_id}", events, expected_version="no_stream")
    assert c.profile(chat_id).value.name == "Аня Секретова"
    return len(events)


class Counting(httpx.BaseTransport):
    """Forwards to the daemon and counts the requests."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.inner.handle_request(request)


def test_erase_a_chat_partner(daemon):
    """Proves erase(chat_id) answers a complete receipt (log-projection reached, the chat's key
    destroyed, every sealed event shredded), erasure_receipt gives the same receipt back, the
    profile/head/messages reads raise Erased naming the erasure's position, and the log keeps the
    events with blank texts marked erased."""
    with hs.Client(daemon.url, bot=BOT) as c:
        n = chat_with_texts(c, 42)
        r = c.erase(chat_id=42)
        assert r.complete and r.subject == {"kind": "chat", "bot": BOT, "chat_id": 42}
        assert [(s.sink, s.reached, s.position) for s in r.sinks] == [("log-projection", True, r.erasure_position)]
        assert r.keys_destroyed == [hs.ErasedKey(f"conv-{BOT}-42", 1)]
        assert (r.sealed_events_shredded, r.plaintext_events_remaining) == (n, 0)
        assert isinstance(r.erased_at, str) and isinstance(r.checked_at, str) and r.raw["receipt_id"] == r.receipt_id

        again = c.erasure_receipt(r.receipt_id)
        assert again.receipt_id == r.receipt_id and again.erasure_position == r.erasure_position
        assert again.complete and again.subject == r.subject and again.keys_destroyed == r.keys_destroyed

        for read in (lambda: c.profile(42), lambda: c.head(42), lambda: c.messages(42, limit=10)):
            with pytest.raises(hs.Erased) as info:
                read()
            assert info.value.erased_at == r.erasure_position and info.value.status == 410
            assert info.value.type == "/problems/erased"

        events = c.read_stream(f"conv-{BOT}-42")
        assert [e.type for e in events] == ["ProfileCreated", "ProfileFactsRecorded", "MessageReceived", "MessageSent", "ChatErased"]
        assert events[-1].position == r.erasure_position
        for e in events[:-1]:
            assert e.personal is not None and e.personal["state"] == "erased" and e.personal["erased_at"] == r.erasure_position
        assert events[0].data["name"] == "" and events[2].data["text"] == "" and events[3].data["text"] == ""
        dumped = json.dumps([e.data for e in events], ensure_ascii=False)
        assert "Секретова" not in dumped and "Лесная" not in dumped and "клиник" not in dumped

        with pytest.raises(hs.NotFound) as info:
            c.erasure_receipt(str(hs.uuid7()))
        assert type(info.value) is hs.NotFound


def test_erase_a_user(daemon):
    """Proves erase(user_id) destroys two keys (the user's and their private chat's), and that
    the user read, and the profile and messages of their private chat, raise Erased."""
    with hs.Client(daemon.url, bot=BOT) as c:
        identity = {"username": "anya_s", "first_name": "Аня", "last_name": "Секретова", "language_code": "ru"}
        c.append(f"user-{BOT}-1001", [{"type": "UserRegistered", "data": {"identity": identity}}])
        c.append(f"conv-{BOT}-1001", [received("привет, это я", 1)])
        assert c.user(1001).value.identity["last_name"] == "Секретова"

        r = c.erase(user_id=1001)
        assert r.complete and r.subject == {"kind": "user", "bot": BOT, "user_id": 1001}
        assert sorted(r.keys_destroyed, key=lambda k: k.stream) == [hs.ErasedKey(f"conv-{BOT}-1001", 1), hs.ErasedKey(f"user-{BOT}-1001", 1)]
        assert len(r.keys_destroyed) == 2 and r.sealed_events_shredded == 2
        with pytest.raises(hs.Erased) as info:
            c.user(1001)
        assert info.value.erased_at == r.erasure_position
        for read in (lambda: c.profile(1001), lambda: c.messages(1001)):
            with pytest.raises(hs.Erased) as info:
                read()
            assert info.value.erased_at == r.erasure_position


def test_erasing_twice_is_harmless(daemon):
    """Proves a second erasure of the same chat answers a new complete receipt at a later
    position, and the reads then name the later erasure."""
    with hs.Client(daemon.url, bot=BOT) as c:
        chat_with_texts(c, 7)
        first = c.erase(chat_id=7)
        second = c.erase(chat_id=7)
        assert second.complete and second.receipt_id != first.receipt_id
        assert second.erasure_position > first.erasure_position
        with pytest.raises(hs.Erased) as info:
            c.profile(7)
        assert info.value.erased_at == second.erasure_position
        assert c.erasure_receipt(first.receipt_id).erasure_position == first.erasure_position


def test_unknown_subject(daemon):
    """Proves erasing a chat or a user the log holds no event of raises UnknownSubject (a
    NotFound, 404) and appends nothing."""
    with hs.Client(daemon.url, bot=BOT) as c:
        c.append(f"conv-{BOT}-1", [received("someone else")])
        for kwargs in (dict(chat_id=999), dict(user_id=999)):
            with pytest.raises(hs.UnknownSubject) as info:
                c.erase(**kwargs)
            assert isinstance(info.value, hs.NotFound) and info.value.status == 404
            assert info.value.type == "/problems/unknown-subject"
        assert [e.position for e in c.read_all(0).events] == [0]


def test_both_or_neither_ids_raise_before_any_request(daemon):
    """Proves erase with both chat_id and user_id, or neither, raises ValueError without sending
    anything, and erases nobody."""
    counting = Counting()
    with hs.Client(daemon.url, bot=BOT, transport=counting) as c:
        c.append(f"conv-{BOT}-5", [received("hi")])
        before = len(counting.requests)
        with pytest.raises(ValueError):
            c.erase(chat_id=5, user_id=5)
        with pytest.raises(ValueError):
            c.erase()
        assert len(counting.requests) == before
        assert [m.text for m in c.messages(5).value] == ["hi"]


def test_erasure_needs_the_admin_token(make_daemon):
    """Proves a read or write token cannot erase or ask for a receipt (Forbidden, nothing
    erased), and the admin token can."""
    d = make_daemon(env=TOKENS)
    writer = hs.Client(d.url, token=TOKENS["HYBRIDSTORE_WRITE_TOKEN"], bot=BOT)
    writer.append(f"conv-{BOT}-3", [{"type": "ProfileCreated", "data": {"name": "Оля"}}])
    reader = hs.Client(d.url, token=TOKENS["HYBRIDSTORE_READ_TOKEN"], bot=BOT)
    for c in (reader, writer):
        with pytest.raises(hs.Forbidden) as info:
            c.erase(chat_id=3)
        assert info.value.status == 403
    assert reader.profile(3).value.name == "Оля"
    admin = hs.Client(d.url, token=TOKENS["HYBRIDSTORE_ADMIN_TOKEN"], bot=BOT)
    r = admin.erase(chat_id=3)
    assert r.complete
    with pytest.raises(hs.Forbidden):
        reader.erasure_receipt(r.receipt_id)
    with pytest.raises(hs.Erased):
        reader.profile(3)


def test_compat_reads_an_erased_chat_as_no_profile(daemon, monkeypatch, tmp_path):
    """Proves the old bot's API after an erasure: get_profile/load_profile give None,
    get_latest_summary_text None, list_girls leaves the chat out, append_conversation works,
    and ensure_girl makes a fresh profile (the old name, facts and summaries gone)."""
    monkeypatch.setattr(compat, "_explicit", None)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    async def main():
        client = hs.AsyncClient(daemon.url, bot=BOT)
        girls = GirlsManager(session=compat.Session(client), ai_client=None, backups_dir=str(tmp_path / "b"), fields_path=str(tmp_path / "fields.json"))
        await girls.ensure_girl(77, "Аня")
        await girls.append_conversation(77, {"direction": "in", "text": "я работаю врачом"})
        await girls.update_profile(77, "я работаю врачом")
        assert await girls.analyze_and_summarize(77, [{"text": "я работаю врачом"}]) is not None
        await girls.ensure_girl(78, "Маша")
        before = await girls.get_profile(77)
        assert before.name == "Аня" and before.profile and before.summary
        assert [p.chat_id for p in await girls.list_girls()] == [77, 78]

        r = await client.erase(chat_id=77)
        assert r.complete

        assert await girls.get_profile(77) is None and await girls.load_profile(77) is None
        assert await girls.get_latest_summary_text(77) is None
        assert [p.chat_id for p in await girls.list_girls()] == [78]
        await girls.append_conversation(77, {"direction": "in", "text": "снова привет"})
        assert [m.text for m in (await client.messages(77)).value] == ["снова привет"]

        fresh = await girls.ensure_girl(77, "Новая")
        assert fresh.to_dict() == compat.GirlProfile(chat_id=77, name="Новая").to_dict()
        assert (await girls.get_profile(77)).to_dict() == fresh.to_dict()
        assert await girls.get_profile_context(77) == ""
        assert await girls.suggest_focus_topic(77) == compat.DEFAULT_FIELDS[0]
        assert await girls.get_previous_response_id(77) is None
        assert [p.chat_id for p in await girls.list_girls()] == [77, 78]
        await client.aclose()

    asyncio.run(main())


def test_async_client_erases(daemon):
    """Proves AsyncClient.erase and erasure_receipt: a complete receipt, the same id asked again,
    the profile read raising Erased at the erasure's position, and ValueError for both ids."""

    async def main():
        async with hs.AsyncClient(daemon.unix_url, bot=BOT) as c:
            await c.append(f"conv-{BOT}-9", [{"type": "ProfileCreated", "data": {"name": "Вера"}}, received("секрет")])
            with pytest.raises(ValueError):
                await c.erase(chat_id=9, user_id=9)
            r = await c.erase(chat_id=9, wait_s=5)
            assert r.complete and [s.sink for s in r.sinks] == ["log-projection"]
            again = await c.erasure_receipt(r.receipt_id)
            assert again.receipt_id == r.receipt_id and again.complete
            with pytest.raises(hs.Erased) as info:
                await c.profile(9)
            assert info.value.erased_at == r.erasure_position
            with pytest.raises(hs.UnknownSubject):
                await c.erase(chat_id=10)

    asyncio.run(main())
