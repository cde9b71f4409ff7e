"""Typed results of the API routes (docs/api-v1.md) and the event to append."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Mapping, Optional, TypeVar, Union

__all__ = [
    "ExpectedVersion",
    "NewEvent",
    "AppendResult",
    "RecordedEvent",
    "ReadAllResult",
    "Read",
    "ProfileDocument",
    "ConversationHead",
    "Message",
    "User",
    "ComponentState",
    "ComponentStatus",
    "Transition",
    "ErasedKey",
    "SinkReceipt",
    "Receipt",
]

T = TypeVar("T")

#: ``"any"``, ``"no_stream"`` or the exact version of the stream's last event.
ExpectedVersion = Union[Literal["any", "no_stream"], int]


@dataclass
class NewEvent:
    """An event to append: the catalogue's ``type``/``data`` pair (src/events/catalogue.rs), an
    optional client event id (UUIDv7; the client fills one in before the first attempt when it is
    missing), idempotency key and ``occurred_at`` (ms since the epoch)."""

    type: str
    data: dict[str, Any]
    id: Optional[str] = None
    key: Optional[str] = None
    occurred_at: Optional[int] = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "data": self.data}
        if self.id is not None:
            out["id"] = self.id
        if self.key is not None:
            out["key"] = self.key
        if self.occurred_at is not None:
            out["occurred_at"] = self.occurred_at
        return out

    @staticmethod
    def of(value: Union["NewEvent", Mapping[str, Any]]) -> "NewEvent":
        if isinstance(value, NewEvent):
            return NewEvent(value.type, value.data, value.id, value.key, value.occurred_at)
        return NewEvent(
            type=value["type"],
            data=dict(value.get("data") or {}),
            id=value.get("id"),
            key=value.get("key"),
            occurred_at=value.get("occurred_at"),
        )


@dataclass(frozen=True)
class AppendResult:
    """Where an append landed: its first and last log positions and the stream's new version."""

    first_position: int
    last_position: int
    stream_version: int

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "AppendResult":
        return AppendResult(int(d["first_position"]), int(d["last_position"]), int(d["stream_version"]))


@dataclass(frozen=True)
class RecordedEvent:
    """An event as the log recorded it (the serde form of the store's ``RecordedEvent``)."""

    position: int
    stream: str
    stream_version: int
    batch_index: int
    batch_len: int
    event_id: str
    event_id_supplied: bool
    idempotency_key: Optional[str]
    recorded_at: int
    occurred_at: int
    schema_version: int
    bot_id: str
    type: str
    data: dict[str, Any]
    #: The event's personal fields, when they were sealed (docs/envelope.md):
    #: ``{"state": "sealed", "epoch": 1}`` (opened), or ``{"state": "erased", "epoch": 1,
    #: "erased_at": P, "fields": ["text"]}`` (the key was destroyed at position P; those fields
    #: hold blanks in ``data``). ``None`` for an event in the clear.
    personal: Optional[dict[str, Any]] = None

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "RecordedEvent":
        event = d.get("event") or {}
        return RecordedEvent(
            position=int(d["position"]),
            stream=str(d["stream"]),
            stream_version=int(d["stream_version"]),
            batch_index=int(d.get("batch_index", 0)),
            batch_len=int(d.get("batch_len", 1)),
            event_id=str(d.get("event_id", "")),
            event_id_supplied=bool(d.get("event_id_supplied", False)),
            idempotency_key=d.get("idempotency_key"),
            recorded_at=int(d.get("recorded_at", 0)),
            occurred_at=int(d.get("occurred_at", 0)),
            schema_version=int(d.get("schema_version", 0)),
            bot_id=str(d.get("bot_id", "")),
            type=str(event.get("type", "")),
            data=dict(event.get("data") or {}),
            personal=dict(d["personal"]) if isinstance(d.get("personal"), Mapping) else None,
        )


@dataclass(frozen=True)
class ReadAllResult:
    """A page of the whole log: its events and the position to read from next."""

    events: list[RecordedEvent]
    next: int


@dataclass(frozen=True)
class Read(Generic[T]):
    """A typed read's envelope: the value, the log position the answering projection had applied
    up to (``applied_end``), which source answered and the component's migration state."""

    value: T
    applied_end: int
    source: Optional[str] = None
    state: Optional[str] = None


