"""The licence step's work: ask sources, verify, check, count seats, cache.

``LicenceEngine.validate(nodes, now)`` returns the results of the nodes as columns
(``licensing.results.LicenceResults``: a sequence of ``LicenceResult`` made when read).
It is kept apart from the plugin so that tests and benchmarks can drive it directly.

The cache is columns by node table slot (``licensing.slots.SlotCache``): a warm tick
compares the table's ``licence_stamp`` and rollback columns and the refresh points with
what each slot's result was made for, over whole columns, and looks up only the slots
that differ. Results are codes into a pool of distinct results; the node table's
``licence_state`` and ``licence_reason`` columns are written every tick.

Caching: a node's result is kept until the first of

* its refresh point: the sources are asked again for each node at a moment fixed per
  node within every ``cache_ttl`` window (at least a fifth of ``cache_ttl`` and less
  than all of it after they were last asked), so the nodes of a cluster are re-asked
  in an even trickle, the same share every tick, never all at once;
* the next moment its licence changes state (not-before, expiry, end of grace, end of
  a clock-rollback hold);
* a change of what the result depends on: the node's licence reference, fingerprint,
  rollback time, ``metadata.features`` or ``metadata.customer``, the revocation list,
  the data of any source (its ``generation``) or a renewal seen of any licence.

When the sources are asked again and hand back the very document (same bytes, same
source, origin and status) that the cached result was made from, and neither the
node's inputs, the revocation list, the renewals seen nor the licence's state have
changed since, the cached result is kept as it is (``stats["reused"]``): an unchanged
licence is not checked again. Signature verification is cached per document (by
SHA-256 of its bytes), so a document is verified once, however many nodes share it.
Seat counting runs every tick over the nodes whose valid licence has a seat limit; the
allocation is reused while the holders, their states and their licences are unchanged.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from wyneos_core.licensing.document import Licence, format_time, verify_licence
from wyneos_core.licensing.entitlements import Entitlements, requested_features
from wyneos_core.licensing.envelope import EnvelopeError, FormatError
from wyneos_core.licensing.keys import KeyRing
from wyneos_core.licensing.ledger import Ledger
from wyneos_core.licensing.revocation import Revocation, RevocationList
from wyneos_core.licensing.revocation_accept import kept_revocations, read_revocations
from wyneos_core.licensing.seats import allocate_seats
from wyneos_core.licensing.settings import LicenceSettings
from wyneos_core.licensing.asking import ask_sources
from wyneos_core.licensing.sources import LicenceRecord, call_within
from wyneos_core.licensing.results import LicenceResults, ResultObjects, ResultPool
from wyneos_core.licensing.slots import SlotCache, columns_of, licence_inputs, same_rollback
from wyneos_core.model import LicenceResult, Node
from wyneos_core.nodetable import OFFLINE, NodeTable

__all__ = ["LicenceEngine"]

_MAX_VERIFIED = 200_000
_INF = float("inf")
#: nodes looked up and checked per chunk of a cold tick (bounds the node views, answers and
#: slot arrays held at once)
_CHUNK = 65536
_UNSET = object()
#: positions in a ``ResultPool`` entry (a ``LicenceResult``'s fields after ``node_id``)
_VALID, _REASON, _LICENCE_ID, _FEATURES = 0, 1, 3, 7
#: a cached result is kept at least this share of ``cache_ttl``; it is refreshed at the
#: node's own point of a grid of period ``(1 - _MIN_SHARE) * cache_ttl`` (its phase fixed
#: by a hash of the node id), so its life is in ``[_MIN_SHARE * ttl, ttl)`` and, once a
#: node is on its grid, every node is re-asked once per period at the same phase: an even
#: share of the cluster per tick, whatever tick the results were made in
_MIN_SHARE = 0.2


class LicenceEngine:
    """Validates the licences of a cluster's nodes tick after tick.

    :param settings: the resolved ``licence`` settings.
    :param keyring: trusted issuer keys.
    :param sources: available sources by name; they are asked in ``settings.sources`` order.
    """

    def __init__(self, settings: LicenceSettings, keyring: KeyRing, sources: dict[str, Any],
                 ledger: Ledger | None = None) -> None:
        self.settings = settings
        self.keyring = keyring
        self.sources = [sources[name] for name in settings.sources if name in sources]
        self.missing_sources = [name for name in settings.sources if name not in sources]
        self.entitlements = Entitlements(settings.tiers)
        self.ledger = ledger if ledger is not None else Ledger(settings.ledger)
        self.revocations = RevocationList()
        #: ids the accepted list added to the one accepted before it
        self.revocation_new: list[str] = []
        #: set while the revocation list on disk is older than the one accepted (or gone):
        #: the licence plugin reports it as an error every tick until it is fixed
        self.revocation_problem: str | None = None
        self._rev_stamp: Any = _UNSET
        self._verified: dict[str, Licence | EnvelopeError] = {}
        self._granted: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {}  # by document digest
        #: the cache, by slot of the node table the nodes come from (``_own`` for plain nodes)
        self._own = NodeTable(capacity=16)
        self._slots: SlotCache | None = None
        self._pool = ResultPool()
        self._objects = ResultObjects()
        self._cache_epoch = 0
        self._last_granted: frozenset[str] | None = None
        self._last_results: LicenceResults | None = None
        self._generations: tuple[Any, ...] = ()
        self._seat_signature: tuple[Any, ...] = ()
        self._seat_losers: dict[str, tuple[str, int, int, int]] = {}
        self.epoch = 0
        #: bumped when what a document's verdict depends on besides the document and the
        #: node changes (revocation list, a renewal seen); a cached result made under another
        #: value is never reused
        self._verdicts = 0
        #: licence id -> the ``_verdicts`` value at which the revocation list or a renewal last
        #: touched it: a cached result of that licence made before is never reused
        self._touched: dict[str | None, int] = {}
        self._renewed = False
        self.notes: list[str] = []
        self.new_revocations: list[Revocation] = []
        self.stats = {"cached": 0, "looked_up": 0, "reused": 0, "verified": 0, "unavailable": 0}
        self._restore_revocations()

    def _restore_revocations(self) -> None:
        """Take the revocation list accepted before a restart from the ledger."""
        kept, note = kept_revocations(self.ledger, self.keyring)
        if note is not None:
            self.notes.append(note)
        if kept is None:
            return
        self.revocations = kept
        self.revocation_new = list(self.ledger.revocation_new)
        self.epoch += 1
        self._verdicts += 1

    # -- per tick -------------------------------------------------------------------------

    def begin(self, now: float) -> None:
        """Refresh sources and the revocation list; called once at the start of a tick."""
        self.notes = []
        self.new_revocations = []
        self.stats = {"cached": 0, "looked_up": 0, "reused": 0, "verified": 0, "unavailable": 0}
        if self._renewed:
            self._renewed = False
            self.epoch += 1
        for source in self.sources:
            refresh = getattr(source, "refresh", None)
            if refresh is not None:
                try:
                    call_within(source, self.settings.source_timeout, refresh, now)
                except Exception as exc:  # noqa: BLE001 - a source failing is an outage, not a crash
                    self.notes.append(f"licence source {source.name!r} could not refresh: {type(exc).__name__}: {exc}")
        generations = tuple(getattr(s, "generation", None) for s in self.sources)
        if generations != self._generations:
            self._generations = generations
            self.epoch += 1
        self._reload_revocations()

    def _reload_revocations(self) -> None:
        path = self.settings.revocations
        if path is None:
            return
        try:
            st = path.stat()
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if stamp == self._rev_stamp:
            return
        self._rev_stamp = stamp
        fresh, self.revocation_problem = read_revocations(path, stamp is not None, self.keyring, self.revocations,
                                                          self.ledger.revocation_version)
        if self.revocation_problem:
            self.notes.append(self.revocation_problem)
        if fresh is None or fresh.version == self.revocations.version:
            return
        added = [fresh.entries[i] for i in sorted(set(fresh.entries) - set(self.revocations.entries))]
        self.ledger.accept_revocations(fresh.version, fresh.document, [e.licence_id for e in added])
        self._verdicts += 1
        for licence_id in set(fresh.entries) | set(self.revocations.entries):  # the detail names the version
            self._touched[licence_id] = self._verdicts
        self.revocations = fresh
        self.new_revocations = added
        self.revocation_new = [e.licence_id for e in added]
        self.epoch += 1
        self.notes.append(f"revocation list version {fresh.version} accepted: {len(fresh.entries)} revoked "
                          f"licence(s), {len(added)} new")

    def validate(self, nodes: Sequence[Node], now: float) -> LicenceResults:
        """The results of ``nodes``, in their order (columns; objects made when read)."""
        table, slots, ids = columns_of(nodes, self._own)
        c = self._slots
        if c is None or c.table is not table:  # another table: nothing of the old one applies
            c = self._slots = SlotCache(table)
            self._objects = ResultObjects()
            self._seat_signature, self._seat_losers = (), {}
        c.fit()
        c.adopt(slots)
        last = self._last_results
        if last is not None and last._list is None and len(self._objects.objects):
            self._objects = ResultObjects()  # nobody read every result last tick: let the objects go
        if self._cache_epoch != self.epoch:  # everything is looked up again; old entries may be reused
            self._cache_epoch = self.epoch
            c.fresh[:] = -np.inf
        # the warm tick: one comparison over the columns; only the slots that differ are looked up
        rollback = table.last_rollback[slots]
        hit = (c.key[slots] == table.licence_stamp[slots]) & same_rollback(c.rollback[slots], rollback) \
            & (c.fresh[slots] > now)
        misses = np.flatnonzero(~hit)
        self.stats["cached"] = len(slots) - len(misses)
        if len(misses):
            self._resolve(nodes, table, c, slots, misses, now)
        codes = c.codes(slots)
        seated = np.flatnonzero(c.seat_codes(slots) >= 0)
        if len(seated):
            self._seats(nodes, ids, table, c, slots, seated, codes)
        else:
            self._seat_signature, self._seat_losers = (), {}
        if len(self._pool) > 2 * len(slots) + 1024:  # many results no node has any more: renumber
            codes = self._renumber(c, slots, codes)
        c.compact(slots)
        state, reason = self._pool.codes()
        if len(codes):
            table.licence_state[slots] = state[codes]
            table.licence_reason[slots] = reason[codes]
        self.ledger.save()
        results = LicenceResults(ids, slots, table.born[slots], codes, self._pool, self._objects, table.index)
        self._last_results = results
        return results

    def _renumber(self, c: SlotCache, slots: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """A new pool of the results in use (this tick's and the cached ones)."""
        old, pool = self._pool, ResultPool()
        used = np.unique(np.concatenate([codes, c.codes(slots)]))
        used = used[used >= 0]
        remap = np.full(len(old), -1, np.int64)
        for code in used.tolist():
            remap[code] = pool.add(LicenceResult("", *old.fields[code]))
        c.key[c.recode(remap)] = -1  # an entry no node used: looked up again if ever needed
        self._pool = pool
        self._objects.forget()
        return remap[codes]

    def forget(self) -> None:
        """Drop every cached result (the next ``validate`` looks every node up and checks it)."""
        self._slots = None

    def cached(self) -> dict[str, float]:
        """Node id -> the moment its cached result is to be looked up again (the nodes of
        the table last validated that have a result)."""
        c = self._slots
        if c is None:
            return {}
        t = c.table
        slots = t.slots()
        slots = slots[(c.codes(slots) >= 0) & (c.born[slots] == t.born[slots])]
        return dict(zip([t.ids[s] for s in slots.tolist()], c.fresh[slots].tolist()))  # type: ignore[misc]

    def _fresh_until(self, node_id: str, now: float) -> float:
        """When a result made now for ``node_id`` is to be looked up again.

        The node's next point, at least ``_MIN_SHARE * cache_ttl`` from now, on a grid of
        period ``(1 - _MIN_SHARE) * cache_ttl`` whose phase is fixed by a hash of the node
        id: less than ``cache_ttl`` from now, and one refresh per period per node at the
        same phase, so the refreshes of a cluster stay evenly spread over the ticks.
        """
        ttl = self.settings.cache_ttl
        if ttl <= 0:
            return now
        period = ttl * (1.0 - _MIN_SHARE)
        base = now + ttl * _MIN_SHARE
        phase = period * (zlib.crc32(node_id.encode("utf-8", "surrogatepass")) / 4294967296.0)
        return base + (phase - base) % period

    def _reusable(self, c: SlotCache, slot: int, same_inputs: bool, record: LicenceRecord, now: float) -> bool:
        """Whether the cached entry of ``slot`` still holds for ``record``, handed over again now.

        It does when it was made from the same document (bytes, source, origin, status),
        for the same node inputs, its licence's state has not changed with time since, and
        neither the revocation list nor a renewal has touched its licence since.
        """
        code = c.code_at(slot)
        if code < 0 or not same_inputs:
            return False
        kept, until, verdicts = c.made(slot)
        if kept is None or now >= until or not (kept is record or kept == record):
            return False
        return verdicts >= self._touched.get(self._pool.fields[code][_LICENCE_ID], 0)

    # -- sources --------------------------------------------------------------------------

    def _resolve(self, nodes: Sequence[Node], table: NodeTable, c: SlotCache, slots: np.ndarray,
                 misses: np.ndarray, now: float) -> None:
        """Look up and check the nodes at positions ``misses``; write their entries.

        A cold tick looks every node up: chunk by chunk (``_CHUNK`` nodes), the sources
        asked for a chunk's nodes at a time, so the node views and the answers held at
        once are a chunk's, not the fleet's. A source that fails is not asked again in
        the same tick: the nodes of the later chunks get the same failure."""
        self.stats["looked_up"] = len(misses)
        unavailable_nodes = reused = 0
        down: dict[int, str] = {}
        for lo in range(0, len(misses), _CHUNK):
            chunk = misses[lo:lo + _CHUNK]
            positions = chunk.tolist()
            views: list[Node] = list(map(nodes.__getitem__, positions))
            records, failures = ask_sources(self.sources, views, now, self.settings.source_timeout, down,
                                            self.notes)
            counted = self._resolve_chunk(views, table, c, slots[chunk], records, failures, now)
            del views, records, failures
            unavailable_nodes += counted[0]
            reused += counted[1]
        self.stats["reused"] = reused
        if unavailable_nodes:
            self.stats["unavailable"] = unavailable_nodes
            self.notes.append(f"licence sources could not answer for {unavailable_nodes} node(s); outage policy "
                              f"{self.settings.outage_policy} applied (grace {self.settings.outage_grace:g}s)")

    def _resolve_chunk(self, views: list[Node], table: NodeTable, c: SlotCache, at: np.ndarray,
                       records: Mapping[str, LicenceRecord | None], failures: dict[str, list[str]],
                       now: float) -> tuple[int, int]:
        """Check the nodes ``views`` (slots ``at``) against the records found and write
        their entries; returns (nodes no source could answer for, entries kept as they were)."""
        unavailable_nodes = reused = 0
        stamps, rollbacks = table.licence_stamp[at], table.last_rollback[at]
        same = (c.key[at] == stamps) & same_rollback(c.rollback[at], rollbacks)
        pool_add, seat_code = self._pool.add, c.seat_code
        for k, node in enumerate(views):
            slot = int(at[k])
            nid = node.id
            record = records.get(nid)
            inputs = licence_inputs(node)
            self._last_granted = None
            if record is None:
                if nid in failures:
                    unavailable_nodes += 1
                    result, seat = self._outage(c, slot, node, failures[nid], now)
                    # kept for entitlements and seats, but never fresh: asked again next tick
                    fresh, until, record = now, _INF, None
                else:
                    asked = ", ".join(s.name for s in self.sources) or "none configured"
                    result = LicenceResult(nid, False, "no_licence",
                                           f"no source ({asked}) has a licence for reference {node.licence_ref!r}"
                                           if node.licence_ref else f"the node names no licence (sources: {asked})")
                    until, seat = _INF, None
                    fresh = min(self._fresh_until(nid, now), until)
            elif self._reusable(c, slot, bool(same[k]) and c.inputs[slot] == inputs, record, now):
                c.fresh[slot] = min(self._fresh_until(nid, now), c.made(slot)[1])  # kept as it is
                reused += 1
                if self._pool.fields[c.code_at(slot)][_VALID]:
                    c.good[slot], c.good_at[slot] = record, now
                continue
            else:
                result, until, seat = self.check(node, record, now)
                if result.valid:
                    c.good[slot], c.good_at[slot] = record, now
                fresh = min(self._fresh_until(nid, now), until)
            c.key[slot], c.rollback[slot] = stamps[k], rollbacks[k]
            c.fresh[slot] = fresh
            c.set(slot, record, pool_add(result), until, seat_code(seat), self._verdicts)
            if result.reason == "entitlement_missing" and self._last_granted is not None:
                c.granted[slot] = self._last_granted
            elif c.granted:
                c.granted.pop(slot, None)
            c.inputs[slot] = inputs
        return unavailable_nodes, reused

    def _outage(self, c: SlotCache, slot: int, node: Node, why: list[str], now: float
                ) -> tuple[LicenceResult, tuple[str, int] | None]:
        """The result of a node no source could answer for: ``(result, seat or None)``.

        Fail-open re-checks the last document a source gave for the node, now: a licence
        revoked, expired (past its grace) or otherwise invalid since is not kept valid by
        an outage.
        """
        settings = self.settings
        reasons = "; ".join(why)
        if settings.outage_policy == "fail-open":
            good = c.good[slot]
            if good is not None and now - c.good_at[slot] <= settings.outage_grace:
                record, since = good, float(c.good_at[slot])
                r, _, seat = self.check(node, record, now)
                if not r.valid:
                    return LicenceResult(
                        node.id, False, r.reason, f"{r.detail} (sources could not answer: {reasons}; the last "
                        "document they gave was checked again)", r.licence_id, r.customer, r.product, r.tier,
                        r.features, r.expires, False, r.source), None
                left = settings.outage_grace - (now - since)
                return LicenceResult(
                    node.id, True, "source_unavailable",
                    f"{reasons}; policy fail-open: last good licence {r.licence_id} checked again and kept, "
                    f"{left:.0f}s of outage grace left", r.licence_id, r.customer, r.product, r.tier, r.features,
                    r.expires, True, r.source), seat
            detail = (f"{reasons}; policy fail-open, but " +
                      ("no earlier good result is known" if good is None else
                       f"the outage grace of {settings.outage_grace:g}s is over"))
        else:
            detail = f"{reasons}; policy fail-closed"
        return LicenceResult(node.id, False, "source_unavailable", detail), None

    # -- checks ---------------------------------------------------------------------------

    def entitled(self, node_id: str, feature: str) -> bool:
        """Whether ``node_id`` may use ``feature`` according to its latest licence result."""
        c = self._slots
        if c is None or node_id in self._seat_losers:
            return False
        slot = c.table.index.get(node_id)
        if slot is None or slot >= len(c.entry) or c.code_at(slot) < 0 or c.born[slot] != c.table.born[slot]:
            return False
        fields = self._pool.fields[c.code_at(slot)]
        if fields[_VALID]:
            return feature in fields[_FEATURES]
        if fields[_REASON] == "entitlement_missing":
            return feature in c.granted.get(slot, ())
        return False

    def verify(self, record: LicenceRecord) -> Licence | EnvelopeError:
        """Verify a document once; later calls with the same bytes answer from the cache."""
        found = self._verified.get(record.digest)
        if found is None:
            self.stats["verified"] += 1
            try:
                found = FormatError(record.error) if record.error else verify_licence(record.document, self.keyring)
            except EnvelopeError as exc:
                found = exc
            except Exception as exc:  # noqa: BLE001 - a hostile document is malformed, never a crash
                found = FormatError(f"unreadable document ({type(exc).__name__})")
            if len(self._verified) >= _MAX_VERIFIED:
                self._verified.clear()
                self._granted.clear()
            self._verified[record.digest] = found
        return found

    def check(self, node: Node, record: LicenceRecord, now: float
               ) -> tuple[LicenceResult, float, tuple[str, int] | None]:
        """Check one node's licence document: ``(result, changes_at, seat or None)``.

        ``changes_at`` is the moment the result would change with time alone (the licence
        becomes valid, expires, its grace or a clock-rollback hold ends); infinity if never.
        Everything but seat counting, which needs the whole cluster.
        """
        settings = self.settings
        fresh = _INF
        lic = self.verify(record)
        nid = node.id
        if isinstance(lic, EnvelopeError):
            # a forged document's licence id is unverified: it is named by its content hash, so a
            # revocation of it (enforcement revokes forgeries) can never hit a real licence
            forged = f"sha256:{record.digest}" if lic.reason == "invalid_signature" else None
            return LicenceResult(nid, False, lic.reason, f"{record.origin or record.source}: {lic}", forged,
                                 source=record.source), fresh, None
        derived = self._granted.get(record.digest)
        if derived is None:
            granted = self.entitlements.granted(lic.tier, lic.features)
            derived = self._granted[record.digest] = (granted, tuple(sorted(granted)))
        granted, features = derived

        def result(valid: bool, reason: str, detail: str, in_grace: bool = False,
                   feats: tuple[str, ...] = features) -> LicenceResult:
            return LicenceResult(nid, valid, reason, detail, lic.licence_id, lic.customer, lic.product, lic.tier,
                                 feats, lic.expires, in_grace, record.source)

        lid = lic.licence_id
        if lid in self.revocations:
            entry = self.revocations.entries[lid]
            return result(False, "revoked", f"licence {lid} revoked at {format_time(entry.revoked_at)} "
                          f"(revocation list version {self.revocations.version})"
                          + (f": {entry.reason}" if entry.reason else "")), fresh, None
        if record.status == "suspended":
            return result(False, "suspended", f"source {record.source} reports licence {lid} suspended"), fresh, None
        if lic.product != settings.product:
            return result(False, "product_mismatch",
                          f"licence {lid} is for product {lic.product!r}, this cluster runs {settings.product!r}"
                          ), fresh, None
        customer = node.metadata.get("customer") or settings.customer
        if customer and lic.customer != customer:
            return result(False, "customer_mismatch",
                          f"licence {lid} is issued to {lic.customer!r}, the node belongs to {customer!r}"), fresh, None
        newer = self.ledger.seen(lid, lic.issued)
        if newer is not None:
            return result(False, "superseded", f"licence {lid} issued {format_time(lic.issued)} was replaced by "
                          f"an issue of {format_time(newer)}: an old licence replayed"), fresh, None
        if self.ledger.renewed:  # results cached from the older issue are dropped next tick
            self.ledger.renewed = False
            self._renewed = True
            self._verdicts += 1  # and never reused, from now on
            self._touched[lid] = self._verdicts
        if lic.fingerprints and node.fingerprint not in lic.fingerprints:
            shown = node.fingerprint if node.fingerprint is None else node.fingerprint[:23] + "..."
            return result(False, "machine_mismatch", f"licence {lid} is paired with {len(lic.fingerprints)} "
                          f"machine(s); node key {shown} is not one of them"), fresh, None
        if lic.integrity is not None:
            reported = node.metadata.get("integrity") if node.metadata else None
            if reported != lic.integrity:
                shown = "nothing" if reported is None else repr(str(reported)[:23] + "...")
                return result(False, "integrity_mismatch", f"licence {lid} pins integrity "
                              f"{lic.integrity[:23]}...; the node reports {shown}"), fresh, None
        rollback = node.last_rollback
        if rollback is not None and now - rollback < settings.rollback_hold:
            return result(False, "clock_rollback", f"node reported a time well before its last one at "
                          f"{format_time(rollback)}; licence checks distrust its clock for "
                          f"{settings.rollback_hold:g}s"), rollback + settings.rollback_hold, None
        if now < lic.not_before:
            return result(False, "not_yet_valid", f"licence {lid} is valid from {format_time(lic.not_before)}"
                          ), lic.not_before, None
        grace_until = lic.grace_until
        if now >= grace_until:
            return result(False, "expired", f"licence {lid} expired {format_time(lic.expires)}"
                          + (f", grace of {lic.grace_days} day(s) over" if lic.grace_days else "")), fresh, None
        wanted = requested_features(node, settings.required_features) \
            if (node.metadata or settings.required_features) else None
        if wanted:
            missing = self.entitlements.missing(granted, wanted)
            if missing:
                self._last_granted = granted
                return result(False, "entitlement_missing", f"licence {lid} (tier {lic.tier}) does not grant "
                              f"{', '.join(missing)}", feats=tuple(missing)), grace_until, None
        seat = (lid, lic.seats) if lic.seats is not None else None
        if now >= lic.expires:
            return result(True, "expired", f"licence {lid} expired {format_time(lic.expires)}; in grace until "
                          f"{format_time(grace_until)}", True), grace_until, seat
        return result(True, "ok", f"licence {lid} valid until {format_time(lic.expires)}"), \
            lic.expires, seat

    def _seats(self, nodes: Sequence[Node], ids: list[str], table: NodeTable, c: SlotCache, slots: np.ndarray,
               positions: np.ndarray, codes: np.ndarray) -> None:
        """Turn the results of the nodes over their licence's seat limit into ``too_many_nodes``
        (in ``codes``, this tick's result codes by position; the cache keeps the results).

        :param positions: where in ``nodes`` the holders of a seat-limited valid licence are,
            in ascending order (the same holders give the same signature whichever of them
            were looked up again this tick).
        """
        at = slots[positions]
        # same holders in the same states as last tick: same losers (no per-node allocation)
        signature = (self.epoch, at.tobytes(), table.born[at].tobytes(), table.status[at].tobytes(),
                     table.registered_at[at].tobytes(), c.seat_codes(at).tobytes())
        if signature == self._seat_signature:
            losers = self._seat_losers
        else:
            count_offline = self.settings.count_offline_seats
            seats, status = c.seats, table.status
            holders = [(seats[seat], nodes[i]) for i, slot, seat in zip(positions.tolist(), at.tolist(),
                                                                        c.seat_codes(at).tolist())
                       if count_offline or status[slot] != OFFLINE]
            losers = allocate_seats(holders)
            self._seat_signature, self._seat_losers = signature, losers
        if not losers:
            return
        fields = self._pool.fields
        for i in positions.tolist():
            nid = ids[i]
            lost = losers.get(nid)
            if lost is None:
                continue
            lid, seats_, users, rank = lost
            r = LicenceResult(nid, *fields[codes[i]])
            codes[i] = self._pool.add(LicenceResult(
                nid, False, "too_many_nodes", f"licence {lid} has {seats_} seat(s) and {users} nodes use it; this "
                f"node is number {rank} by registration time then id", r.licence_id, r.customer, r.product, r.tier,
                r.features, r.expires, False, r.source))
