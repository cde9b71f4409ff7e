"""Problem documents → exceptions (docs/api-v1.md "Errors"), through the client."""

import httpx
import pytest

import hybridstore as hs
from hybridstore import RetryPolicy

FAST = RetryPolicy(attempts=3, base=0, jitter=0)


def client_answering(status, body, headers=None):
    def handler(request):
        if isinstance(body, (dict, list)):
            return httpx.Response(status, json=body, headers=headers or {"content-type": "application/problem+json"})
        return httpx.Response(status, text=body)

    return hs.Client("http://daemon", bot="bot", retry=FAST, transport=httpx.MockTransport(handler))


def prob(status, kind, **extra):
    return {"type": f"/problems/{kind}", "title": kind, "status": status, "detail": f"the {kind} detail", **extra}


@pytest.mark.parametrize(
    "status,kind,cls",
    [
        (400, "bad-request", hs.BadRequest),
        (401, "unauthorized", hs.Unauthorized),
        (403, "forbidden", hs.Forbidden),
        (404, "not-found", hs.NotFound),
        (404, "unknown-subject", hs.UnknownSubject),
        (410, "erased", hs.Erased),
        (409, "wrong-expected-version", hs.WrongExpectedVersion),
        (409, "transition-refused", hs.TransitionRefused),
        (413, "payload-too-large", hs.PayloadTooLarge),
        (422, "idempotency-conflict", hs.IdempotencyConflict),
        (503, "unavailable", hs.Unavailable),
        (503, "not-served-here", hs.NotServedHere),
        (504, "timeout", hs.Timeout),
        (500, "internal", hs.InternalError),
    ],
)
def test_each_problem_type_maps_to_its_exception(status, kind, cls):
    """Proves every problem kind of the table raises its own exception class, carrying status,
    type and detail (409 has two kinds: told apart by type, not status)."""
    c = client_answering(status, prob(status, kind))
    with pytest.raises(cls) as info:
        c.profile(1)
    e = info.value
    assert type(e) is cls and isinstance(e, hs.HybridstoreError)
    assert (e.status, e.type, e.detail) == (status, f"/problems/{kind}", f"the {kind} detail")


def test_extra_members():
    """Proves the extra members are exposed: actual_version (number or null), field,
    limit_bytes, reason, component/state."""
    c = client_answering(409, prob(409, "wrong-expected-version", stream="conv-bot-1", expected=3, actual_version=7))
    with pytest.raises(hs.WrongExpectedVersion) as info:
        c.append("conv-bot-1", [{"type": "ProfileDeleted", "data": {}}], expected_version=3)
    assert info.value.actual_version == 7 and info.value.stream == "conv-bot-1" and info.value.expected == 3

    c = client_answering(409, prob(409, "wrong-expected-version", stream="s", expected=0, actual_version=None))
    with pytest.raises(hs.WrongExpectedVersion) as info:
        c.append("s", [{"type": "ProfileDeleted", "data": {}}], expected_version=0)
    assert info.value.actual_version is None

    c = client_answering(400, prob(400, "bad-request", field="/events/0/data/name"))
    with pytest.raises(hs.BadRequest) as info:
        c.append("s", [{"type": "ProfileCreated", "data": {}}])
    assert info.value.field == "/events/0/data/name"

    c = client_answering(413, prob(413, "payload-too-large", limit_bytes=1048576))
    with pytest.raises(hs.PayloadTooLarge) as info:
        c.append("s", [{"type": "ProfileCreated", "data": {"name": "x"}}])
    assert info.value.limit_bytes == 1048576

    c = client_answering(409, prob(409, "transition-refused", reason="shadow reads disagree"))
    with pytest.raises(hs.TransitionRefused) as info:
        c.set_migration("bot", "profiles", "database-only")
    assert info.value.reason == "shadow reads disagree"

    c = client_answering(503, prob(503, "not-served-here", component="profiles", state="dual-write"))
    with pytest.raises(hs.NotServedHere) as info:
        c.profile(1)
    assert (info.value.component, info.value.state) == ("profiles", "dual-write")


def test_erased_carries_its_position_and_unknown_subject_is_a_not_found():
    """Proves a 410 erased exposes erased_at (the erasure's position; None when the problem has
    none), and unknown-subject is caught by `except NotFound` (code written before it existed)."""
    c = client_answering(410, prob(410, "erased", erased_at=1234))
    with pytest.raises(hs.Erased) as info:
        c.messages(42)
    assert info.value.erased_at == 1234 and info.value.status == 410
    c = client_answering(410, "gone")
    with pytest.raises(hs.Erased) as info:
        c.user(42)
    assert info.value.erased_at is None
    c = client_answering(404, prob(404, "unknown-subject"))
    with pytest.raises(hs.NotFound) as info:
        c.erase(chat_id=42)
    assert type(info.value) is hs.UnknownSubject


def test_non_problem_bodies_map_by_status():
    """Proves an error without a problem document (a proxy's page) still maps by status."""
    for status, cls in [(400, hs.BadRequest), (401, hs.Unauthorized), (413, hs.PayloadTooLarge), (504, hs.Timeout), (418, hs.HybridstoreError)]:
        c = client_answering(status, "<html>nope</html>")
        with pytest.raises(cls) as info:
            c.profile(1)
        assert info.value.status == status and "nope" in info.value.detail


def test_readyz_false_on_503_and_livez_text():
    c = client_answering(503, "not ready")
    assert c.readyz() is False
    c = client_answering(200, "ok")
    assert c.livez() is True


def test_unix_url_and_env_defaults(monkeypatch):
    """Proves unix:PATH becomes a Unix-socket transport, and the environment gives the URL,
    token (as a bearer header) and bot."""
    monkeypatch.setenv("HYBRIDSTORE_URL", "unix:/run/x.sock")
    monkeypatch.setenv("HYBRIDSTORE_TOKEN", "sekret")
    monkeypatch.setenv("HYBRIDSTORE_BOT", "girlbot")
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200, json={"value": None, "applied_end": 0})

    c = hs.Client(transport=httpx.MockTransport(handler))
    assert c._cfg.uds == "/run/x.sock" and c.bot == "girlbot"
    assert c.profile(5).value is None
    assert seen[0].headers["authorization"] == "Bearer sekret"
    assert seen[0].url.path == "/v1/bots/girlbot/profiles/5"
    monkeypatch.delenv("HYBRIDSTORE_BOT")
    with pytest.raises(ValueError):
        hs.Client(transport=httpx.MockTransport(handler)).profile(5)
