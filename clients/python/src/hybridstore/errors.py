"""Exceptions mirroring the daemon's problem types (docs/api-v1.md, "Errors")."""

from __future__ import annotations

from typing import Any, Mapping, Optional

__all__ = [
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
    "NotServedHere",
    "Timeout",
    "InternalError",
    "ConnectionFailed",
    "problem_to_exception",
]


class HybridstoreError(Exception):
    """A request the daemon refused (or could not be reached for).

    ``status`` is the HTTP status (0 when the daemon could not be reached), ``type`` the problem
    type (``/problems/KIND``), ``detail`` its one-line detail, ``problem`` the whole problem body.
    """

    kind: str = ""

    def __init__(
        self,
        detail: str,
        *,
        status: int = 0,
        type: Optional[str] = None,
        title: Optional[str] = None,
        problem: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.type = type if type is not None else (f"/problems/{self.kind}" if self.kind else "")
        self.title = title
        self.detail = detail
        self.problem: dict[str, Any] = dict(problem or {})

    def __str__(self) -> str:
        head = f"{self.status} {self.type}" if self.status else self.type or "error"
        return f"{head}: {self.detail}"


class BadRequest(HybridstoreError):
    """400: a bad field, body or parameter; ``field`` names it (a JSON pointer or parameter)."""

    kind = "bad-request"

    @property
    def field(self) -> Optional[str]:
        value = self.problem.get("field")
        return None if value is None else str(value)


class Unauthorized(HybridstoreError):
    """401: no token, or an unknown one."""

    kind = "unauthorized"


class Forbidden(HybridstoreError):
    """403: the token's kind may not do this (e.g. a read token writing)."""

    kind = "forbidden"


class NotFound(HybridstoreError):
    """404: no such route, no such erasure receipt."""

    kind = "not-found"


class UnknownSubject(NotFound):
    """404: an erasure of a chat or user the log holds no event of (a ``NotFound``: code that
    catches that keeps working)."""

    kind = "unknown-subject"


class Erased(HybridstoreError):
    """410: a typed read of an erased person (a chat partner: profile, conversation head,
    messages; a user: the user record) with nothing written of them since the erasure.
    ``erased_at`` is the erasure's log position (``None`` if the problem did not say)."""

    kind = "erased"

    @property
    def erased_at(self) -> Optional[int]:
        value = self.problem.get("erased_at")
        if value is None or isinstance(value, bool):
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            return None


class WrongExpectedVersion(HybridstoreError):
    """409: the stream is not at the expected version; ``actual_version`` is where it is
    (``None``: the stream does not exist)."""

    kind = "wrong-expected-version"

    @property
    def actual_version(self) -> Optional[int]:
        value = self.problem.get("actual_version")
        return None if value is None else int(value)

    @property
    def stream(self) -> Optional[str]:
        return self.problem.get("stream")

    @property
    def expected(self) -> Any:
        return self.problem.get("expected")


class TransitionRefused(HybridstoreError):
    """409: a migration step was refused; ``reason`` says why."""

    kind = "transition-refused"

    @property
    def reason(self) -> Optional[str]:
        return self.problem.get("reason")


class PayloadTooLarge(HybridstoreError):
    """413: the body or an event is over the limit (``limit_bytes``)."""

    kind = "payload-too-large"

    @property
    def limit_bytes(self) -> Optional[int]:
        value = self.problem.get("limit_bytes")
        return None if value is None else int(value)


class IdempotencyConflict(HybridstoreError):
    """422: the append's event ids or keys are recorded for other events (a client bug: a key
    reused for different events)."""

    kind = "idempotency-conflict"


class Unavailable(HybridstoreError):
    """503: the log is poisoned, or the daemon is not ready or stopping. Retried by the client;
    also raised (with status 0) when the daemon could not be reached after every retry."""

    kind = "unavailable"


class ConnectionFailed(Unavailable):
    """The daemon could not be reached (connection refused/reset, timeout) after every retry."""


class NotServedHere(HybridstoreError):
    """503: a replica was asked for a component it cannot serve, or to write. Not retried:
    asking the same daemon again gives the same answer."""

    kind = "not-served-here"

    @property
    def component(self) -> Optional[str]:
        return self.problem.get("component")

    @property
    def state(self) -> Optional[str]:
        return self.problem.get("state")


class Timeout(HybridstoreError):
    """504: ``min_position`` was not reached in time, or the request ran over its time."""

    kind = "timeout"


class InternalError(HybridstoreError):
    """500: a bug in the daemon."""

    kind = "internal"


_BY_KIND: dict[str, type[HybridstoreError]] = {
    cls.kind: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        UnknownSubject,
        Erased,
        WrongExpectedVersion,
        TransitionRefused,
        PayloadTooLarge,
        IdempotencyConflict,
        Unavailable,
        NotServedHere,
        Timeout,
        InternalError,
    )
}

_BY_STATUS: dict[int, type[HybridstoreError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    410: Erased,
    413: PayloadTooLarge,
    422: IdempotencyConflict,
    500: InternalError,
    503: Unavailable,
    504: Timeout,
}


def problem_to_exception(status: int, body: Any, text: str = "") -> HybridstoreError:
    """The exception for an error response: by the problem's ``type`` when the body is a problem
    document, else by the status alone."""
    problem: dict[str, Any] = body if isinstance(body, dict) else {}
    ptype = problem.get("type")
    cls: Optional[type[HybridstoreError]] = None
    if isinstance(ptype, str) and "/problems/" in ptype:
        cls = _BY_KIND.get(ptype.rsplit("/problems/", 1)[1])
    if cls is None:
        cls = _BY_STATUS.get(status, HybridstoreError)
    detail = problem.get("detail") or problem.get("title") or text.strip()[:200] or f"HTTP {status}"
    return cls(
        str(detail),
        status=status,
        type=ptype if isinstance(ptype, str) else None,
        title=problem.get("title"),
        problem=problem,
    )
