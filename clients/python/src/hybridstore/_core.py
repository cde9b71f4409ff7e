"""What the sync and the async client share: configuration, the request of each route, the
retry rule and the parsing of answers. Only sending differs between them."""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Mapping, Optional, Sequence, Union
from urllib.parse import quote

import httpx

from ._uuid7 import uuid7
from .errors import (
    ConnectionFailed,
    HybridstoreError,
    NotServedHere,
    Timeout,
    Unavailable,
    problem_to_exception,
)
from .types import (
    AppendResult,
    ComponentState,
    ComponentStatus,
    ConversationHead,
    ExpectedVersion,
    Message,
    NewEvent,
    ProfileDocument,
    Read,
    ReadAllResult,
    Receipt,
    RecordedEvent,
    Transition,
    User,
)

DEFAULT_URL = "http://127.0.0.1:8740"
#: The longest long poll the daemon allows (``wait_ms``).
WAIT_MS_MAX = 30_000
#: The longest an erasure (or a receipt asked again) waits for the sinks (``wait_s``).
ERASE_WAIT_S_MAX = 600

#: ``always``: idempotent, retried after any transport error, 503 and 504.
#: ``unsent``: retried only when the request cannot have reached the daemon (connect errors) or
#: the daemon said it did nothing (503 ``unavailable``).
RetryMode = Literal["always", "unsent", "never"]


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff: ``attempts`` tries in all, the n-th wait
    ``min(cap, base * 2**n)`` with ±``jitter`` (a fraction). The defaults ride out a daemon
    restart of a few seconds (≈ 6 s of waiting in all)."""

    attempts: int = 9
    base: float = 0.05
    cap: float = 2.0
    jitter: float = 0.2

    def delay(self, retry: int) -> float:
        d = float(min(self.cap, self.base * (2.0**retry)))
        if self.jitter:
            d *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, d)


NO_RETRY = RetryPolicy(attempts=1)


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    retry: RetryMode = "always"
    timeout: Optional[float] = None
    #: ``json`` (the default), ``text`` (livez/readyz).
    expect: str = "json"


def _q(segment: Union[str, int]) -> str:
    return quote(str(segment), safe="")


def _strip_none(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


@dataclass
class Config:
    """Where the daemon is and how to talk to it; every field defaults from the environment
    (``HYBRIDSTORE_URL``, ``HYBRIDSTORE_TOKEN``, ``HYBRIDSTORE_BOT``)."""

    url: str
    token: Optional[str]
    bot: Optional[str]
    timeout: float
    retry: RetryPolicy

    @staticmethod
    def make(
        url: Optional[str],
        token: Optional[str],
        bot: Optional[str],
        timeout: float,
        retry: Optional[RetryPolicy],
    ) -> "Config":
        url = url or os.environ.get("HYBRIDSTORE_URL") or DEFAULT_URL
        if token is None:
            token = os.environ.get("HYBRIDSTORE_TOKEN") or None
        bot = bot or os.environ.get("HYBRIDSTORE_BOT") or None
        return Config(url, token, bot, timeout, retry or RetryPolicy())

    @property
    def uds(self) -> Optional[str]:
        """The Unix socket's path for ``unix:/path`` URLs (also ``unix:///path``)."""
        if self.url.startswith("unix:"):
            path = self.url[len("unix:") :]
            if path.startswith("//"):
                path = path[2:]
            return path
        return None

    @property
    def base_url(self) -> str:
        return "http://localhost" if self.uds else self.url.rstrip("/")

    def headers(self) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": "hybridstore-client-python/0.1"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def need_bot(self, bot: Optional[str]) -> str:
        bot = bot or self.bot
        if not bot:
            raise ValueError("no bot id: pass bot=... or set HYBRIDSTORE_BOT")
        return bot


# --- requests -------------------------------------------------------------------------------


def prepare_events(
    events: Iterable[Union[NewEvent, Mapping[str, Any]]], idempotency_key: Optional[str]
) -> list[dict[str, Any]]:
    """The events' JSON, each given a client event id (UUIDv7) unless it has one or a key (the
    append-wide ``Idempotency-Key`` gives it one): fixed here, before the first attempt, so that
    every retry sends the same ids and the daemon answers a retry of a recorded append with its
    original result instead of appending again."""
    out = []
    for e in events:
        ev = NewEvent.of(e)
        if ev.id is None and ev.key is None and idempotency_key is None:
            ev.id = str(uuid7())
        out.append(ev.to_json())
    return out


