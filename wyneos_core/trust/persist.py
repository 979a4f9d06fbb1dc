"""The trust engine's state in the store: what changed, written as chunks of slots.

The engine keeps every node's trust in arrays by slot (``TrustEngine``). The store keeps
the same arrays cut into chunks of ``CHUNK`` slots: one row per chunk holding the ids of
its slots, the fingerprints and admission reasons it has (sparse), and one packed binary
record per slot (``RECORD``: the beta evidence of each signal, peer score, trust, tier,
admission, joined tick). A tick writes, in one transaction, only the chunks holding a
slot whose tier or admission changed, or whose trust moved by 0.01 or more since it was
last written; the markers of what was written move only once the write committed, so a
refused or failed write is simply tried again the next tick. At 100,000 nodes whose
trust all moves, a tick writes about a dozen chunk rows instead of 12,500 node rows.

Stores without chunks (etcd replicas) keep one row per node (``rows_to_persist`` and
``restore_rows``, the shape ``StateStore.trust_rows`` returns for both).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec
import numpy as np

from wyneos_core.model import ORIGIN
from wyneos_core.trust.settings import SIGNALS
from wyneos_core.trust.tiers import TIER_NAMES

if TYPE_CHECKING:
    from wyneos_core.trust.engine import TrustEngine

__all__ = ["CHUNK", "EncodedChunks", "LAYOUT", "RECORD", "TrustChunk", "chunk_rows", "chunks_changed", "decode_chunk", "encode_chunks",
           "mark_written", "restore_chunks", "restore_rows", "rows_to_persist"]

#: slots per chunk row
CHUNK: Final = 1024
#: one slot's record in a chunk (little-endian whatever the machine)
RECORD: Final = np.dtype([("r", "<f4", (len(SIGNALS),)), ("s", "<f4", (len(SIGNALS),)), ("peer", "<f4"),
                          ("trust", "<f4"), ("tier", "i1"), ("admission", "i1"), ("joined", "<i4")])
#: the record layout's name, stored with every chunk: a chunk of another layout is not read
LAYOUT: Final = f"trust-record/1:{len(SIGNALS)}"
ADMISSION_NAMES: Final = ("pending", "admitted", "refused", "held")
_ENCODE = msgspec.json.Encoder().encode
_DECODE_IDS = msgspec.json.Decoder(list[str | None]).decode
_DECODE_EXTRA = msgspec.json.Decoder(dict[str, dict[str, Any]]).decode

#: one stored chunk: (first slot, ids JSON, extra JSON, packed records, layout, tick written)
TrustChunk = tuple[int, str, str, bytes, str, int]


# -- chunks ------------------------------------------------------------------------------------

def chunks_changed(engine: TrustEngine, everything: bool = False, spread: int = 1) -> np.ndarray:
    """The chunk numbers to write now: those holding a slot whose tier or admission changed
    since last written (always), or whose trust moved by 0.01 or more (a chunk in ``spread``
    each tick, ``chunk % spread == tick % spread``: a fleet whose trust all moves writes a
    share per tick, every chunk at most ``spread`` ticks behind); every chunk with
    ``everything``."""
    n = len(engine.ids)
    chunks = -(-n // CHUNK)
    if everything:
        return np.arange(chunks)
    changed = (engine.tier[:n] != engine.persisted_tier[:n]) | \
        (engine.admission[:n] != engine.persisted_admission[:n])
    moved = np.round(engine.trust[:n], 2) != engine.persisted_trust[:n]
    per_chunk = np.zeros(chunks * CHUNK, dtype=bool)
    per_chunk[:n] = changed
    urgent = per_chunk.reshape(chunks, CHUNK).any(axis=1)
    per_chunk[:n] = moved
    drifted = per_chunk.reshape(chunks, CHUNK).any(axis=1)
    if spread > 1:
        drifted &= (np.arange(chunks) % spread) == (engine.tick % spread)
    return np.flatnonzero(urgent | drifted)


def encode_chunks(engine: TrustEngine, chunks: Iterable[int]) -> EncodedChunks:
    """The stored form of ``chunks`` (each slot's current values), each encoded when read:
    a write of every chunk holds one chunk's records at a time, not the whole fleet's."""
    return EncodedChunks(engine, chunks)


class EncodedChunks(Sequence[TrustChunk]):
    """The stored form of some chunks of an engine's slots (``encode_chunks``), made one
    chunk at a time as they are read."""

    __slots__ = ("engine", "chunks", "_reason_slots")

    def __init__(self, engine: TrustEngine, chunks: Iterable[int]) -> None:
        self.engine = engine
        self.chunks: list[int] = np.asarray(chunks, dtype=np.int64).tolist()
        #: the slots with an admission reason (the nodes held out of admission), sorted
        self._reason_slots = engine.admission_reason.slots()

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self._encode(c) for c in self.chunks[k]]
        return self._encode(self.chunks[k])

    def __iter__(self) -> Iterator[TrustChunk]:
        return map(self._encode, self.chunks)

    def _encode(self, chunk: int) -> TrustChunk:
        engine = self.engine
        n = len(engine.ids)
        lo, hi = chunk * CHUNK, min(n, (chunk + 1) * CHUNK)
        rec = np.zeros(hi - lo, dtype=RECORD)
        rec["r"] = engine.evidence.r[:, lo:hi].T
        rec["s"] = engine.evidence.s[:, lo:hi].T
        rec["peer"] = engine.peer[lo:hi]
        rec["trust"] = engine.trust[lo:hi]
        rec["tier"] = engine.tier[lo:hi]
        rec["admission"] = engine.admission[lo:hi]
        rec["joined"] = engine.joined[lo:hi]
        fingerprints = engine.fingerprint[lo:hi]
        known = np.flatnonzero(fingerprints != None).tolist()  # noqa: E711 (elementwise)
        fps = dict(zip(map(str, known), fingerprints[known].tolist()))
        held = self._reason_slots[np.searchsorted(self._reason_slots, lo):np.searchsorted(self._reason_slots, hi)]
        reasons = engine.admission_reason
        extra = _ENCODE({"fingerprints": fps,
                         "reasons": {str(slot - lo): list(reasons[slot]) for slot in held.tolist()}}).decode()
        return lo, _ENCODE(engine.ids[lo:hi]).decode(), extra, rec.tobytes(), LAYOUT, engine.tick


def mark_written(engine: TrustEngine, chunks: Iterable[int]) -> None:
    """Once ``chunks`` are committed: their slots are as written (what changes next is new)."""
    n = len(engine.ids)
    for chunk in np.asarray(chunks, dtype=np.int64).tolist():
        lo, hi = chunk * CHUNK, min(n, (chunk + 1) * CHUNK)
        engine.persisted_trust[lo:hi] = np.round(engine.trust[lo:hi], 2)
        engine.persisted_tier[lo:hi] = engine.tier[lo:hi]
        engine.persisted_admission[lo:hi] = engine.admission[lo:hi]


def decode_chunk(row: Iterable[Any]) -> tuple[int, list[str | None], np.ndarray, dict[str, dict[str, Any]]] | None:
    """A stored chunk read back, checked (None: a chunk this version cannot read, or
    damaged: its nodes start over in probation)."""
    try:
        first, ids_text, extra_text, data, layout, _tick = row
        if layout != LAYOUT or type(first) is not int or first < 0 or first % CHUNK:
            return None
        ids = _DECODE_IDS(ids_text)
        extra = _DECODE_EXTRA(extra_text)
        if len(ids) > CHUNK or len(data) != len(ids) * RECORD.itemsize:
            return None
        rec = np.frombuffer(data, dtype=RECORD)
    except (ValueError, TypeError, msgspec.DecodeError):
        return None
    numbers = np.concatenate([rec["r"].ravel(), rec["s"].ravel(), rec["peer"], rec["trust"]])
    if not np.isfinite(numbers).all() or (numbers < 0).any():
        return None
    if ((rec["tier"] < 0) | (rec["tier"] >= len(TIER_NAMES)) | (rec["admission"] < 0)
            | (rec["admission"] >= len(ADMISSION_NAMES)) | (rec["joined"] < 0)).any():
        return None
    return first, ids, rec, extra


def restore_chunks(engine: TrustEngine, rows: Iterable[Any]) -> int:
    """Bring back the nodes of stored chunks, in their stored slot order (into an engine
    that holds only the orchestrator, they take the very slots they had). Returns the
    nodes restored; an id already known, or the orchestrator's, is skipped."""
    decoded = sorted(filter(None, map(decode_chunk, rows)), key=lambda d: d[0])
    count = 0
    seen: set[str] = set()
    for _first, ids, rec, extra in decoded:
        fps = extra.get("fingerprints", {})
        reasons = extra.get("reasons", {})
        keep = []
        for k, node_id in enumerate(ids):  # an id twice (a damaged file): the first counts
            if type(node_id) is str and node_id != ORIGIN and node_id not in engine.index and node_id not in seen:
                seen.add(node_id)
                keep.append(k)
        if not keep:
            continue
        start = len(engine.ids)
        engine._grow(start + len(keep))
        slots = np.arange(start, start + len(keep))
        picked = rec[keep]
        new_ids = [ids[k] for k in keep]
        engine.ids.extend(new_ids)  # type: ignore[arg-type]
        engine.index.update(zip(new_ids, slots.tolist()))
        engine.evidence.r[:, slots] = picked["r"].T
        engine.evidence.s[:, slots] = picked["s"].T
        engine.peer[slots] = picked["peer"]
        engine.trust[slots] = picked["trust"]
        engine.tier[slots] = picked["tier"]
        engine.admission[slots] = picked["admission"]
        engine.joined[slots] = picked["joined"]
        engine.global_trust[slots] = 0.0
        slot_of = {str(k): start + pos for pos, k in enumerate(keep)} if fps or reasons else {}
        for key, fp in fps.items():
            slot = slot_of.get(key)
            if slot is not None and isinstance(fp, str) and fp:
                engine.fingerprint[slot] = fp
                engine.fingerprint_of.add(fp, slot)
        for key, reason in reasons.items():
            slot = slot_of.get(key)
            if slot is not None and isinstance(reason, list) and len(reason) == 2:
                engine.admission_reason[slot] = (str(reason[0]), str(reason[1]))
        engine.persisted_trust[slots] = np.round(engine.trust[slots], 2)
        engine.persisted_tier[slots] = engine.tier[slots]
        engine.persisted_admission[slots] = engine.admission[slots]
        count += len(keep)
    return count


def chunk_rows(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Stored chunks as one row per node, in the shape of the per-node trust table."""
    out = []
    for decoded in filter(None, map(decode_chunk, rows)):
        first, ids, rec, extra = decoded
        fps, reasons = extra.get("fingerprints", {}), extra.get("reasons", {})
        for k, node_id in enumerate(ids):
            if type(node_id) is not str or node_id == ORIGIN:
                continue
            reason = reasons.get(str(k))
            out.append({"node_id": node_id, "fingerprint": fps.get(str(k)), "trust": float(rec["trust"][k]),
                        "tier": TIER_NAMES[rec["tier"][k]], "admission": ADMISSION_NAMES[rec["admission"][k]],
                        "admission_reason": json.dumps(reason) if reason else None,
                        "joined_tick": int(rec["joined"][k]),
                        "evidence": json.dumps({"r": np.round(rec["r"][k].astype(float), 6).tolist(),
                                                "s": np.round(rec["s"][k].astype(float), 6).tolist(),
                                                "peer": round(float(rec["peer"][k]), 6)})})
    return out


# -- one row per node (stores without chunks) ----------------------------------------------------

def rows_to_persist(engine: TrustEngine, slots: np.ndarray, fingerprints: Mapping[str, str | None] | None = None,
                    everything: bool = False, spread: int = 1) -> list[tuple]:
    """Rows for a per-node trust table: nodes whose tier or admission changed since last
    written, and those whose trust moved by 0.01 or more (or all, with ``everything``);
    a moved trust is written for one slot in ``spread`` each tick (``slot % spread ==
    tick % spread``), tier and admission changes at once."""
    rounded = np.round(engine.trust[slots], 2)
    if everything:
        chosen = slots
    else:
        changed = (engine.tier[slots] != engine.persisted_tier[slots]) | \
            (engine.admission[slots] != engine.persisted_admission[slots])
        moved = rounded != engine.persisted_trust[slots]
        if spread > 1:
            moved &= (slots % spread) == (engine.tick % spread)
        chosen = slots[changed | moved]
    engine.persisted_trust[chosen] = np.round(engine.trust[chosen], 2)
    engine.persisted_tier[chosen] = engine.tier[chosen]
    engine.persisted_admission[chosen] = engine.admission[chosen]
    chosen_list = chosen.tolist()
    r_rows = np.round(engine.evidence.r[:, chosen].T.astype(float), 6).tolist()
    s_rows = np.round(engine.evidence.s[:, chosen].T.astype(float), 6).tolist()
    peers = np.round(engine.peer[chosen].astype(float), 6).tolist()
    trusts = engine.trust[chosen].astype(float).tolist()
    tiers = engine.tier[chosen].tolist()
    admissions = engine.admission[chosen].tolist()
    joined = engine.joined[chosen].tolist()
    out = []
    for k, slot in enumerate(chosen_list):
        node_id = engine.ids[slot]
        reason = engine.admission_reason.get(slot)
        fp = fingerprints.get(node_id) if fingerprints else None
        evidence = _ENCODE({"r": r_rows[k], "s": s_rows[k], "peer": peers[k]}).decode()
        out.append((node_id, fp, trusts[k], TIER_NAMES[tiers[k]], ADMISSION_NAMES[admissions[k]],
                    _ENCODE(list(reason)).decode() if reason else None, int(joined[k]), evidence, engine.tick))
    return out


def restore_rows(engine: TrustEngine, rows: Iterable[Mapping[str, Any]]) -> int:
    """Bring back nodes' trust from per-node rows (``rows_to_persist`` shape)."""
    count = 0
    names = {n: i for i, n in enumerate(TIER_NAMES)}
    adm_names = {n: i for i, n in enumerate(ADMISSION_NAMES)}
    for row in rows:
        try:
            evidence = json.loads(row["evidence"])
            r = [float(x) for x in evidence["r"]]
            s = [float(x) for x in evidence["s"]]
            tier = names[row["tier"]]
            adm = adm_names[row["admission"]]
        except (ValueError, KeyError, TypeError):
            continue  # a row this version cannot read: the node starts over in probation
        if len(r) != len(SIGNALS) or len(s) != len(SIGNALS):
            continue
        # (no inheritance by key: the row sets all of it)
        slot = engine.slot(row["node_id"], row.get("fingerprint"), tick=int(row.get("joined_tick") or 0),
                           inherit=False)
        engine.evidence.r[:, slot] = r
        engine.evidence.s[:, slot] = s
        engine.peer[slot] = float(evidence.get("peer", 0.0))
        engine.trust[slot] = float(row["trust"])
        engine.tier[slot] = tier
        engine.admission[slot] = adm
        engine.joined[slot] = int(row.get("joined_tick") or 0)
        reason = row.get("admission_reason")
        if reason:
            try:
                rule, text = json.loads(reason)
                engine.admission_reason[slot] = (str(rule), str(text))
            except (ValueError, TypeError):
                pass
        engine.persisted_trust[slot] = round(float(engine.trust[slot]), 2)
        engine.persisted_tier[slot] = tier
        engine.persisted_admission[slot] = adm
        count += 1
    return count
