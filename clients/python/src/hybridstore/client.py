"""``Client`` (sync) and ``AsyncClient`` (asyncio): one method per route of API v1."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Iterator, Mapping, Optional, Sequence, Union

import httpx

from . import _core as core
from ._core import Config, Request, RetryPolicy
from .errors import HybridstoreError
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

__all__ = ["Client", "AsyncClient", "RetryPolicy"]

EventLike = Union[NewEvent, Mapping[str, Any]]

#: Connections kept open: httpx's default keeps only 20 idle, so 64 concurrent tasks would open
#: and close connections all the time.
DEFAULT_LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=256, keepalive_expiry=30.0)
# The async client's pools (see ``AsyncClient.__init__``) and the limits of each.
ASYNC_POOLS = 8
ASYNC_POOL_LIMITS = httpx.Limits(max_connections=32, max_keepalive_connections=32, keepalive_expiry=30.0)


class _Base:
    def __init__(
        self,
        url: Optional[str],
        token: Optional[str],
        bot: Optional[str],
        timeout: float,
        retry: Optional[RetryPolicy],
    ) -> None:
        self._cfg = Config.make(url, token, bot, timeout, retry)

    @property
    def bot(self) -> Optional[str]:
        """The default bot id of the typed reads (``HYBRIDSTORE_BOT``)."""
        return self._cfg.bot

    def _profile_req(self, chat_id: int, bot: Optional[str], min_position: Optional[int]) -> Request:
        return core.typed_request(self._cfg.need_bot(bot), f"profiles/{int(chat_id)}", min_position)


class Client(_Base):
    """A blocking client. ``url`` is ``http://host:port`` or ``unix:/path/to.sock``; ``token``
    the bearer token; ``bot`` the default bot of the typed reads. Each defaults from
    ``HYBRIDSTORE_URL`` / ``HYBRIDSTORE_TOKEN`` / ``HYBRIDSTORE_BOT``. ``transport`` replaces the
    network (tests pass an ``httpx.MockTransport``); ``limits`` the connection pool's bounds."""

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        bot: Optional[str] = None,
        *,
        timeout: float = 10.0,
        retry: Optional[RetryPolicy] = None,
        transport: Optional[httpx.BaseTransport] = None,
        limits: Optional[httpx.Limits] = None,
    ) -> None:
        super().__init__(url, token, bot, timeout, retry)
        if transport is None:
            uds = self._cfg.uds
            transport = httpx.HTTPTransport(uds=uds, limits=limits or DEFAULT_LIMITS)
        self._http = httpx.Client(
            base_url=self._cfg.base_url,
            headers=self._cfg.headers(),
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The one place requests are sent, with the retry loop.
    def _send(self, req: Request) -> Any:
        policy = self._cfg.retry if req.retry != "never" else core.NO_RETRY
        for attempt in range(policy.attempts):
            last = attempt == policy.attempts - 1
            try:
                response = self._http.request(
                    req.method,
                    req.path,
                    params=req.params or None,
                    json=req.json,
                    headers=req.headers or None,
                    timeout=req.timeout if req.timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
                return core.body_of(response, req)
            except httpx.TransportError as exc:
                if last or not core.retryable_transport(exc, req.retry):
                    raise core.connection_failed(exc, attempt + 1) from exc
            except HybridstoreError as exc:
                if last or not core.retryable_error(exc, req.retry):
                    raise
            time.sleep(policy.delay(attempt))
        raise AssertionError("unreachable")

    # --- writes ---
    def append(
        self,
        stream: str,
        events: Sequence[EventLike],
        expected_version: ExpectedVersion = "any",
        idempotency_key: Optional[str] = None,
    ) -> AppendResult:
        """Appends ``events`` atomically. Every event is given a client event id (UUIDv7) before
        the first attempt unless it has an id or a key (or ``idempotency_key`` is given, the
        ``Idempotency-Key`` header), so a retry never appends twice.

        Raises ``WrongExpectedVersion`` (``.actual_version``), ``IdempotencyConflict``,
        ``BadRequest`` (``.field``), ``PayloadTooLarge``, ``Forbidden``, …"""
        req = core.append_request(stream, events, expected_version, idempotency_key)
        return AppendResult.from_json(self._send(req))

    # --- log reads ---
    def read_stream(
        self,
        stream: str,
        from_version: Optional[int] = None,
        direction: str = "forward",
        limit: Optional[int] = None,
    ) -> list[RecordedEvent]:
        return core.parse_events(self._send(core.read_stream_request(stream, from_version, direction, limit)))

    def read_all(self, from_position: int = 0, limit: Optional[int] = None, wait_ms: Optional[int] = None) -> ReadAllResult:
        """Events from ``from_position`` on; with ``wait_ms``, a long poll that waits (up to 30 s)
        for the first event when there is none yet. ``next`` is where to read on."""
        req = core.read_all_request(from_position, limit, wait_ms, self._cfg.timeout)
        return core.parse_read_all(self._send(req), from_position)

    def subscribe(self, from_position: Optional[int] = None, *, reconnects: Optional[int] = None) -> Iterator[RecordedEvent]:
        """Recorded events as the daemon pushes them (SSE), from ``from_position`` (included;
        ``None``: no position is sent, and the daemon starts at the log's beginning). A dropped
        connection is resumed with ``Last-Event-ID`` (backoff between tries; ``reconnects``
        bounds consecutive failed tries, ``None``: forever). Each position is delivered once."""
        last_seen: Optional[int] = None
        failures = 0
        policy = self._cfg.retry
        while True:
            req = core.subscribe_request(from_position, last_seen)
            try:
                with self._http.stream(req.method, req.path, params=req.params or None, headers=req.headers, timeout=httpx.Timeout(self._cfg.timeout, read=None)) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise core.error_of(response)
                    failures = 0
                    parser = core.SseParser()
                    for line in response.iter_lines():
                        fields = parser.feed(line)
                        if fields is None:
                            continue
                        event = core.sse_event(fields)
                        if event is None or (last_seen is not None and event.position <= last_seen):
                            continue
                        last_seen = event.position
                        yield event
            except httpx.TransportError as exc:
                if not core.retryable_transport(exc, "always") or (reconnects is not None and failures >= reconnects):
                    raise core.connection_failed(exc, failures + 1) from exc
            except HybridstoreError as exc:
                if not core.retryable_error(exc, "always") or (reconnects is not None and failures >= reconnects):
                    raise
            time.sleep(policy.delay(min(failures, 10)))
            failures += 1

    # --- typed reads ---
    def profile(self, chat_id: int, bot: Optional[str] = None, min_position: Optional[int] = None) -> Read[Optional[ProfileDocument]]:
        """The chat's profile document (``value`` ``None``: it has none).

        Raises ``Erased`` (``.erased_at``: the erasure's position) when the chat partner was
        erased and nothing of them was written since: erased is not absent."""
        return core.parse_read(self._send(self._profile_req(chat_id, bot, min_position)), ProfileDocument.from_json)

    def head(self, chat_id: int, bot: Optional[str] = None, min_position: Optional[int] = None) -> Read[Optional[ConversationHead]]:
        """The conversation's counts and times (``value`` ``None``: no conversation).

        Raises ``Erased`` when the chat partner was erased and nothing was written since."""
        req = core.typed_request(self._cfg.need_bot(bot), f"conversations/{int(chat_id)}/head", min_position)
        return core.parse_read(self._send(req), ConversationHead.from_json)

    def messages(self, chat_id: int, limit: int = 20, bot: Optional[str] = None, min_position: Optional[int] = None) -> Read[list[Message]]:
        """The conversation's last ``limit`` messages, oldest first (``[]``: none).

        Raises ``Erased`` when the chat partner was erased and nothing was written since."""
        req = core.typed_request(self._cfg.need_bot(bot), f"conversations/{int(chat_id)}/messages", min_position, limit=limit)
        read = core.parse_read(self._send(req), core.parse_messages)
        return read if read.value is not None else Read([], read.applied_end, read.source, read.state)

    def user(self, user_id: int, bot: Optional[str] = None, min_position: Optional[int] = None) -> Read[Optional[User]]:
        """The user record (``value`` ``None``: no such user).

        Raises ``Erased`` when the user was erased and nothing of them was written since."""
        req = core.typed_request(self._cfg.need_bot(bot), f"users/{int(user_id)}", min_position)
        return core.parse_read(self._send(req), User.from_json)

    def config(self, scope: str, key: str, bot: Optional[str] = None, min_position: Optional[int] = None) -> Read[Any]:
        req = core.typed_request(self._cfg.need_bot(bot), f"config/{core._q(scope)}/{core._q(key)}", min_position)
        return core.parse_read(self._send(req), lambda v: v)

    def daily(self, date: str, bot: Optional[str] = None, min_position: Optional[int] = None) -> Read[Any]:
        """The analytics counters of ``date`` (``YYYY-MM-DD``, or a ``datetime.date``)."""
        req = core.typed_request(self._cfg.need_bot(bot), f"analytics/{core._q(str(date))}", min_position)
        return core.parse_read(self._send(req), lambda v: v)

    def component_state(self, component: str, bot: Optional[str] = None, min_position: Optional[int] = None) -> ComponentState:
        req = core.typed_request(self._cfg.need_bot(bot), f"components/{core._q(component)}", min_position)
        return core.parse_component_state(self._send(req))

    # --- admin ---
    def migrations(self, bot: Optional[str] = None) -> list[ComponentStatus]:
        return core.parse_migrations(self._send(core.migrations_request(bot)))

    def set_migration(self, bot: str, component: str, to: str, force: bool = False, reason: Optional[str] = None, wait_s: Optional[float] = None) -> Transition:
        req = core.set_migration_request(bot, component, to, force, reason, wait_s, self._cfg.timeout)
        return Transition.from_json(self._send(req))

    def erase(self, chat_id: Optional[int] = None, user_id: Optional[int] = None, bot: Optional[str] = None, wait_s: Optional[float] = 10) -> Receipt:
        """Erases a person (admin token): a chat partner (``chat_id``) or a user and their private
        chat (``user_id``) — exactly one of the two, else ``ValueError`` before any request. The
        daemon appends the erasure, destroys their keys, drops them from every projection, waits
        up to ``wait_s`` seconds (whole seconds, at most 600) for every sink to reach the erasure
        and answers the receipt (``complete`` false when a sink had not: ask again with
        ``erasure_receipt``). The request's timeout covers ``wait_s``.

        Erasing twice is harmless. Retried only when it cannot have reached the daemon; a
        timeout or a lost answer raises ``ConnectionFailed`` (call it again). Raises
        ``UnknownSubject`` (a ``NotFound``) when the log holds no event of the subject,
        ``Forbidden`` for a read or write token, ``BadRequest``, …"""
        req = core.erase_request(self._cfg.need_bot(bot), chat_id, user_id, wait_s, self._cfg.timeout)
        return core.parse_receipt(self._send(req))

    def erasure_receipt(self, receipt_id: str, bot: Optional[str] = None, wait_s: Optional[float] = 10) -> Receipt:
        """The receipt ``receipt_id`` (admin token), checked again when it was not complete
        (waiting up to ``wait_s`` for the sinks; the daemon records it again once complete).
        Raises ``NotFound`` when the bot has no such receipt (``BadRequest`` when the id is not
        a receipt id at all)."""
        req = core.receipt_request(self._cfg.need_bot(bot), receipt_id, wait_s, self._cfg.timeout)
        return core.parse_receipt(self._send(req))

    # --- health ---
    def livez(self) -> bool:
        return self._health("/livez")

    def readyz(self) -> bool:
        """True when the log is open, recovered and writable (200); False on 503."""
        return self._health("/readyz")

    def _health(self, path: str) -> bool:
        try:
            self._send(core.health_request(path))
            return True
        except HybridstoreError as exc:
            if exc.status == 503:
                return False
            raise


class AsyncClient(_Base):
    """The asyncio twin of ``Client``: the same methods, as coroutines; ``subscribe`` is an async
    iterator."""

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        bot: Optional[str] = None,
        *,
        timeout: float = 10.0,
        retry: Optional[RetryPolicy] = None,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        limits: Optional[httpx.Limits] = None,
    ) -> None:
        super().__init__(url, token, bot, timeout, retry)
        # Several pools, used in turn: httpcore's async pool scans every connection it holds on
        # each request under one lock, so one pool of 64 busy connections is slower than one
        # connection (measured: 579 vs 758 appends/s); 8 pools of 8 are not.
        if transport is not None:
            transports: list[httpx.AsyncBaseTransport] = [transport]
        else:
            uds = self._cfg.uds
            per_pool = limits or ASYNC_POOL_LIMITS
            transports = [httpx.AsyncHTTPTransport(uds=uds, limits=per_pool) for _ in range(ASYNC_POOLS)]
        self._pools = [
            httpx.AsyncClient(
                base_url=self._cfg.base_url,
                headers=self._cfg.headers(),
                timeout=timeout,
                transport=t,
            )
            for t in transports
        ]
        self._next_pool = 0

    @property
    def _http(self) -> httpx.AsyncClient:
        pool = self._pools[self._next_pool]
        self._next_pool = (self._next_pool + 1) % len(self._pools)
        return pool

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, req: Request) -> Any:
        policy = self._cfg.retry if req.retry != "never" else core.NO_RETRY
        for attempt in range(policy.attempts):
            last = attempt == policy.attempts - 1
            try:
                response = await self._http.request(
                    req.method,
                    req.path,
                    params=req.params or None,
                    json=req.json,
                    headers=req.headers or None,
                    timeout=req.timeout if req.timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
                return core.body_of(response, req)
            except httpx.TransportError as exc:
                if last or not core.retryable_transport(exc, req.retry):
                    raise core.connection_failed(exc, attempt + 1) from exc
            except HybridstoreError as exc:
                if last or not core.retryable_error(exc, req.retry):
                    raise
            await asyncio.sleep(policy.delay(attempt))
        raise AssertionError("unreachable")

    async def append(
        self,
        stream: str,
        events: Sequence[EventLike],
        expected_version: ExpectedVersion = "any",
        idempotency_key: Optional[str] = None,
    ) -> AppendResult:
        """See ``Client.append``."""
        req = core.append_request(stream, events, expected_version, idempotency_key)
        return AppendResult.from_json(await self._send(req))

    async def read_stream(
        self,
        stream: str,
        from_version: Optional[int] = None,
        direction: str = "forward",
        limit: Optional[int] = None,
    ) -> list[RecordedEvent]:
        return core.parse_events(await self._send(core.read_stream_request(stream, from_version, direction, limit)))

    async def read_all(self, from_position: int = 0, limit: Optional[int] = None, wait_ms: Optional[int] = None) -> ReadAllResult:
        req = core.read_all_request(from_position, limit, wait_ms, self._cfg.timeout)
        return core.parse_read_all(await self._send(req), from_position)

    async def subscribe(self, from_position: Optional[int] = None, *, reconnects: Optional[int] = None) -> AsyncIterator[RecordedEvent]:
        """See ``Client.subscribe``: resumes after a dropped connection (or a daemon restart)
        with ``Last-Event-ID``, delivering each position once."""
        last_seen: Optional[int] = None
        failures = 0
        policy = self._cfg.retry
        while True:
            req = core.subscribe_request(from_position, last_seen)
            try:
                async with self._http.stream(req.method, req.path, params=req.params or None, headers=req.headers, timeout=httpx.Timeout(self._cfg.timeout, read=None)) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise core.error_of(response)
                    failures = 0
                    parser = core.SseParser()
                    async for line in response.aiter_lines():
                        fields = parser.feed(line)
                        if fields is None:
                            continue
                        event = core.sse_event(fields)
                        if event is None or (last_seen is not None and event.position <= last_seen):
                            continue
                        last_seen = event.position
                        yield event
            except httpx.TransportError as exc:
                if not core.retryable_transport(exc, "always") or (reconnects is not None and failures >= reconnects):
                    raise core.connection_failed(exc, failures + 1) from exc
            except HybridstoreError as exc:
                if not core.retryable_error(exc, "always") or (reconnects is not None and failures >= reconnects):
                    raise
            await asyncio.sleep(policy.delay(min(failures, 10)))
            failures += 1

    async def profile(self, chat_id: int, bot: Optional[str] = None, min_position: Optional[int] = None) -> Read[Optional[ProfileDocument]]:
        """See ``Client.profile``; raises ``Erased`` for an erased chat partner."""
        return core.parse_read(await self._send(self._profile_req(chat_id, bot, min_position)), ProfileDocument.from_json)

    async def head(self, chat_id: int, bot: Optional[str] = None, min_position: Optional[int] = None) -> Read[Optional[ConversationHead]]:
        """See ``Client.head``; raises ``Erased`` for an erased chat partner."""
        req = core.typed_request(self._cfg.need_bot(bot), f"conversations/{int(chat_id)}/head", min_position)
        return core.parse_read(await self._send(req), ConversationHead.from_json)

    async def messages(self, chat_id: int, limit: int = 20, bot: Optional[str] = None, min_position: Optional[int] = None) -> Read[list[Message]]:
        """See ``Client.messages``; raises ``Erased`` for an erased chat partner."""
        req = core.typed_request(self._cfg.need_bot(bot), f"conversations/{int(chat_id)}/messages", min_position, limit=limit)
        read = core.parse_read(await self._send(req), core.parse_messages)
        return read if read.value is not None else Read([], read.applied_end, read.source, read.state)

    async def user(self, user_id: int, bot: Optional[str] = None, min_position: Optional[int] = None) -> Read[Optional[User]]:
        """See ``Client.user``; raises ``Erased`` for an erased user."""
        req = core.typed_request(self._cfg.need_bot(bot), f"users/{int(user_id)}", min_position)
        return core.parse_read(await self._send(req), User.from_json)

    async def config(self, scope: str, key: str, bot: Optional[str] = None, min_position: Optional[int] = None) -> Read[Any]:
        req = core.typed_request(self._cfg.need_bot(bot), f"config/{core._q(scope)}/{core._q(key)}", min_position)
        return core.parse_read(await self._send(req), lambda v: v)

    async def daily(self, date: str, bot: Optional[str] = None, min_position: Optional[int] = None) -> Read[Any]:
        req = core.typed_request(self._cfg.need_bot(bot), f"analytics/{core._q(str(date))}", min_position)
        return core.parse_read(await self._send(req), lambda v: v)

    async def component_state(self, component: str, bot: Optional[str] = None, min_position: Optional[int] = None) -> ComponentState:
        req = core.typed_request(self._cfg.need_bot(bot), f"components/{core._q(component)}", min_position)
        return core.parse_component_state(await self._send(req))

    async def migrations(self, bot: Optional[str] = None) -> list[ComponentStatus]:
        return core.parse_migrations(await self._send(core.migrations_request(bot)))

    async def set_migration(self, bot: str, component: str, to: str, force: bool = False, reason: Optional[str] = None, wait_s: Optional[float] = None) -> Transition:
        req = core.set_migration_request(bot, component, to, force, reason, wait_s, self._cfg.timeout)
        return Transition.from_json(await self._send(req))

    async def erase(self, chat_id: Optional[int] = None, user_id: Optional[int] = None, bot: Optional[str] = None, wait_s: Optional[float] = 10) -> Receipt:
        """See ``Client.erase``."""
        req = core.erase_request(self._cfg.need_bot(bot), chat_id, user_id, wait_s, self._cfg.timeout)
        return core.parse_receipt(await self._send(req))

    async def erasure_receipt(self, receipt_id: str, bot: Optional[str] = None, wait_s: Optional[float] = 10) -> Receipt:
        """See ``Client.erasure_receipt``."""
        req = core.receipt_request(self._cfg.need_bot(bot), receipt_id, wait_s, self._cfg.timeout)
        return core.parse_receipt(await self._send(req))

    async def livez(self) -> bool:
        return await self._health("/livez")

    async def readyz(self) -> bool:
        return await self._health("/readyz")

    async def _health(self, path: str) -> bool:
        try:
            await self._send(core.health_request(path))
            return True
        except HybridstoreError as exc:
            if exc.status == 503:
                return False
            raise
