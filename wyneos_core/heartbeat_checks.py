"""What a heartbeat may carry: the checks of its content that do not depend on its node.

``check_content(hb, limits)`` refuses a heartbeat whose load, metadata (reserved keys,
nesting, JSON size), observations, metrics, fingerprint or licence reference is out of
the ``heartbeat`` section's limits, raising ``HeartbeatError`` naming the field at fault.
Its node id and timestamp (unknown node, clock skew and rollback) are the registry's to
check, as they depend on the node (``registry.Registry.check``, which calls this).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from itertools import islice
from typing import Any, Protocol

from wyneos_core.model import Heartbeat, Observation

__all__ = ["HeartbeatError", "HeartbeatLimits", "MAX_METADATA_DEPTH", "RESERVED_METADATA", "check_content"]

#: metadata keys only the orchestrator or the operator write (a node cannot set or lift
#: them): ``restrictions`` are the orchestrator's, ``customer`` (whose licences the node
#: may use) is the operator's, set in the config's ``nodes[].metadata``
RESERVED_METADATA = frozenset({"restrictions", "customer"})
#: how deeply heartbeat metadata may nest (mappings and lists)
MAX_METADATA_DEPTH = 16


class HeartbeatError(ValueError):
    """A heartbeat was refused; ``field`` names what was wrong with it."""

    def __init__(self, node_id: str, field: str, reason: str, value: Any = None) -> None:
        self.node_id = node_id
        self.field = field
        self.reason = reason
        self.value = value
        super().__init__(f"heartbeat from {node_id!r}: {field}: {reason}")

    def to_dict(self) -> dict[str, Any]:
        value = self.value if isinstance(self.value, (int, float, str, bool, type(None))) else repr(self.value)[:80]
        if isinstance(value, float) and not math.isfinite(value):
            value = repr(value)
        return {"node_id": self.node_id, "field": self.field, "reason": self.reason, "value": value}


class HeartbeatLimits(Protocol):
    """The limits ``check_content`` reads, when it checks (a ``Registry`` has them)."""

    max_load: float
    max_metadata_bytes: int
    max_observations: int
    #: declared telemetry: metric name -> (min, max)
    metric_bounds: dict[str, tuple[float, float]]


def check_content(hb: Heartbeat, limits: HeartbeatLimits) -> None:
    """Raise ``HeartbeatError`` if the content of ``hb`` is out of ``limits`` (see the
    module docstring). Changes nothing."""
    node_id = hb.node_id
    load = hb.load
    if load is not None:
        if type(load) is not float and (isinstance(load, bool) or not isinstance(load, (int, float))):
            raise HeartbeatError(node_id, "load", "not a number", load)
        if not (0 <= load <= limits.max_load):  # also catches nan
            raise HeartbeatError(node_id, "load", f"out of range [0, {limits.max_load:g}]", load)
    metadata = hb.metadata
    if metadata:
        if not isinstance(metadata, dict):
            raise HeartbeatError(node_id, "metadata", "not a mapping", metadata)
        reserved = RESERVED_METADATA.intersection(metadata)
        if reserved:
            key = min(reserved)
            raise HeartbeatError(node_id, f"metadata.{key}",
                                 "reserved: only the operator sets it (config nodes[].metadata)"
                                 if key == "customer" else "reserved: only the orchestrator sets it", key)
        depth = _depth(metadata, MAX_METADATA_DEPTH)
        if depth > MAX_METADATA_DEPTH:
            raise HeartbeatError(node_id, "metadata", f"nested deeper than {MAX_METADATA_DEPTH} levels")
        try:
            size = len(json.dumps(metadata, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise HeartbeatError(node_id, "metadata", f"not JSON data ({exc})") from None
        if size > limits.max_metadata_bytes:
            raise HeartbeatError(
                node_id, "metadata", f"{size} bytes as JSON, more than {limits.max_metadata_bytes}", size
            )
    elif not isinstance(metadata, dict):
        raise HeartbeatError(node_id, "metadata", "not a mapping", metadata)
    if hb.observations:
        _check_observations(hb, limits.max_observations)
    if hb.metrics is not None:
        _check_metrics(hb, limits.metric_bounds)
    if hb.fingerprint is not None or hb.licence_ref is not None:
        for name in ("fingerprint", "licence_ref"):
            value = getattr(hb, name)
            if value is not None and (not isinstance(value, str) or len(value) > 256):
                raise HeartbeatError(node_id, name, "not a string of at most 256 characters", value)


def _check_metrics(hb: Heartbeat, bounds_of: Mapping[str, tuple[float, float]]) -> None:
    metrics = hb.metrics
    node_id = hb.node_id
    if not isinstance(metrics, Mapping):
        raise HeartbeatError(node_id, "metrics", "not a mapping of metric name to number", type(metrics).__name__)
    # names are distinct: among the first (declared + 1) an unknown one shows, named
    for name, value in islice(metrics.items(), len(bounds_of) + 1):
        bounds = bounds_of.get(name) if type(name) is str else None
        if bounds is None:
            known = ", ".join(sorted(bounds_of)) or "none declared"
            raise HeartbeatError(node_id, f"metrics.{str(name)[:48]}",
                                 f"unknown metric (telemetry.metrics: {known})")
        if type(value) is not float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise HeartbeatError(node_id, f"metrics.{name}", "not a number", repr(value)[:80])
        low, high = bounds
        if not (low <= value <= high):  # also catches nan
            raise HeartbeatError(node_id, f"metrics.{name}", f"out of range [{low:g}, {high:g}]", value)
    if len(metrics) > len(bounds_of):  # not reached: an unknown name came first
        raise HeartbeatError(node_id, "metrics", f"{len(metrics)} metrics, more than the "
                             f"{len(bounds_of)} declared in telemetry.metrics", len(metrics))


def _check_observations(hb: Heartbeat, most: int) -> None:
    observations = hb.observations
    node_id = hb.node_id
    if not isinstance(observations, (tuple, list)):
        raise HeartbeatError(node_id, "observations", "not a list", type(observations).__name__)
    if len(observations) > most:
        raise HeartbeatError(node_id, "observations", f"{len(observations)} observations, more than "
                             f"heartbeat.max_observations ({most})", len(observations))
    for index, obs in enumerate(observations):
        if not isinstance(obs, Observation):
            raise HeartbeatError(node_id, f"observations[{index}]", "not an observation", repr(obs)[:80])
        if obs.observer != node_id:
            raise HeartbeatError(node_id, f"observations[{index}].observer",
                                 "a node reports only its own observations", str(obs.observer)[:80])
        problem = obs.problem()
        if problem is not None:
            raise HeartbeatError(node_id, f"observations[{index}]", problem)


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of JSON-like ``value``, counting no further than ``limit + 1``."""
    if limit < 0:
        return 1
    if isinstance(value, dict):
        return 1 + max((_depth(v, limit - 1) for v in value.values()), default=0)
    if isinstance(value, (list, tuple)):
        return 1 + max((_depth(v, limit - 1) for v in value), default=0)
    return 0