@dataclass
class ProfileDocument:
    """The profile document: the old bot's ``girls_data/{chat}.json``."""

    chat_id: int
    name: str
    last_activity: Any = None
    message_count: int = 0
    summary: dict[str, str] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    previous_response_id: Optional[str] = None

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "ProfileDocument":
        return ProfileDocument(
            chat_id=int(d["chat_id"]),
            name=str(d.get("name", "")),
            last_activity=d.get("last_activity"),
            message_count=int(d.get("message_count", 0)),
            summary=dict(d.get("summary") or {}),
            profile=dict(d.get("profile") or {}),
            previous_response_id=d.get("previous_response_id"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "chat_id": self.chat_id,
            "name": self.name,
            "last_activity": self.last_activity,
            "message_count": self.message_count,
            "summary": dict(self.summary),
            "profile": dict(self.profile),
            "previous_response_id": self.previous_response_id,
        }


@dataclass(frozen=True)
class ConversationHead:
    """Counts and times of a conversation."""

    messages_in: int
    messages_out: int
    last_in_at: Optional[int]
    last_out_at: Optional[int]
    unanswered: int
    cleared_before: int

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "ConversationHead":
        return ConversationHead(
            messages_in=int(d.get("messages_in", 0)),
            messages_out=int(d.get("messages_out", 0)),
            last_in_at=d.get("last_in_at"),
            last_out_at=d.get("last_out_at"),
            unanswered=int(d.get("unanswered", 0)),
            cleared_before=int(d.get("cleared_before", 0)),
        )


@dataclass(frozen=True)
class Message:
    """One message of a conversation's tail."""

    position: int
    direction: Literal["in", "out"]
    text: str
    at: int
    legacy_ts: Any = None

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "Message":
        return Message(
            position=int(d["position"]),
            direction=d["direction"],
            text=str(d.get("text", "")),
            at=int(d.get("at", 0)),
            legacy_ts=d.get("legacy_ts"),
        )


@dataclass(frozen=True)
class User:
    """A user record."""

    user_id: int
    blocked: bool
    blocked_reason: Optional[str]
    identity: dict[str, Any]
    settings: dict[str, Any]
    registered_at: Optional[int]

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "User":
        return User(
            user_id=int(d["user_id"]),
            blocked=bool(d.get("blocked", False)),
            blocked_reason=d.get("blocked_reason"),
            identity=dict(d.get("identity") or {}),
            settings=dict(d.get("settings") or {}),
            registered_at=d.get("registered_at"),
        )


@dataclass(frozen=True)
class ComponentState:
    """A component's migration state (``value``, e.g. ``"dual-write"``) as of ``applied_end``."""

    value: str
    applied_end: int


@dataclass(frozen=True)
class ComponentStatus:
    """One row of ``GET /v1/migrations``."""

    bot: str
    component: str
    state: str
    since: Any = None
    reason: Optional[str] = None
    automatic: bool = False
    projector: Any = None
    shadow: Any = None

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "ComponentStatus":
        return ComponentStatus(
            bot=str(d.get("bot", "")),
            component=str(d.get("component", "")),
            state=str(d.get("state", "")),
            since=d.get("since"),
            reason=d.get("reason"),
            automatic=bool(d.get("automatic", False)),
            projector=d.get("projector"),
            shadow=d.get("shadow"),
        )


@dataclass(frozen=True)
class Transition:
    """What ``POST /v1/migrations/{bot}/{component}`` did."""

    bot: str
    component: str
    from_state: str
    to: str
    position: Optional[int]
    forced: bool

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "Transition":
        return Transition(
            bot=str(d.get("bot", "")),
            component=str(d.get("component", "")),
            from_state=str(d.get("from", "")),
            to=str(d.get("to", "")),
            position=d.get("position"),
            forced=bool(d.get("forced", False)),
        )


@dataclass(frozen=True)
class ErasedKey:
    """A key an erasure destroyed: every epoch of ``stream``'s key up to ``epoch`` (0: the
    subject never had a key, its events are all in the clear)."""

    stream: str
    epoch: int

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "ErasedKey":
        return ErasedKey(stream=str(d.get("stream", "")), epoch=int(d.get("epoch", 0)))


@dataclass(frozen=True)
class SinkReceipt:
    """Whether one sink (``log-projection``, ``postgres``, ``cache``) had applied the log up to
    the erasure (``reached``) when the receipt was checked; ``position`` is the erasure's
    position, ``note`` why not when it had not."""

    sink: str
    position: Optional[int]
    reached: bool
    note: Optional[str] = None

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "SinkReceipt":
        position = d.get("position")
        return SinkReceipt(
            sink=str(d.get("sink", "")),
            position=None if position is None else int(position),
            reached=bool(d.get("reached", False)),
            note=d.get("note"),
        )


@dataclass(frozen=True)
class Receipt:
    """An erasure's receipt (``POST /v1/bots/{bot}/erasures``, ``GET …/erasures/{id}``).

    ``subject`` is ``{"kind": "chat"|"user", "bot", "chat_id"|"user_id"}``;
    ``erasure_position`` the log position of the ``ChatErased``/``UserErased`` event (what
    ``Erased.erased_at`` of a later read names); ``erased_at`` and ``checked_at`` are times as
    the daemon writes them (RFC 3339 UTC strings: ``erased_at`` is the erasure event's recorded
    time, not a position); ``complete`` is true when every sink reached the erasure.
    ``raw`` is the JSON as the daemon answered it (with any member this client does not know):
    keep that when the receipt must be archived."""

    receipt_id: str
    subject: dict[str, Any]
    erasure_position: int
    erased_at: Any
    keys_destroyed: list[ErasedKey]
    key_store_generation: Optional[int]
    sealed_events_shredded: int
    plaintext_events_remaining: int
    sinks: list[SinkReceipt]
    complete: bool
    checked_at: Any
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def sinks_not_reached(self) -> list[SinkReceipt]:
        """The sinks that had not reached the erasure when the receipt was checked."""
        return [s for s in self.sinks if not s.reached]

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "Receipt":
        generation = d.get("key_store_generation")
        return Receipt(
            receipt_id=str(d["receipt_id"]),
            subject=dict(d.get("subject") or {}),
            erasure_position=int(d["erasure_position"]),
            erased_at=d.get("erased_at"),
            keys_destroyed=[ErasedKey.from_json(k) for k in d.get("keys_destroyed") or []],
            key_store_generation=None if generation is None else int(generation),
            sealed_events_shredded=int(d.get("sealed_events_shredded", 0)),
            plaintext_events_remaining=int(d.get("plaintext_events_remaining", 0)),
            sinks=[SinkReceipt.from_json(s) for s in d.get("sinks") or []],
            complete=bool(d.get("complete", False)),
            checked_at=d.get("checked_at"),
            raw=dict(d),
        )
