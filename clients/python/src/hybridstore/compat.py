"""The old bot's storage API over the store: a drop-in for ``src/core/girls_manager.py``
(``GirlProfile``, ``GirlsManager``) and ``src/utils/logger.py`` (``append_conversation``) of
``Hanbiike/dating-cheater``. The bot changes its two imports and nothing else::

    from hybridstore.compat import GirlsManager, GirlProfile   # was src.core.girls_manager
    from hybridstore.compat import append_conversation         # was src.utils.logger

Writes become events on the chat's stream ``conv-{bot}-{chat}``; reads come from the daemon's
typed routes. Where the daemon is, and which bot this is: ``HYBRIDSTORE_URL``,
``HYBRIDSTORE_TOKEN``, ``HYBRIDSTORE_BOT`` (or ``use_client()``).

How each write is made: read the chat's stream version and its profile document, compute the
events that turn the stored document into the wanted one (``profile_events``), append them in one
atomic append that expects that exact version; when another writer got in between (409), read and
compute again. So concurrent bot processes never lose each other's updates, and a retried append
(same client event ids) never lands twice.

Erasure: the old bot knew nothing of it. A chat partner erased (``Client.erase``, ``hybridstore
erase``) reads here as a chat with no profile — ``load_profile``/``get_profile`` return ``None``,
``list_girls`` leaves them out, ``ensure_girl`` (and every write) creates a fresh profile, the
context helpers give their empty values — where the typed reads raise ``Erased``: the old code
paths never see that exception.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import random
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .client import AsyncClient
from .errors import Erased, HybridstoreError, WrongExpectedVersion

logger = logging.getLogger(__name__)

__all__ = [
    "GirlProfile",
    "GirlsManager",
    "append_conversation",
    "use_client",
    "profile_events",
    "Session",
    "HanBotError",
    "DataStorageError",
    "ValidationError",
    "DEFAULT_FIELDS",
]

#: The old bot's default topic list (used when ``fields.json`` is missing or empty).
DEFAULT_FIELDS = ["interests", "work", "travel", "music_movies", "values", "family", "goals", "fears", "facts"]

#: How often a write is computed again when another writer appended to the stream meanwhile.
WRITE_ATTEMPTS_MAX = 8


# --- the old bot's exceptions and validators (src/utils/exceptions.py, validators.py) --------


class HanBotError(Exception):
    """Base of the old bot's errors (``src/utils/exceptions.py``)."""

    def __init__(self, message: str, details: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def __str__(self) -> str:
        if self.details:
            return f"{self.message} | Details: {self.details}"
        return self.message


class DataStorageError(HanBotError):
    """A profile could not be built, stored or read."""


class ValidationError(HanBotError):
    """Invalid input (a chat id, a record)."""


def _validate_chat_id(chat_id: Any) -> int:
    if not isinstance(chat_id, int):
        try:
            chat_id = int(chat_id)
        except (ValueError, TypeError):
            raise ValidationError(f"Invalid chat_id: {chat_id}", {"type": type(chat_id)})
    if chat_id == 0:
        raise ValidationError("chat_id cannot be zero")
    return int(chat_id)


def _validate_name(name: Any) -> str:
    if name is None:
        return ""
    if not isinstance(name, str):
        name = str(name)
    name = name.strip()
    if len(name) > 64:
        name = name[:64]
    return str(name)


# --- GirlProfile -----------------------------------------------------------------------------


@dataclass
class GirlProfile:
    """A chat partner's profile: exactly the old ``girls_data/{chat_id}.json`` document."""

    chat_id: int
    name: str = ""
    last_activity: Optional[str] = None
    message_count: int = 0
    summary: Dict[str, str] = field(default_factory=dict)
    profile: Dict[str, Any] = field(default_factory=dict)
    previous_response_id: Optional[str] = None

    def __post_init__(self) -> None:
        self.chat_id = _validate_chat_id(self.chat_id)
        self.name = _validate_name(self.name)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "chat_id": self.chat_id,
            "name": self.name,
            "last_activity": self.last_activity,
            "message_count": self.message_count,
            "summary": self.summary,
            "profile": self.profile,
            "previous_response_id": self.previous_response_id,
        }

    @staticmethod
    def from_dict(data: Dict[str, Any]) -> "GirlProfile":
        try:
            return GirlProfile(
                chat_id=data.get("chat_id", 0),
                name=data.get("name", ""),
                last_activity=data.get("last_activity"),
                message_count=data.get("message_count", 0),
                summary=data.get("summary", {}),
                profile=data.get("profile", {}),
                previous_response_id=data.get("previous_response_id"),
            )
        except Exception as e:
            logger.error(f"Error creating GirlProfile from data: {e}")
            raise DataStorageError(f"Invalid profile data: {e}")