def append_request(
    stream: str,
    events: Sequence[Union[NewEvent, Mapping[str, Any]]],
    expected_version: ExpectedVersion,
    idempotency_key: Optional[str],
) -> Request:
    if not (expected_version in ("any", "no_stream") or (isinstance(expected_version, int) and not isinstance(expected_version, bool) and expected_version >= 0)):
        raise ValueError(f"expected_version must be 'any', 'no_stream' or a version >= 0, not {expected_version!r}")
    headers = {}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    body = {"expected_version": expected_version, "events": prepare_events(events, idempotency_key)}
    return Request("POST", f"/v1/streams/{_q(stream)}/events", json=body, headers=headers)


def read_stream_request(stream: str, from_version: Optional[int], direction: str, limit: Optional[int]) -> Request:
    if direction not in ("forward", "backward"):
        raise ValueError("direction must be 'forward' or 'backward'")
    params = _strip_none({"from": from_version, "direction": direction, "limit": limit})
    return Request("GET", f"/v1/streams/{_q(stream)}", params=params)


def read_all_request(from_position: int, limit: Optional[int], wait_ms: Optional[int], timeout: float) -> Request:
    if wait_ms is not None:
        wait_ms = max(0, min(int(wait_ms), WAIT_MS_MAX))
    params = _strip_none({"from": from_position, "limit": limit, "wait_ms": wait_ms})
    return Request("GET", "/v1/all", params=params, timeout=timeout + (wait_ms or 0) / 1000)


def typed_request(bot: str, tail: str, min_position: Optional[int], **params: Any) -> Request:
    params["min_position"] = min_position
    return Request("GET", f"/v1/bots/{_q(bot)}/{tail}", params=_strip_none(params))


def migrations_request(bot: Optional[str]) -> Request:
    return Request("GET", "/v1/migrations", params=_strip_none({"bot": bot}))


def set_migration_request(
    bot: str, component: str, to: str, force: bool, reason: Optional[str], wait_s: Optional[float], timeout: float
) -> Request:
    body: dict[str, Any] = {"to": to, "force": force}
    if reason is not None:
        body["reason"] = reason
    if wait_s is not None:
        body["wait_s"] = wait_s
    # A transition is not idempotent (a second one after a lost answer is refused), so it is
    # retried only when it cannot have reached the daemon.
    return Request(
        "POST",
        f"/v1/migrations/{_q(bot)}/{_q(component)}",
        json=body,
        retry="unsent",
        timeout=timeout + (wait_s if wait_s is not None else 60),
    )


def _erase_wait(wait_s: Optional[float]) -> Optional[int]:
    """``wait_s`` as the daemon takes it: whole seconds (a fraction rounded up), ``None``: the
    daemon's default (10 s). Over 600 the daemon waits 600."""
    if wait_s is None:
        return None
    if isinstance(wait_s, bool) or not isinstance(wait_s, (int, float)) or not math.isfinite(wait_s) or wait_s < 0:
        raise ValueError(f"wait_s must be a number of seconds >= 0, not {wait_s!r}")
    return int(math.ceil(wait_s))


def _erase_timeout(timeout: float, wait: Optional[int]) -> float:
    # The daemon answers once the sinks reached the erasure or ``wait_s`` ran out: the request's
    # time must cover that wait, or the client gives up on an erasure that is done.
    return timeout + min(wait if wait is not None else 10, ERASE_WAIT_S_MAX)


def _subject_id(value: Any, name: str) -> int:
    # An id, not anything int() takes: True or 4.7 is a caller's bug, not chat 1 or 4.
    if isinstance(value, (bool, float)):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, not {value!r}") from None


def erase_request(bot: str, chat_id: Optional[int], user_id: Optional[int], wait_s: Optional[float], timeout: float) -> Request:
    if (chat_id is None) == (user_id is None):
        raise ValueError("erase: give exactly one of chat_id and user_id")
    body: dict[str, Any] = (
        {"chat": _subject_id(chat_id, "chat_id")} if chat_id is not None else {"user": _subject_id(user_id, "user_id")}
    )
    wait = _erase_wait(wait_s)
    if wait is not None:
        body["wait_s"] = wait
    # Erasing twice is harmless, but not free (the daemon appends a second erasure and records a
    # second receipt), and a timeout here usually means a slow sink, not a lost request: so it is
    # retried only when it cannot have reached the daemon (connect errors) or the daemon said it
    # did nothing (503 unavailable); never after a timeout or a dropped answer (the caller gets
    # ``ConnectionFailed`` and may call ``erase`` again), never on a 4xx.
    return Request(
        "POST",
        f"/v1/bots/{_q(bot)}/erasures",
        json=body,
        retry="unsent",
        timeout=_erase_timeout(timeout, wait),
    )


