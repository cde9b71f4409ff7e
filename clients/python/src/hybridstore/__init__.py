"""hybridstore: a Python client for the hybridstore daemon (``hybridstore serve``, API v1).

``Client`` (sync) and ``AsyncClient`` (asyncio) speak to it over TCP (``http://127.0.0.1:8740``)
or a Unix socket (``unix:/path/to.sock``); ``hybridstore.compat`` is the old bot's storage API
(``GirlsManager``, ``append_conversation``) over it.
"""

from ._core import RetryPolicy
from ._uuid7 import uuid7
from .client import AsyncClient, Client
from .errors import (
    BadRequest,
    ConnectionFailed,
    Erased,
    Forbidden,
    HybridstoreError,
    IdempotencyConflict,
    InternalError,
    NotFound,
    NotServedHere,
    PayloadTooLarge,
    Timeout,
    TransitionRefused,
    Unauthorized,
    Unavailable,
    UnknownSubject,
    WrongExpectedVersion,
)
from .types import (
    AppendResult,
    ComponentState,
    ComponentStatus,
    ConversationHead,
    ErasedKey,
    Message,
    NewEvent,
    ProfileDocument,
    Read,
    ReadAllResult,
    Receipt,
    RecordedEvent,
    SinkReceipt,
    Transition,
    User,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "AsyncClient",
    "RetryPolicy",
    "uuid7",
    "HybridstoreError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "UnknownSubject",
    "Erased",
    "WrongExpectedVersion",
    "TransitionRefused",
    "PayloadTooLarge",
    "IdempotencyConflict",
    "Unavailable",
    "ConnectionFailed",
    "NotServedHere",
    "Timeout",
    "InternalError",
    "AppendResult",
    "ComponentState",
    "ComponentStatus",
    "ConversationHead",
    "ErasedKey",
    "Message",
    "NewEvent",
    "ProfileDocument",
    "Read",
    "ReadAllResult",
    "Receipt",
    "RecordedEvent",
    "SinkReceipt",
    "Transition",
    "User",
]