# --- the diff: stored document → wanted document, as events ---------------------------------


def _canon(value: Any) -> str:
    # JSON equality, not Python's (where 1 == 1.0 == True).
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _ev(type_: str, **data: Any) -> Dict[str, Any]:
    return {"type": type_, "data": data}


def _state_event(doc: Dict[str, Any]) -> Dict[str, Any]:
    return _ev(
        "ProfileLegacyStateImported",
        last_activity=doc.get("last_activity"),
        message_count=doc.get("message_count", 0),
        previous_response_id=doc.get("previous_response_id"),
    )


def _check_document(doc: Dict[str, Any]) -> None:
    count = doc.get("message_count", 0)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValidationError(f"message_count must be an integer >= 0, not {count!r}")
    if not isinstance(doc.get("name", ""), str):
        raise ValidationError("name must be a string")
    for sid, facts in (doc.get("profile") or {}).items():
        if not isinstance(facts, dict):
            raise ValidationError(f"profile snapshot {sid!r} is not a JSON object (the store keeps facts as objects)")
    for aid, text in (doc.get("summary") or {}).items():
        if not isinstance(text, str):
            raise ValidationError(f"summary {aid!r} is not a string")
    rid = doc.get("previous_response_id")
    if rid is not None and not isinstance(rid, str):
        raise ValidationError("previous_response_id must be a string or None")


def _counters(doc: Dict[str, Any]) -> List[Any]:
    return [doc.get("last_activity"), doc.get("message_count", 0), doc.get("previous_response_id")]


def _creation_events(target: Dict[str, Any]) -> List[Dict[str, Any]]:
    # The importer's order: created, facts, summaries, then the counters (only when they are not
    # the defaults a new profile starts with).
    events = [_ev("ProfileCreated", name=target.get("name", ""))]
    for sid, facts in (target.get("profile") or {}).items():
        events.append(_ev("ProfileFactsRecorded", snapshot_id=sid, facts=facts))
    for aid, text in (target.get("summary") or {}).items():
        events.append(_ev("ConversationAnalyzed", analysis_id=aid, summary=text))
    if _canon(_counters(target)) != _canon([None, 0, None]):
        events.append(_state_event(target))
    return events