def receipt_request(bot: str, receipt_id: str, wait_s: Optional[float], timeout: float) -> Request:
    receipt_id = str(receipt_id)
    if not receipt_id:
        raise ValueError("receipt_id must not be empty")
    wait = _erase_wait(wait_s)
    return Request(
        "GET",
        f"/v1/bots/{_q(bot)}/erasures/{_q(receipt_id)}",
        params=_strip_none({"wait_s": wait}),
        timeout=_erase_timeout(timeout, wait),
    )


def parse_receipt(body: Mapping[str, Any]) -> Receipt:
    return Receipt.from_json(body)


def health_request(path: str) -> Request:
    return Request("GET", path, retry="never", expect="text")


# --- answers --------------------------------------------------------------------------------


def error_of(response: httpx.Response) -> HybridstoreError:
    try:
        body = response.json()
    except (json.JSONDecodeError, ValueError):
        body = None
    return problem_to_exception(response.status_code, body, response.text if body is None else "")


def body_of(response: httpx.Response, request: Request) -> Any:
    if response.status_code >= 400:
        raise error_of(response)
    if request.expect == "text":
        return response.text
    return response.json()


def retryable_error(exc: HybridstoreError, mode: RetryMode) -> bool:
    if mode == "never" or isinstance(exc, NotServedHere):
        return False
    if isinstance(exc, Unavailable):
        return True
    return mode == "always" and isinstance(exc, Timeout)


def retryable_transport(exc: httpx.TransportError, mode: RetryMode) -> bool:
    if mode == "never":
        return False
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return True
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.ProxyError)):
        return False
    return mode == "always"


def connection_failed(exc: httpx.TransportError, attempts: int) -> ConnectionFailed:
    return ConnectionFailed(f"daemon unreachable after {attempts} attempt(s): {type(exc).__name__}: {exc}")


def parse_read(body: Mapping[str, Any], convert: Callable[[Any], Any]) -> Read[Any]:
    value = body.get("value")
    return Read(
        value=None if value is None else convert(value),
        applied_end=int(body.get("applied_end", 0)),
        source=body.get("source"),
        state=body.get("state"),
    )


def parse_events(body: Mapping[str, Any]) -> list[RecordedEvent]:
    return [RecordedEvent.from_json(e) for e in body.get("events", [])]


def parse_read_all(body: Mapping[str, Any], from_position: int) -> ReadAllResult:
    events = parse_events(body)
    nxt = body.get("next")
    if nxt is None:
        nxt = events[-1].position + 1 if events else from_position
    return ReadAllResult(events, int(nxt))


def parse_messages(value: Any) -> list[Message]:
    return [Message.from_json(m) for m in value]


def parse_component_state(body: Mapping[str, Any]) -> ComponentState:
    return ComponentState(str(body.get("value")), int(body.get("applied_end", 0)))


def parse_migrations(body: Mapping[str, Any]) -> list[ComponentStatus]:
    return [ComponentStatus.from_json(c) for c in body.get("components", [])]


# --- Server-Sent Events ---------------------------------------------------------------------


class SseParser:
    """Incremental parser of a ``text/event-stream``: feed lines, get ``(id, event, data)``
    triples at each blank line. Comments (``: keep-alive``) are skipped."""

    def __init__(self) -> None:
        self._id: Optional[str] = None
        self._event: Optional[str] = None
        self._data: list[str] = []

    def feed(self, line: str) -> Optional[tuple[Optional[str], str, str]]:
        line = line.rstrip("\r\n")
        if line == "":
            if not self._data and self._event is None:
                self._id = None
                return None
            out = (self._id, self._event or "message", "\n".join(self._data))
            self._id, self._event, self._data = None, None, []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "id":
            self._id = value
        elif name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


def subscribe_request(from_position: Optional[int], last_seen: Optional[int]) -> Request:
    """The first connection asks ``?from=P`` (P included, as for ``/v1/all``); a reconnection
    sends ``Last-Event-ID`` with the last position delivered (the daemon resumes after it)."""
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    params: dict[str, Any] = {}
    if last_seen is not None:
        headers["Last-Event-ID"] = str(last_seen)
    elif from_position is not None:
        params["from"] = from_position
    return Request("GET", "/v1/subscribe", params=params, headers=headers, expect="stream")


def sse_event(fields: tuple[Optional[str], str, str]) -> Optional[RecordedEvent]:
    _id, kind, data = fields
    if kind != "event" or not data:
        return None
    return RecordedEvent.from_json(json.loads(data))
