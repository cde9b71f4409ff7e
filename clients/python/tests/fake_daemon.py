"""An in-memory stand-in for the daemon, for unit tests through ``httpx.MockTransport``: the
append rules (expected version, dedupe of client event ids/keys, atomic batches), stream and log
reads, and the profile projection of src/projection/profiles.rs. Not the daemon: the integration
tests check the real one."""

from __future__ import annotations

import copy
import json
import re
from typing import Any, Callable, Optional
from urllib.parse import unquote

import httpx


def problem(status: int, kind: str, detail: str, **extra: Any) -> httpx.Response:
    body = {"type": f"/problems/{kind}", "title": kind, "status": status, "detail": detail, **extra}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json"})


class FakeDaemon:
    def __init__(self, bot: str = "bot") -> None:
        self.bot = bot
        self.log: list[dict[str, Any]] = []
        self.streams: dict[str, list[int]] = {}
        self.dedupe: dict[str, tuple[str, dict[str, int]]] = {}
        self.profiles: dict[int, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self.appends: list[dict[str, Any]] = []  # bodies of successful appends
        #: Called with each request before it is served; may return a response to send instead.
        self.intercept: Optional[Callable[[httpx.Request], Optional[httpx.Response]]] = None

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # --- projection (src/projection/profiles.rs) ---
    def _apply(self, rec: dict[str, Any]) -> None:
        m = re.fullmatch(r"conv-([A-Za-z0-9_]+)-(-?\d+)", rec["stream"])
        if not m or m.group(1) != self.bot:
            return
        chat = int(m.group(2))
        t, d = rec["event"]["type"], rec["event"]["data"]
        if t == "ProfileCreated":
            if chat in self.profiles:
                self.profiles[chat]["name"] = d["name"]
            else:
                self.profiles[chat] = {"chat_id": chat, "name": d["name"], "last_activity": None, "message_count": 0, "summary": {}, "profile": {}, "previous_response_id": None}
            return
        if t == "ProfileDeleted":
            self.profiles.pop(chat, None)
            return
        p = self.profiles.get(chat)
        if p is None:
            return
        if t == "ProfileRenamed":
            p["name"] = d["name"]
        elif t == "ProfileFactsRecorded":
            p["profile"][d["snapshot_id"]] = copy.deepcopy(d["facts"])
        elif t == "ConversationAnalyzed":
            p["summary"][d["analysis_id"]] = d["summary"]
        elif t == "ProfileLegacyStateImported":
            p["last_activity"] = d.get("last_activity")
            p["message_count"] = d["message_count"]
            p["previous_response_id"] = d.get("previous_response_id")
        elif t in ("MessageReceived", "MessageSent"):
            p["message_count"] += 1
            p["last_activity"] = f"rfc3339({rec['occurred_at']})"
            gen = d.get("generation") if t == "MessageSent" else None
            if gen and gen.get("response_id"):
                p["previous_response_id"] = gen["response_id"]

    # --- routes ---
    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.intercept is not None:
            r = self.intercept(request)
            if r is not None:
                return r
        path = request.url.path
        q = request.url.params
        if request.method == "POST" and (m := re.fullmatch(r"/v1/streams/([^/]+)/events", path)):
            return self._append(unquote(m.group(1)), json.loads(request.content), request.headers.get("idempotency-key"))
        if request.method == "GET" and (m := re.fullmatch(r"/v1/streams/([^/]+)", path)):
            positions = self.streams.get(unquote(m.group(1)), [])
            limit = int(q.get("limit", 100))
            if q.get("direction", "forward") == "backward":
                end = int(q["from"]) + 1 if "from" in q else len(positions)
                chosen = list(reversed(positions[:end]))[:limit]
            else:
                chosen = positions[int(q.get("from", 0)) :][:limit]
            return httpx.Response(200, json={"events": [self.log[p] for p in chosen]})
        if path == "/v1/all":
            start, limit = int(q.get("from", 0)), int(q.get("limit", 100))
            events = self.log[start : start + limit]
            return httpx.Response(200, json={"events": events, "next": start + len(events)})
        if m := re.fullmatch(r"/v1/bots/([^/]+)/profiles/(-?\d+)", path):
            value = self.profiles.get(int(m.group(2))) if m.group(1) == self.bot else None
            return httpx.Response(200, json={"value": copy.deepcopy(value), "applied_end": len(self.log), "source": "log", "state": "disabled"})
        return problem(404, "not-found", f"no route {path}")

    def _append(self, stream: str, body: dict[str, Any], header_key: Optional[str]) -> httpx.Response:
        events = body["events"]
        keys_per_event = []
        for i, e in enumerate(events):
            keys = []
            if e.get("id"):
                keys.append("id:" + e["id"])
            key = e.get("key") or (f"{header_key}:{i}" if header_key else None)
            if key:
                keys.append("key:" + key)
            keys_per_event.append(keys)
        origins = [self.dedupe[k] for ks in keys_per_event for k in ks if k in self.dedupe]
        if origins:
            first = origins[0]
            recorded = sum(1 for ks in keys_per_event if any(k in self.dedupe for k in ks))
            if all(o[1] == first[1] for o in origins) and first[0] == stream and recorded == len(events):
                return httpx.Response(200, json=first[1])
            return problem(422, "idempotency-conflict", "keys recorded for other events")
        positions = self.streams.get(stream, [])
        actual = len(positions) - 1 if positions else None
        ev = body["expected_version"]
        if (ev == "no_stream" and actual is not None) or (isinstance(ev, int) and ev != actual):
            return problem(409, "wrong-expected-version", f"stream {stream} is at {actual}", stream=stream, expected=ev, actual_version=actual)
        first_position = len(self.log)
        for i, e in enumerate(events):
            pos = len(self.log)
            rec = {
                "position": pos, "stream": stream, "stream_version": len(positions), "batch_index": i,
                "batch_len": len(events), "event_id": e.get("id") or f"gen-{pos}", "event_id_supplied": bool(e.get("id")),
                "idempotency_key": e.get("key") or (f"{header_key}:{i}" if header_key else None),
                "recorded_at": 1000 + pos, "occurred_at": e.get("occurred_at", 1000 + pos), "schema_version": 1,
                "bot_id": stream.split("-")[1] if "-" in stream else "", "event": {"type": e["type"], "data": e["data"]},
            }
            self.log.append(rec)
            positions.append(pos)
            self._apply(rec)
        self.streams[stream] = positions
        result = {"first_position": first_position, "last_position": len(self.log) - 1, "stream_version": len(positions) - 1}
        for ks in keys_per_event:
            for k in ks:
                self.dedupe[k] = (stream, result)
        self.appends.append({"stream": stream, **body})
        return httpx.Response(200, json=result)