def profile_events(stored: Optional[Dict[str, Any]], target: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The events that make the stored profile document ``stored`` (``None``: no profile) equal
    to ``target`` (``None``: deleted), in the projection's rules (src/projection/profiles.rs):

    - no profile yet: ``ProfileCreated``, then one ``ProfileFactsRecorded`` per snapshot, one
      ``ConversationAnalyzed`` per summary, and ``ProfileLegacyStateImported`` when the counters
      are not a new profile's;
    - a name changed: ``ProfileRenamed``; a snapshot or summary new or changed: recorded again
      under its id (which replaces it); ``last_activity``/``message_count``/
      ``previous_response_id`` changed: ``ProfileLegacyStateImported`` with all three exactly;
    - a snapshot or summary removed (no event removes one): ``ProfileDeleted`` and the whole
      document created again, in the same (atomic) append;
    - ``target`` ``None``: ``ProfileDeleted`` if there was a profile.

    Nothing when they are equal already."""
    if target is None:
        return [_ev("ProfileDeleted")] if stored is not None else []
    _check_document(target)
    if stored is None:
        return _creation_events(target)
    s_prof, t_prof = stored.get("profile") or {}, target.get("profile") or {}
    s_sum, t_sum = stored.get("summary") or {}, target.get("summary") or {}
    if set(s_prof) - set(t_prof) or set(s_sum) - set(t_sum):
        return [_ev("ProfileDeleted")] + _creation_events(target)
    events: List[Dict[str, Any]] = []
    if stored.get("name", "") != target.get("name", ""):
        events.append(_ev("ProfileRenamed", name=target.get("name", "")))
    for sid, facts in t_prof.items():
        if sid not in s_prof or _canon(s_prof[sid]) != _canon(facts):
            events.append(_ev("ProfileFactsRecorded", snapshot_id=sid, facts=facts))
    for aid, text in t_sum.items():
        if s_sum.get(aid) != text:
            events.append(_ev("ConversationAnalyzed", analysis_id=aid, summary=text))
    if _canon(_counters(stored)) != _canon(_counters(target)):
        events.append(_state_event(target))
    return events


# --- time, as the old bot wrote it -----------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _now_iso() -> str:
    """``datetime.utcnow().isoformat() + "Z"``, the old bot's timestamps."""
    return _utcnow().isoformat() + "Z"


def _analysis_id() -> str:
    return _utcnow().strftime("%Y%m%d%H%M%S")


def _ms_of(ts: Any) -> Optional[int]:
    """Milliseconds since the epoch of an old ``ts`` (seconds, or an ISO string; naive = UTC)."""
    try:
        if isinstance(ts, (int, float)) and not isinstance(ts, bool):
            return int(round(ts * 1000))
        if isinstance(ts, str):
            text = ts[:-1] + "+00:00" if ts.endswith("Z") else ts
            dt = datetime.fromisoformat(text)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            return int(dt.timestamp() * 1000)
    except (ValueError, OverflowError, OSError):
        return None
    return None


# --- the session: one client and bot, read-your-writes, the profile index --------------------


class Session:
    """The store as the compat layer uses it: an ``AsyncClient``, the bot, the log position of
    this session's last write (reads ask for at least it: a profile read right after a write sees
    it), and the index of profiles behind ``list_girls``."""

    def __init__(self, client: AsyncClient, bot: Optional[str] = None) -> None:
        self.client = client
        bot = bot or client.bot
        if not bot:
            raise ValueError("no bot id: set HYBRIDSTORE_BOT (or pass bot=...)")
        self.bot = bot
        self.last_position: Optional[int] = None
        self._index_next = 0
        self._index: Dict[int, Dict[str, Any]] = {}
        self._index_lock = asyncio.Lock()

    def stream(self, chat_id: int) -> str:
        return f"conv-{self.bot}-{chat_id}"

    def _saw(self, position: int) -> None:
        if self.last_position is None or position > self.last_position:
            self.last_position = position

    async def document(self, chat_id: int) -> Optional[Dict[str, Any]]:
        return await self._document_at(chat_id, self.last_position)

    async def _document_at(self, chat_id: int, min_position: Optional[int]) -> Optional[Dict[str, Any]]:
        # The old bot knew no erasure: an erased chat partner is a chat without a profile to it
        # (the next write creates a fresh one), never an exception in its code paths.
        try:
            read = await self.client.profile(chat_id, self.bot, min_position=min_position)
        except Erased:
            return None
        return read.value.to_dict() if read.value is not None else None

    async def state(self, chat_id: int) -> tuple[Optional[Dict[str, Any]], Optional[int]]:
        """The chat's profile document and its stream's version, the document read at least up
        to the stream's last event (so an append expecting that version changes exactly it)."""
        last = await self.client.read_stream(self.stream(chat_id), direction="backward", limit=1)
        if not last:
            return await self.document(chat_id), None
        self._saw(last[0].position)
        return await self.document(chat_id), last[0].stream_version

    async def write(self, chat_id: int, plan: Callable[[Optional[Dict[str, Any]]], List[Dict[str, Any]]]) -> Optional[Dict[str, Any]]:
        """Reads the chat's state, asks ``plan(document)`` for the events, appends them expecting
        the stream's version; again when another writer got in first. Returns the document the
        plan saw."""
        for attempt in range(WRITE_ATTEMPTS_MAX):
            doc, version = await self.state(chat_id)
            events = plan(copy.deepcopy(doc))
            if not events:
                return doc
            try:
                result = await self.client.append(
                    self.stream(chat_id), events, expected_version="no_stream" if version is None else version
                )
            except WrongExpectedVersion:
                await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
                continue
            self._saw(result.last_position)
            return doc
        raise DataStorageError(f"chat {chat_id}: its stream kept changing; write not done")

    async def modify(self, chat_id: int, change: Callable[[Optional["GirlProfile"]], Optional["GirlProfile"]]) -> Optional["GirlProfile"]:
        """``change`` gets the stored profile (``None``: none) and returns the wanted one
        (``None``: deleted); the events making the store equal to it are appended."""
        out: List[Optional[GirlProfile]] = [None]

        def plan(doc: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
            # A copy: the change must not edit `doc`, the stored state it is diffed against.
            current = GirlProfile.from_dict(copy.deepcopy(doc)) if doc is not None else None
            wanted = change(current)
            out[0] = wanted
            return profile_events(doc, wanted.to_dict() if wanted is not None else None)

        await self.write(chat_id, plan)
        return out[0]

    async def all_documents(self) -> List[Dict[str, Any]]:
        """Every profile of the bot. There is no list route in API v1, so the session keeps an
        index: it reads the log from where it stopped (``GET /v1/all``), notes the chats whose
        streams got events, and reads only those profiles again. A call costs one or two small
        log reads plus a profile read per chat that changed since the last call."""
        async with self._index_lock:
            conv_prefix, user_prefix = f"conv-{self.bot}-", f"user-{self.bot}-"
            dirty: Dict[int, int] = {}
            while True:
                page = await self.client.read_all(self._index_next, limit=1000)
                for e in page.events:
                    for prefix in (conv_prefix, user_prefix):
                        if e.stream.startswith(prefix):
                            try:
                                dirty[int(e.stream[len(prefix) :])] = e.position
                            except ValueError:
                                pass
                if not page.events or page.next <= self._index_next:
                    break
                self._index_next = page.next
            sem = asyncio.Semaphore(16)

            async def refresh(chat_id: int, position: int) -> None:
                async with sem:
                    doc = await self._document_at(chat_id, position)
                if doc is None:
                    self._index.pop(chat_id, None)
                else:
                    self._index[chat_id] = doc

            await asyncio.gather(*(refresh(c, p) for c, p in dirty.items()))
            return [copy.deepcopy(self._index[c]) for c in sorted(self._index)]


_default_sessions: Dict[int, Session] = {}
_explicit: Optional[Session] = None


def use_client(client: AsyncClient, bot: Optional[str] = None) -> Session:
    """Makes ``client`` (and ``bot``) the store of every ``GirlsManager()`` and
    ``append_conversation`` of this process that was not given one, instead of the environment."""
    global _explicit
    _explicit = Session(client, bot)
    return _explicit


def default_session() -> Session:
    """The session of ``use_client``, else one per event loop from the environment
    (``HYBRIDSTORE_URL``, ``HYBRIDSTORE_TOKEN``, ``HYBRIDSTORE_BOT``)."""
    if _explicit is not None:
        return _explicit
    loop = asyncio.get_running_loop()
    session = _default_sessions.get(id(loop))
    if session is None:
        for key in [k for k in _default_sessions if k != id(loop)]:
            del _default_sessions[key]
        session = Session(AsyncClient())
        _default_sessions[id(loop)] = session
    return session


# --- append_conversation (src/utils/logger.py) -----------------------------------------------


def _message_event(record: Dict[str, Any]) -> Dict[str, Any]:
    if not isinstance(record, dict):
        raise ValidationError(f"Conversation record must be dict, got {type(record)}")
    # The old: {"ts": now, **record}, so a record's own ts wins.
    full = {"ts": _now_iso(), **record}
    direction, text = full.get("direction"), full.get("text")
    if direction not in ("in", "out"):
        raise ValidationError(f"Invalid direction: {direction}")
    if not isinstance(text, str):
        raise ValidationError(f"Message text must be string, got {type(text)}")
    extra = set(full) - {"ts", "direction", "text"}
    if extra:
        logger.warning("append_conversation: fields %s are not kept by the store", sorted(extra))
    ts = full["ts"]
    if direction == "in":
        event = _ev("MessageReceived", telegram_message_id=None, text=text, content_type="text", legacy_ts=ts)
    else:
        event = _ev("MessageSent", text=text, kind="reply", generation=None, legacy_ts=ts)
    at = _ms_of(ts)
    if at is not None:
        event["occurred_at"] = at
    return event


async def append_conversation(chat_id: int, record: Dict[str, Any], *, session: Optional[Session] = None) -> None:
    """Appends ``{"ts": now, **record}`` to the chat's conversation: a ``MessageReceived``
    (``direction: in``) or ``MessageSent`` (``out``) with the record's text, ``legacy_ts`` = the
    ``ts`` exactly as the old file would hold it (so ``export-legacy`` writes back the old file)
    and ``occurred_at`` from it.

    The old bot's ``message_count`` and ``last_activity`` are counters of their own (set by
    ``update_last_activity``), but the projection bumps both on every message. So when the chat
    has a profile, the same atomic append ends with ``ProfileLegacyStateImported`` carrying the
    document's counters as they were: the profile stays exactly what the old bot's file held."""
    chat_id = _validate_chat_id(chat_id)
    message = _message_event(record)
    session = session or default_session()

    def plan(doc: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
        return [message] if doc is None else [message, _state_event(doc)]

    await session.write(chat_id, plan)


# --- GirlsManager ----------------------------------------------------------------------------


_AI_CLIENT: Any = None


def _get_ai_client() -> Any:
    """The old bot's lazily built OpenAI client: ``AsyncOpenAI(api_key=OPENAI_API_KEY)`` when the
    key is set and the ``openai`` package is installed, else ``None`` (the no-key fallback)."""
    global _AI_CLIENT
    key = os.environ.get("OPENAI_API_KEY", "")
    if _AI_CLIENT is None and key:
        try:
            from openai import AsyncOpenAI  # type: ignore[import-not-found]
        except ImportError:
            logger.warning("OPENAI_API_KEY is set but the openai package is not installed")
            return None
        _AI_CLIENT = AsyncOpenAI(api_key=key)
    return _AI_CLIENT


def _latest_snapshot(profile: GirlProfile) -> Any:
    if not profile.profile:
        return None
    return profile.profile.get(max(profile.profile.keys()))


class GirlsManager:
    """The old ``GirlsManager`` over the store: every public method, the same return shapes.

    ``data_dir``/``path`` are kept for the old signature (profiles live in the store now; they
    are not used). Keyword-only extras: ``session`` (or ``use_client()``; default: the
    environment), ``ai_client`` (an OpenAI-like client with ``responses.create``; default: the
    old bot's, from ``OPENAI_API_KEY``), ``model`` (default ``OPENAI_MODEL``, else the old
    default), ``backups_dir`` (default ``BACKUPS_DIR``, else ``backups``), ``fields_path``
    (default ``fields.json``)."""

    def __init__(
        self,
        data_dir: str = "girls_data",
        path: str | None = None,
        *,
        session: Optional[Session] = None,
        ai_client: Any = None,
        model: Optional[str] = None,
        backups_dir: Optional[str] = None,
        fields_path: str = "fields.json",
    ) -> None:
        if path is not None:
            data_dir = path
        self._data_dir = Path(data_dir)
        self._session = session
        self._ai_client = ai_client
        self._model = model or os.environ.get("OPENAI_MODEL", "gpt-5-nano")
        self._backups_dir = Path(backups_dir or os.environ.get("BACKUPS_DIR", "backups"))
        self._fields_path = Path(fields_path)
        self._fields_cache: Optional[List[str]] = None

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = default_session()
        return self._session

    # --- reads ---
    async def load_profile(self, chat_id: int) -> Optional[GirlProfile]:
        """The chat's profile, ``None`` if it has none (``GET /v1/bots/{bot}/profiles/{chat}``)
        or the chat partner was erased."""
        doc = await self.session.document(_validate_chat_id(chat_id))
        return GirlProfile.from_dict(doc) if doc is not None else None

    async def get_profile(self, chat_id: int) -> Optional[GirlProfile]:
        return await self.load_profile(chat_id)

    async def list_all_profiles(self) -> List[GirlProfile]:
        """Every profile, by chat id (see ``Session.all_documents`` for why it is cheap)."""
        return [GirlProfile.from_dict(d) for d in await self.session.all_documents()]

    async def list_girls(self) -> List[GirlProfile]:
        return await self.list_all_profiles()

    async def get_latest_summary_text(self, chat_id: int) -> Optional[str]:
        profile = await self.load_profile(chat_id)
        if not profile:
            return None
        if not profile.summary:
            return None
        return profile.summary.get(max(profile.summary.keys()))

    # --- writes ---
    async def save_profile(self, profile: GirlProfile) -> None:
        """Makes the stored profile equal to ``profile`` (see ``profile_events``)."""
        wanted = GirlProfile.from_dict(copy.deepcopy(profile.to_dict()))
        await self.session.modify(wanted.chat_id, lambda _current: wanted)

    async def ensure_girl(self, chat_id: int, name: str = "") -> GirlProfile:
        """The chat's profile; created (``ProfileCreated``) with ``name`` if it has none (also
        after an erasure of the chat partner: a fresh profile)."""
        chat_id = _validate_chat_id(chat_id)
        existing = await self.load_profile(chat_id)
        if existing is not None:
            return existing
        made = await self.session.modify(chat_id, lambda current: current if current is not None else GirlProfile(chat_id=chat_id, name=name))
        assert made is not None
        return made

    async def update_last_activity(self, chat_id: int) -> None:
        """``last_activity = now`` (UTC ISO + ``Z``), ``message_count += 1``:
        ``ProfileLegacyStateImported`` (with ``ProfileCreated`` first if there was no profile)."""
        chat_id = _validate_chat_id(chat_id)
        now = _now_iso()

        def change(current: Optional[GirlProfile]) -> GirlProfile:
            p = current if current is not None else GirlProfile(chat_id=chat_id)
            p.last_activity = now
            p.message_count += 1
            return p

        await self.session.modify(chat_id, change)

    async def update_profile(self, chat_id: int, message_text: str) -> None:
        """The old keyword heuristic: interests/work/travel words add a snapshot
        (``ProfileFactsRecorded``) under a new analysis id; the profile exists afterwards."""
        chat_id = _validate_chat_id(chat_id)
        snapshot = heuristic_snapshot(message_text)
        sid = _analysis_id()

        def change(current: Optional[GirlProfile]) -> GirlProfile:
            p = current if current is not None else GirlProfile(chat_id=chat_id)
            if snapshot:
                p.profile[sid] = dict(snapshot)
            return p

        await self.session.modify(chat_id, change)

    async def set_previous_response_id(self, chat_id: int, response_id: Optional[str]) -> None:
        chat_id = _validate_chat_id(chat_id)

        def change(current: Optional[GirlProfile]) -> GirlProfile:
            p = current if current is not None else GirlProfile(chat_id=chat_id)
            p.previous_response_id = response_id
            return p

        await self.session.modify(chat_id, change)

    async def get_previous_response_id(self, chat_id: int) -> Optional[str]:
        profile = await self.ensure_girl(chat_id)
        return profile.previous_response_id

    async def delete_girl(self, chat_id: int) -> bool:
        """``ProfileDeleted``; ``True`` if there was a profile."""
        chat_id = _validate_chat_id(chat_id)
        existed: List[bool] = [False]

        def change(current: Optional[GirlProfile]) -> None:
            existed[0] = current is not None
            return None

        await self.session.modify(chat_id, change)
        return existed[0]

    async def append_conversation(self, chat_id: int, record: Dict[str, Any]) -> None:
        """``append_conversation`` through this manager's session."""
        await append_conversation(chat_id, record, session=self.session)

    # --- bot logic, unchanged ---
    async def get_profile_context(self, chat_id: int) -> str:
        profile = await self.ensure_girl(chat_id)
        return profile_context(profile)

    async def suggest_focus_topic(self, chat_id: int) -> str:
        fields = await self._get_fields()
        profile = await self.ensure_girl(chat_id)
        return focus_topic(profile, fields)

    async def analyze_and_summarize(self, chat_id: int, recent_messages: List[Dict[str, str]]) -> Optional[str]:
        """Asks the LLM for ``{"summary", "profile"}`` given the newest snapshot and the recent
        texts; stores both under a new analysis id (``ConversationAnalyzed`` +
        ``ProfileFactsRecorded``) and returns it. With no LLM client: the first 300 chars of the
        texts as summary and ``{"notes": …}``. ``None`` with no texts or when the call failed."""
        profile = await self.ensure_girl(chat_id)
        prev_profile: Dict[str, Any] = {}
        last_snap = _latest_snapshot(profile)
        if isinstance(last_snap, dict):
            prev_profile = last_snap
        texts: List[str] = []
        for m in recent_messages:
            val = m.get("text") or m.get("content") or ""
            if isinstance(val, str) and val.strip():
                texts.append(val.strip())
        if not texts:
            return None
        last_text = "\n".join(texts)[:4000]

        client = self._ai_client if self._ai_client is not None else _get_ai_client()
        if not client:
            logger.warning("OPENAI_API_KEY отсутствует — ИИ-анализ невозможен, используем упрощённый режим")
            sid = _analysis_id()
            summary_text = last_text[:300]
            await self._store_analysis(profile.chat_id, sid, summary_text, {"notes": summary_text})
            return sid
        try:
            system_msg = (
                "Ты аналитик-памяти. По последним сообщениям сделай короткую выжимку (summary)"
                " и обнови полную память (profile) — компактный объект с фактами об интересах, работе, ценностях, семье, целях,"
                " привычках, характере и др.\n"
                "Сохрани важное из previous_profile и дополни новым. Верни строго JSON: {\"summary\": str, \"profile\": object}."
            )
            user_msg = f"previous_profile: {json.dumps(prev_profile, ensure_ascii=False)}\nlast_messages:\n{last_text}"
            resp = await client.responses.create(
                model=self._model,
                instructions=system_msg,
                input=user_msg,
                max_output_tokens=400,
            )
            content = (getattr(resp, "output_text", None) or "").strip()
            parsed = json.loads(_cleanup_json(content))
            summary_text = str(parsed.get("summary", "")).strip()
            new_profile_obj = parsed.get("profile", {}) or {}
            if not isinstance(new_profile_obj, dict):
                new_profile_obj = {"notes": new_profile_obj}
            sid = _analysis_id()
            if not summary_text:
                summary_text = last_text[:300]
            await self._store_analysis(profile.chat_id, sid, summary_text, new_profile_obj)
            return sid
        except Exception as e:
            logger.exception("Ошибка ИИ-анализа профиля: %s", e)
            return None

    async def _store_analysis(self, chat_id: int, sid: str, summary: str, facts: Dict[str, Any]) -> None:
        def change(current: Optional[GirlProfile]) -> GirlProfile:
            p = current if current is not None else GirlProfile(chat_id=chat_id)
            p.summary[sid] = summary
            p.profile[sid] = facts
            return p

        await self.session.modify(chat_id, change)

    async def backup_daily_chat(self, chat_id: int, messages: List[Dict[str, Any]]) -> Path:
        """Writes ``backups/{chat_id}/{date}.json`` as the old bot did (redundant with the log,
        kept so the call works) and returns its path."""
        day = date.today().isoformat()
        folder = self._backups_dir / str(chat_id)
        profile = await self.ensure_girl(chat_id)
        payload = {"date": day, "chat_id": chat_id, "name": profile.name, "messages": messages}

        def write() -> Path:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{day}.json"
            tmp = folder / f".{day}.json.tmp"
            tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=2), encoding="utf-8")
            tmp.replace(path)
            return path

        return await asyncio.get_running_loop().run_in_executor(None, write)

    async def load(self) -> None:
        """A no-op kept from the old API."""
        logger.info("Метод load() устарел. Используйте load_profile() для загрузки отдельных профилей")

    async def save(self) -> None:
        """A no-op kept from the old API."""
        logger.info("Метод save() устарел. Используйте save_profile() для сохранения отдельных профилей")

    async def _get_fields(self) -> List[str]:
        if self._fields_cache is not None:
            return self._fields_cache
        try:
            fields: List[str] = []
            if self._fields_path.exists():
                content = self._fields_path.read_text(encoding="utf-8")
                if content.strip():
                    fields = json.loads(content)
            if not fields:
                fields = list(DEFAULT_FIELDS)
            self._fields_cache = fields
        except Exception:
            self._fields_cache = list(DEFAULT_FIELDS)
        return self._fields_cache


# --- the old bot's logic, as pure functions --------------------------------------------------


def heuristic_snapshot(message_text: str) -> Dict[str, Any]:
    """The old ``update_profile`` keyword heuristic over the lower-cased text."""
    text = message_text.lower()
    snapshot: Dict[str, Any] = {}
    if any(k in text for k in ["люблю", "интерес", "хобби"]):
        snapshot["interests"] = message_text.strip()
    if "работ" in text or "професс" in text:
        snapshot["work"] = message_text.strip()
    if "путеше" in text or "ездил" in text or "стамбул" in text:
        snapshot["travel"] = message_text.strip()
    return snapshot


def profile_context(profile: GirlProfile) -> str:
    """The old ``get_profile_context`` digest of the newest snapshot (≤ 300 chars)."""
    if not profile.profile:
        return ""
    snap = profile.profile.get(max(profile.profile.keys()), {})
    if not isinstance(snap, dict):
        return str(snap)[:300]
    parts: List[str] = []
    for k, v in snap.items():
        if isinstance(v, list) and v:
            parts.append(f"{k}: {'; '.join(map(str, v[:2]))}")
        elif isinstance(v, dict):
            parts.append(f"{k}: {', '.join(list(v.keys())[:3])}")
        elif isinstance(v, str) and v.strip():
            parts.append(f"{k}: {v.strip()[:60]}")
        if len(" | ".join(parts)) > 280:
            break
    return " | ".join(parts)[:300]


def focus_topic(profile: GirlProfile, fields: List[str]) -> str:
    """The old ``suggest_focus_topic``: the first topic missing from the newest snapshot."""
    if not profile.profile:
        return fields[0] if fields else "facts"
    snap = profile.profile.get(max(profile.profile.keys()), {})
    if not isinstance(snap, dict):
        return fields[0] if fields else "facts"
    snap_keys = {k.lower() for k in snap.keys()}
    for f in fields:
        if f.lower() not in snap_keys:
            return f
    return fields[0] if fields else "facts"


def _cleanup_json(s: str) -> str:
    s = s.strip()
    if s.startswith("```"):
        s = s.strip("`\n ")
        if s.lower().startswith("json\n"):
            s = s[5:]
    if s.endswith("```"):
        s = s[:-3]
    return s.strip()


# Keep HybridstoreError importable from here for callers that catch store failures.
__all__.append("HybridstoreError")
