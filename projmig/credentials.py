"""Credentials in a configuration: a value (``SecretStr``) or a :class:`SecretRef` naming where to
read it at run time (an environment variable, a Prefect Secret block read by a loader the caller
passes); references resolved, and values revealed only where a client is built. Knows nothing of the
configuration's models (:mod:`projmig.settings` uses it)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from .errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class SecretRef(BaseModel):
    """Where a secret lives, by name: safe to show, resolved only when the migration starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = Field(None, description="name of an environment variable holding the secret")
    prefect_secret: str | None = Field(None, description="name of a Prefect Secret block")

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.prefect_secret is None):
            raise ValueError("give exactly one of 'env' or 'prefect_secret'")
        return self

    def __str__(self) -> str:
        return f"env:{self.env}" if self.env else f"prefect-secret:{self.prefect_secret}"


Credential = SecretStr | SecretRef
SecretLoader = Callable[[str], str]  # a Prefect Secret block's name -> its value


def resolve_refs(model: M, prefect_secret: SecretLoader | None, problems: list[str]) -> M:
    """A copy of ``model`` with every :class:`SecretRef` in it (at any depth) replaced by its
    ``SecretStr`` value; each one that cannot be read is a line in ``problems`` naming its field."""

    def walk(model: BaseModel, path: str) -> BaseModel:
        updates: dict[str, Any] = {}
        for name in type(model).model_fields:
            value = getattr(model, name)
            where = f"{path}.{name}" if path else name
            if isinstance(value, SecretRef):
                updates[name] = SecretStr(_lookup(value, where, prefect_secret, problems))
            elif isinstance(value, BaseModel):
                updates[name] = walk(value, where)
        return model.model_copy(update=updates) if updates else model

    return walk(model, "")  # type: ignore[return-value]


def secret_refs(settings: BaseModel) -> list[SecretRef]:
    """Every :class:`SecretRef` in ``settings`` (to fetch Prefect Secrets before resolving)."""
    found: list[SecretRef] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretRef):
            found.append(value)
        elif isinstance(value, BaseModel):
            found += secret_refs(value)
    return found


class SecretNotFound(LookupError):
    """A secret's holder (a Prefect Secret block) does not exist or cannot be read; the message
    says which and why, never a value."""


def _lookup(ref: SecretRef, where: str, prefect_secret: SecretLoader | None, problems: list[str]) -> str:
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if value is None:
            problems.append(f"{where}: environment variable {ref.env} is not set")
        elif not value:
            problems.append(f"{where}: environment variable {ref.env} is empty")
        return value or ""
    if prefect_secret is None:
        problems.append(f"{where}: Prefect Secret {ref.prefect_secret!r} can only be read inside a Prefect flow")
        return ""
    try:
        value = prefect_secret(ref.prefect_secret or "")
    except SecretNotFound as exc:
        problems.append(f"{where}: {exc}")
        return ""
    if not value:
        problems.append(f"{where}: Prefect Secret block {ref.prefect_secret!r} is empty")
    return value


def reveal(value: Credential | None, what: str) -> str:
    """A resolved credential's value (``""`` for none); a reference still unresolved is a
    :class:`ConfigError` naming ``what``."""
    if isinstance(value, SecretRef):
        raise ConfigError(f"{what} still refers to {value}: resolve secrets first")
    return value.get_secret_value() if value is not None else ""


def reveal_or_ref(value: Credential) -> str:
    """A credential's value, or a reference's name: to tell whether two credentials are the same."""
    return str(value) if isinstance(value, SecretRef) else value.get_secret_value()
