"""The agent's errors: one it cannot go on after, and an answer it cannot use."""

from __future__ import annotations


class AgentError(RuntimeError):
    """The agent cannot go on (enrolment refused, bad key file, ...)."""


class BadAnswer(ConnectionError):
    """The server's answer cannot be used (too big, too slow, malformed): retried."""
