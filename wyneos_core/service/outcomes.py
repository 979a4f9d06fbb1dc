"""What the service's request handlers share: the paths, the outcome of one heartbeat,
the error of a request that cannot be processed (422), and a request body read as a
JSON object."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from wyneos_core.model import Heartbeat
from wyneos_core.safeio import bad_text, field_path

__all__ = ["ENROL_PATH", "HEARTBEAT_PATH", "ItemResult", "Unprocessable", "Verified", "json_object"]

HEARTBEAT_PATH = "/v1/heartbeats"
ENROL_PATH = "/v1/enrol"


@dataclass(slots=True)
class ItemResult:
    """The outcome of one signed heartbeat: ``status`` 202 when queued."""

    status: int
    code: str = "accepted"
    error: str = ""
    node_id: str | None = None
    field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "code": self.code}
        if self.node_id is not None:
            out["node_id"] = self.node_id
        if self.error:
            out["error"] = self.error
        if self.field:
            out["field"] = self.field
        return out


@dataclass(slots=True)
class Verified:
    """A signed heartbeat whose signature checked out: its signed timestamp, and its
    parsed body or the refusal of its body (reported after the replay checks)."""

    ts: float
    heartbeat: Heartbeat | None
    problem: ItemResult | None = None


class Unprocessable(Exception):
    """A request whose ``field`` cannot be processed (422) for ``reason``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


_decode_json = json.JSONDecoder().decode


def json_object(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object (UTF-8, as RFC 8259 asks; decoding it directly
    skips ``json.loads``'s encoding detection, a third of the cost of a small body)."""
    try:
        data = _decode_json(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unprocessable("body", f"not JSON ({exc})") from None
    except RecursionError:
        raise Unprocessable("body", "JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise Unprocessable("body", "expected a JSON object")
    if b"\\u" in body:  # only a \u escape can make a lone surrogate (UTF-8 bytes cannot)
        where = bad_text(data)
        if where is not None:
            raise Unprocessable(field_path(where) or "body", "not valid Unicode text (a lone surrogate escape)")
    return data
