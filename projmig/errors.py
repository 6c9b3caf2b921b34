"""Errors an operator can act on: each renders as one line naming what to fix."""

from __future__ import annotations


class ProjmigError(Exception):
    """Base of every error projmig raises on purpose (not a bug)."""


class ConfigError(ProjmigError):
    """The configuration is malformed or incomplete."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class PreflightError(ProjmigError):
    """A check before any byte moves failed; nothing was written."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class TransferError(ProjmigError):
    """An object could not be copied. ``transient``: retries ran out on a network or server
    failure, so a rerun may well succeed (and a multipart upload is kept for it)."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class VerificationError(ProjmigError):
    """A destination object does not match its source."""


class InsertError(ProjmigError):
    """The destination transaction failed and was rolled back."""
