"""Which orchestrator keys an agent trusts (``wyneos_core.service.agent``).

The agent pins the orchestrator's public key at its first enrolment (from the
enrolment answer), or in advance (``--orchestrator-key``: a fingerprint or a key
file), and then refuses an enrolment answer that carries another key. After a key
rotation it follows the old key's signed hand-over to the new key and keeps trusting
the old one for what it signed before; the orchestrator's signed keyring statement
says which keys it no longer holds (no longer trusted) and which it retires (trusted
until their date, then refused for good).

``AgentKeys`` is the part of ``Agent`` that does this; it works on the agent's
``trusted`` keys, its ``state`` and its ``pin``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from wyneos_core.licensing.keys import KeyFileError, fingerprint, load_public_key, public_bytes
from wyneos_core.service import signed_actions as sa
from wyneos_core.service.agent_errors import AgentError, BadAnswer
from wyneos_core.service.identity import b64d

log = logging.getLogger("wyneos.agent")


class AgentKeys:
    """Pinning and following the orchestrator's keys (a part of ``Agent``, which provides
    the attributes below, ``_save_state`` and ``_report``)."""

    trusted: sa.TrustedKeys
    state: dict[str, Any]
    #: the key pinned in advance: raw public key bytes, a fingerprint, or None
    pin: bytes | str | None
    _keyring_seen: str | None
    _state_path: Path

    def _pin(self, raw: bytes) -> None:
        retired_at = self.state.get("retired", {}).get(sa.key_entry(raw)["key_id"])
        if retired_at is not None and retired_at <= sa.now_ms():
            log.warning("not pinning orchestrator key %s: it is retired", fingerprint(raw))
            return
        kid = self.trusted.add(raw)
        self._save_state()
        log.warning("pinned orchestrator key %s (%s)", kid, fingerprint(raw))

    def _check_enrolment_key(self, info: Any) -> None:
        """Pin the orchestrator key of an enrolment answer, or refuse the answer
        (``AgentError``) when it carries another key than the one pinned."""
        try:
            if not isinstance(info, dict):
                raise ValueError("no orchestrator_key")
            raw = b64d(info["public_key"])
            if len(raw) != 32:
                raise ValueError("not 32 bytes")
        except (KeyError, TypeError, ValueError) as exc:
            raise BadAnswer(f"the enrolment answer carries no usable orchestrator key ({exc})") from None
        fp = fingerprint(raw)
        kid = sa.key_entry(raw)["key_id"]
        if kid in self.trusted:
            return
        handover = info.get("handover")
        if len(self.trusted) or self.pin is not None:
            if handover is not None and len(self.trusted):
                try:
                    if sa.open_rotation(handover, self.trusted) == raw:
                        self._pin(raw)
                        return
                except sa.Refused:
                    pass
            if isinstance(self.pin, str) and not len(self.trusted):
                if fp == self.pin:
                    self._pin(raw)
                    return
                for entry in info.get("previous") or []:  # rotated after the operator read the fingerprint
                    try:
                        old = b64d(entry["public_key"])
                    except (KeyError, TypeError, ValueError):
                        continue
                    if fingerprint(old) == self.pin and handover is not None:
                        try:
                            if sa.open_rotation(handover, sa.TrustedKeys([old])) == raw:
                                self._pin(old)
                                self._pin(raw)
                                return
                        except sa.Refused:
                            pass
            pinned = ", ".join(self.trusted.fingerprints()) or str(self.pin)
            raise AgentError(f"the enrolment answer carries orchestrator key {fp}, not the pinned {pinned}: "
                             "refusing it (another orchestrator, or someone in between); if the orchestrator's key "
                             f"was replaced without `wyneos orchestrator-key rotate`, remove {self._state_path} "
                             "and pin the new key with --orchestrator-key")
        self._pin(raw)  # trust on first use: pin what the enrolment answer says

    def _follow_key(self, ref: Any) -> None:
        """Trust the successor of a pinned key after a rotation (from its signed hand-over),
        then apply the orchestrator's keyring statement (retired and dropped keys)."""
        if not isinstance(ref, dict) or not isinstance(ref.get("key_id"), str):
            return
        if ref["key_id"] not in self.trusted and "handover" in ref:
            try:
                raw = sa.open_rotation(ref["handover"], self.trusted)
            except sa.Refused as exc:
                self._report(exc.reason, f"orchestrator key hand-over refused: {exc.detail}", None)
            else:
                self._pin(raw)
        if ref.get("keyring") is not None:
            self._apply_keyring(ref["keyring"])

    def _apply_keyring(self, statement: Any) -> None:
        """Stop trusting the keys the orchestrator's keyring statement (signed by the
        newest pinned key) no longer lists, and note its retirements (``_retire_due``)."""
        signature = statement.get("signature") if isinstance(statement, dict) else None
        if signature is not None and signature == self._keyring_seen:
            self._retire_due()
            return
        try:
            listed, retired = sa.open_keyring(statement, self.trusted)
        except sa.Refused as exc:
            if exc.reason != "stale":  # an older key's statement (answers in flight during a rotation): ignored
                log.warning("orchestrator keyring statement refused (%s): %s", exc.reason, exc.detail)
            return
        self._keyring_seen = signature
        changed = False
        known = self.state.setdefault("retired", {})
        for kid, at in retired.items():
            if known.get(kid) != at:
                known[kid] = at
                changed = True
        for kid in list(known)[:-16]:  # bounded
            del known[kid]
        for kid in self.trusted.ids():
            if kid not in listed and self.trusted.remove(kid):
                log.warning("orchestrator key %s is no longer held by the orchestrator: not trusted any more", kid)
                changed = True
        if self._retire_due() or changed:
            self._save_state()

    def _retire_due(self) -> bool:
        """Stop trusting, for good, the retired keys whose date has passed; whether any was."""
        now = sa.now_ms()
        dropped = False
        for kid, at in self.state.get("retired", {}).items():
            if at <= now and kid in self.trusted and len(self.trusted) > 1 and self.trusted.remove(kid):
                log.warning("orchestrator key %s retired: actions signed by it are refused from now on", kid)
                dropped = True
        if dropped:
            self._save_state()
        return dropped

    def _orchestrator_keyring(self) -> Any:
        """The pinned orchestrator keys as a ``KeyRing`` (None while none is pinned)."""
        if not len(self.trusted):
            return None
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        from wyneos_core.licensing.keys import KeyRing

        return KeyRing(Ed25519PublicKey.from_public_bytes(raw) for raw in self.trusted.raw())


def _read_pin(text: str) -> bytes | str:
    """``--orchestrator-key``: a fingerprint, or a file with the PEM public key or a fingerprint."""
    import re

    if re.fullmatch(r"sha256:[0-9a-f]{64}", text.strip()):
        return text.strip()
    path = Path(text)
    try:
        if not path.is_file():
            raise AgentError(f"--orchestrator-key {text!r}: neither a fingerprint (sha256:<64 hex digits>) nor a file")
        if path.stat().st_size > 16 * 1024:
            raise AgentError(f"{path}: larger than 16 KiB; not a key file")
        content = path.read_text(errors="replace").strip()
    except OSError as exc:
        raise AgentError(f"{path}: cannot read the orchestrator key: {exc.strerror or exc}") from None
    if re.fullmatch(r"sha256:[0-9a-f]{64}", content):
        return content
    try:
        return public_bytes(load_public_key(path))
    except KeyFileError as exc:
        raise AgentError(f"{exc}; expected a PEM public key or a fingerprint (sha256:...)") from None
