"""The licence step's work: ask sources, verify, check, count seats, cache.

``LicenceEngine.validate(nodes, now)`` returns one ``LicenceResult`` per node. It is
kept apart from the plugin so that tests and benchmarks can drive it directly.

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

import math
import zlib
from collections.abc import Iterable, Sequence
from heapq import heappop, heappush
from typing import Any

from wyneos_core.licensing.document import Licence, format_time, verify_licence
from wyneos_core.licensing.entitlements import Entitlements, requested_features
from wyneos_core.licensing.envelope import EnvelopeError, FormatError
from wyneos_core.licensing.keys import KeyRing
from wyneos_core.licensing.ledger import Ledger
from wyneos_core.licensing.revocation import Revocation, RevocationList
from wyneos_core.licensing.seats import allocate_seats
from wyneos_core.licensing.settings import LicenceSettings
from wyneos_core.licensing.sources import LicenceRecord, SourceUnavailable, call_within
from wyneos_core.model import LicenceResult, Node, NodeStatus

__all__ = ["LicenceEngine"]

_MAX_VERIFIED = 200_000
_INF = float("inf")
_FAR = 10**15
_UNSET = object()
#: a cached result is kept at least this share of ``cache_ttl``; it is refreshed at the
#: node's own point of a grid of period ``(1 - _MIN_SHARE) * cache_ttl`` (its phase fixed
#: by a hash of the node id), so its life is in ``[_MIN_SHARE * ttl, ttl)`` and, once a
#: node is on its grid, every node is re-asked once per period at the same phase: an even
#: share of the cluster per tick, whatever tick the results were made in
_MIN_SHARE = 0.2
#: cache entry fields (a tuple per node; the warm loop reads them by position)
_REF, _FP, _ROLLBACK, _FEATURES, _CUSTOMER, _INTEGRITY, _FRESH, _RESULT, _SEAT, _RECORD, _UNTIL, _VERDICTS = range(12)


def _second(moment: float) -> int:
    """The whole second a refresh point is filed under (far-off or odd moments: the last one)."""
    return math.floor(moment) if -_FAR < moment < _FAR else (-_FAR if moment <= -_FAR else _FAR)


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
        #: node id -> features granted, for nodes refused with entitlement_missing
        self._granted_to: dict[str, frozenset[str]] = {}
        #: node id -> (licence_ref, fingerprint, last_rollback, metadata features, metadata customer,
        #:             metadata integrity,
        #:             fresh_until, result, seat (licence_id, seats) or
        #:             None, record the result was made from (None: not reusable), the moment the
        #:             result changes by time alone, verdicts counter when it was made).
        #: Only fresh entries of the current epoch: the warm loop checks the node's inputs alone.
        self._cache: dict[str, list[Any]] = {}
        self._cache_epoch = 0
        #: the cache's refresh points: node ids by whole second of their fresh_until (an id may
        #: be filed more than once; the entry's own fresh_until decides), and a heap of the seconds
        self._due: dict[int, list[str]] = {}
        self._due_seconds: list[int] = []
        self._due_count = 0
        #: entries taken out of the cache this tick (expired, or of an older epoch): a re-asked
        #: node may keep its result from them
        self._stale: dict[str, list[Any]] = {}
        self._last_good: dict[str, tuple[LicenceResult, float]] = {}
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
        document = self.ledger.revocation_document
        if document is None:
            return
        try:
            kept = RevocationList.from_document(document, self.keyring)
        except EnvelopeError as exc:
            try:  # our own copy: its key may have been rotated out since; the revocations still hold
                kept = RevocationList.from_document(document, self.keyring, verify=False)
            except EnvelopeError:
                self.notes.append(f"licence.ledger: the kept revocation list is unreadable ({exc}); "
                                  "revocations are known again once a list is provided")
                return
            self.notes.append(f"licence.ledger: the kept revocation list version {kept.version} no longer "
                              f"verifies ({exc.reason}); its revocations stay in force")
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
        kept = self.revocations.version
        if stamp is None:
            self.revocation_problem = None
            if kept:
                self.revocation_problem = (f"revocation list {path} is missing; the {len(self.revocations.entries)} "
                                           f"revocation(s) of version {kept} accepted earlier stay in force")
            elif self.ledger.revocation_version:
                self.revocation_problem = (f"revocation list {path} is missing, and version "
                                           f"{self.ledger.revocation_version} was accepted before: revoked "
                                           "licences are unknown until that list (or a newer one) is provided")
            if self.revocation_problem:
                self.notes.append(self.revocation_problem)
            return
        try:
            fresh = RevocationList.load(path, self.keyring)
        except EnvelopeError as exc:
            self.revocation_problem = (f"revocation list {path} refused ({exc.reason}): {exc}; "
                                       f"keeping version {kept}")
            self.notes.append(self.revocation_problem)
            return
        floor = max(kept, self.ledger.revocation_version)
        if fresh.version < floor:
            self.revocation_problem = (f"revocation list {path} has version {fresh.version}, older than version "
                                       f"{floor} already accepted: refused (replayed old list?)")
            if kept:
                self.revocation_problem += f"; the revocations of version {kept} stay in force"
            else:
                self.revocation_problem += ("; no accepted list is known: revoked licences are unknown until a list "
                                            "at least as new is provided")
            self.notes.append(self.revocation_problem)
            return
        self.revocation_problem = None
        if fresh.version == kept:
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

    def validate(self, nodes: Sequence[Node], now: float) -> list[LicenceResult]:
        """One result per node, in the order of ``nodes``."""
        cache = self._cache
        if self._cache_epoch != self.epoch:  # everything is looked up again; old entries may be reused
            self._cache_epoch = self.epoch
            self._stale, self._cache = cache, {}
            self._due, self._due_seconds, self._due_count = {}, [], 0
            cache = self._cache
        else:
            self._expire(now)
        stale = self._stale
        out: list[LicenceResult | None] = []
        append = out.append
        misses: list[tuple[int, Node, tuple, list | None]] = []
        miss = misses.append
        seated: list[int] = []  # positions of the nodes whose valid licence has a seat limit
        seat_at = seated.append
        cache_get = cache.get
        # the hot loop of a warm tick: no allocation per node unless something changed; an
        # entry in the cache is fresh (expired ones were moved out) and of this epoch
        for position, (node_id, ref, fp, rollback, md) in enumerate(_fields(nodes)):
            e = cache_get(node_id)
            if e is not None and e[0] == ref and e[1] == fp and e[2] == rollback:
                if (md.get("features") == e[3] and md.get("customer") == e[4] and md.get("integrity") == e[5]) \
                        if md else (e[3] is None and e[4] is None and e[5] is None):
                    if e[8] is not None:  # _SEAT
                        seat_at(len(out))
                    append(e[7])  # _RESULT
                    continue
            miss((len(out), nodes[position], (ref, fp, rollback, md.get("features"), md.get("customer"),
                                               md.get("integrity")), e if e is not None else stale.get(node_id)))
            append(None)
        self.stats["cached"] = len(nodes) - len(misses)
        if misses:
            self._resolve(misses, out, seated, now)
        if len(cache) > len(nodes) or any(nid not in cache for nid in stale):
            self._forget_departed(nodes)
        self._stale = {}
        if misses:
            seated.sort()  # in the order of ``nodes``, as on a tick without misses
        if seated:
            self._seats(seated, out, nodes)
        else:
            self._seat_signature, self._seat_losers = (), {}
        self.ledger.save()
        return out  # type: ignore[return-value]

    def _expire(self, now: float) -> None:
        """Move the cache entries due for a refresh at ``now`` out of the cache (into ``_stale``)."""
        due, seconds, cache, stale = self._due, self._due_seconds, self._cache, self._stale
        current = _second(now)
        later: list[str] = []
        while seconds and seconds[0] <= current:
            second = heappop(seconds)
            ids = due.pop(second)
            self._due_count -= len(ids)
            for node_id in ids:
                e = cache.get(node_id)
                if e is not None:
                    if e[_FRESH] <= now:
                        stale[node_id] = cache.pop(node_id)
                    elif second == current and _second(e[_FRESH]) == second:
                        later.append(node_id)  # due later in this very second
        if later:
            self._schedule([(current, node_id) for node_id in later])

    def _schedule(self, items: list[tuple[int, str]]) -> None:
        """File ``(second, node_id)`` refresh points."""
        due, seconds = self._due, self._due_seconds
        for second, node_id in items:
            ids = due.get(second)
            if ids is None:
                due[second] = [node_id]
                heappush(seconds, second)
            else:
                ids.append(node_id)
        self._due_count += len(items)

    def _forget_departed(self, nodes: Sequence[Node]) -> None:
        """Drop what is kept of nodes that are no longer in the cluster."""
        live = set(nodes.ids()) if hasattr(nodes, "ids") else {n.id for n in nodes}
        for table in (self._cache, self._last_good, self._granted_to):
            for node_id in [k for k in table if k not in live]:
                del table[node_id]

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

    def _reusable(self, old: list | None, key: tuple, record: LicenceRecord, now: float) -> bool:
        """Whether the cached entry ``old`` still holds for ``record``, handed over again now.

        It does when it was made from the same document (bytes, source, origin, status),
        for the same node inputs, its licence's state has not changed with time since, and
        neither the revocation list nor a renewal has touched its licence since.
        """
        if old is None:
            return False
        kept = old[_RECORD]
        if kept is None or now >= old[_UNTIL] or not (kept is record or kept == record):
            return False
        if old[_VERDICTS] < self._touched.get(old[_RESULT].licence_id, 0):
            return False
        return (old[0], old[1], old[2], old[3], old[4], old[5]) == key

    # -- sources --------------------------------------------------------------------------

    def _resolve(self, misses: list[tuple[int, Node, tuple, list | None]], out: list, seated: list[int],
                 now: float) -> None:
        self.stats["looked_up"] = len(misses)
        pending = [node for _, node, _, _ in misses]
        records: dict[str, LicenceRecord] = {}
        failures: dict[str, list[str]] = {}
        for source in self.sources:
            if not pending:
                break
            answers = self._ask(source, pending, now, failures)
            still = []
            for node in pending:
                record = answers.get(node.id)
                if record is None:
                    still.append(node)
                else:
                    records[node.id] = record
            pending = still
        unavailable_nodes = reused = 0
        policy = self.settings.outage_policy
        cache = self._cache
        scheduled: list[tuple[int, str]] = []
        for index, node, key, old in misses:
            nid = node.id
            record = records.get(nid)
            if record is None:
                if nid in failures:
                    unavailable_nodes += 1
                    result, seat = self._outage(node, failures[nid], now)
                    # kept for entitlements and seats, but never fresh: asked again next tick
                    cache[nid] = [*key, now, result, seat, None, _INF, self._verdicts]
                    scheduled.append((_second(now), nid))
                    out[index] = result
                    if seat is not None:
                        seated.append(index)
                    continue
                asked = ", ".join(s.name for s in self.sources) or "none configured"
                result = LicenceResult(nid, False, "no_licence",
                                       f"no source ({asked}) has a licence for reference {node.licence_ref!r}"
                                       if node.licence_ref else f"the node names no licence (sources: {asked})")
                until, seat = _INF, None
            else:
                if self._reusable(old, key, record, now):
                    # kept as it is, in place: the entry stays where it is in memory, so the warm
                    # loop keeps walking entries laid out in the order they were first made
                    old[_FRESH] = fresh = min(self._fresh_until(nid, now), old[_UNTIL])  # type: ignore[index]
                    cache[nid] = old  # type: ignore[assignment]
                    reused += 1
                    out[index] = old[_RESULT]  # type: ignore[index]
                    if old[_SEAT] is not None:  # type: ignore[index]
                        seated.append(index)
                    if old[_RESULT].valid:  # type: ignore[index]
                        self._last_good[nid] = (record, now)
                    scheduled.append((_second(fresh), nid))
                    continue
                result, until, seat = self.check(node, record, now)
                if result.valid:
                    self._last_good[nid] = (record, now)
            fresh = min(self._fresh_until(nid, now), until)
            cache[nid] = [*key, fresh, result, seat, record, until, self._verdicts]
            scheduled.append((_second(fresh), nid))
            out[index] = result
            if seat is not None:
                seated.append(index)
        self.stats["reused"] = reused
        if self._due_count + len(scheduled) > 2 * len(cache) + 1024:  # many superseded points: file anew
            self._due, self._due_seconds, self._due_count = {}, [], 0
            scheduled = [(_second(e[_FRESH]), k) for k, e in cache.items()]
        self._schedule(scheduled)
        if unavailable_nodes:
            self.stats["unavailable"] = unavailable_nodes
            self.notes.append(f"licence sources could not answer for {unavailable_nodes} node(s); outage policy "
                              f"{policy} applied (grace {self.settings.outage_grace:g}s)")

    def _ask(self, source: Any, pending: list[Node], now: float, failures: dict[str, list[str]]) -> dict:
        many = getattr(source, "lookup_many", None)
        try:
            if many is not None:
                answers = call_within(source, self.settings.source_timeout, many, pending, now)
                if not isinstance(answers, dict):
                    raise SourceUnavailable(f"lookup_many returned {type(answers).__name__}, expected a dict")
            else:
                failures_of: dict[str, str] = {}
                answers = call_within(source, self.settings.source_timeout, _lookup_each, source, pending, now,
                                      failures_of)
                for nid, why in failures_of.items():
                    failures.setdefault(nid, []).append(f"{source.name}: {why}")
        except Exception as exc:  # noqa: BLE001 - any failure of a source is an outage for its nodes
            what = str(exc) if isinstance(exc, SourceUnavailable) else f"{type(exc).__name__}: {exc}"
            self.notes.append(f"licence source {source.name!r} unavailable: {what}")
            for node in pending:
                failures.setdefault(node.id, []).append(f"{source.name}: {what}")
            return {}
        for node in pending:
            if node.id not in answers and node.id not in failures:
                failures.setdefault(node.id, []).append(f"{source.name}: no answer for this node")
        bad = [nid for nid, rec in answers.items() if rec is not None and not isinstance(rec, LicenceRecord)]
        for nid in bad:
            failures.setdefault(nid, []).append(f"{source.name}: returned {type(answers[nid]).__name__}, "
                                                "not a LicenceRecord")
            answers[nid] = None
        return answers

    def _outage(self, node: Node, why: list[str], now: float) -> tuple[LicenceResult, tuple[str, int] | None]:
        """The result of a node no source could answer for: ``(result, seat or None)``.

        Fail-open re-checks the last document a source gave for the node, now: a licence
        revoked, expired (past its grace) or otherwise invalid since is not kept valid by
        an outage.
        """
        settings = self.settings
        reasons = "; ".join(why)
        if settings.outage_policy == "fail-open":
            good = self._last_good.get(node.id)
            if good is not None and now - good[1] <= settings.outage_grace:
                record, since = good
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
        entry = self._cache.get(node_id)
        if entry is None or node_id in self._seat_losers:
            return False
        result = entry[_RESULT]
        if result.valid:
            return feature in result.features
        if result.reason == "entitlement_missing":
            return feature in self._granted_to.get(node_id, frozenset())
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
                self._granted_to[nid] = granted
                return result(False, "entitlement_missing", f"licence {lid} (tier {lic.tier}) does not grant "
                              f"{', '.join(missing)}", feats=tuple(missing)), grace_until, None
        seat = (lid, lic.seats) if lic.seats is not None else None
        if now >= lic.expires:
            return result(True, "expired", f"licence {lid} expired {format_time(lic.expires)}; in grace until "
                          f"{format_time(grace_until)}", True), grace_until, seat
        return result(True, "ok", f"licence {lid} valid until {format_time(lic.expires)}"), \
            lic.expires, seat

    def _seats(self, positions: list[int], out: list, nodes: Sequence[Node]) -> None:
        """Turn the results of the nodes over their licence's seat limit into ``too_many_nodes``.

        :param positions: where in ``nodes`` the holders of a seat-limited valid licence are,
            in ascending order (the same holders give the same signature whichever of them
            were looked up again this tick).
        """
        count_offline = self.settings.count_offline_seats
        offline = NodeStatus.OFFLINE
        cache = self._cache
        seated = [nodes[i] for i in positions]
        # same holders in the same states as last tick: same losers (no per-node allocation)
        signature = (self.epoch, tuple([n.id for n in seated]), tuple([n.status for n in seated]),
                     tuple([n.registered_at for n in seated]), tuple([cache[n.id][_SEAT] for n in seated]))
        if signature == self._seat_signature:
            losers = self._seat_losers
        else:
            holders = [(cache[node.id][_SEAT], node) for node in seated if count_offline or node.status is not offline]
            losers = allocate_seats(holders)
            self._seat_signature, self._seat_losers = signature, losers
        if not losers:
            return
        for i, node in zip(positions, seated):
            lost = losers.get(node.id)
            if lost is None:
                continue
            lid, seats, users, rank = lost
            r = out[i]
            out[i] = LicenceResult(node.id, False, "too_many_nodes",
                                   f"licence {lid} has {seats} seat(s) and {users} nodes use it; this node is "
                                   f"number {rank} by registration time then id", r.licence_id, r.customer,
                                   r.product, r.tier, r.features, r.expires, False, r.source)


def _lookup_each(source: Any, nodes: list[Node], now: float, failures: dict[str, str]) -> dict[str, Any]:
    """``source.lookup`` for each node (a source without ``lookup_many``), in one call
    that ``call_within`` can bound."""
    answers: dict[str, Any] = {}
    for node in nodes:
        try:
            answers[node.id] = source.lookup(node, now)
        except SourceUnavailable as exc:
            failures[node.id] = str(exc)
    return answers


def _fields(nodes: Sequence[Node]) -> Iterable[tuple[str, str | None, str | None, float | None, Any]]:
    """Each node's id, licence reference, fingerprint, last rollback and metadata: read
    from the node table's columns when ``nodes`` come from it, else from the nodes."""
    table = getattr(nodes, "table", None)
    if table is None:
        return ((n.id, n.licence_ref, n.fingerprint, n.last_rollback, n.metadata) for n in nodes)
    slots = nodes.slots.tolist()  # type: ignore[attr-defined]
    rollbacks = table.last_rollback[nodes.slots]  # type: ignore[attr-defined]
    rolled = [None if r != r else r for r in rollbacks.tolist()] if (rollbacks == rollbacks).any() \
        else [None] * len(slots)
    ids, refs, fps, mds = table.ids, table.licence_ref, table.fingerprint, table.metadata
    return zip([ids[s] for s in slots], [refs[s] for s in slots], [fps[s] for s in slots], rolled,
               [mds[s] for s in slots])
