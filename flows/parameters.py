"""A flow's parameters made from the run's choices (:class:`projmig.choices.RunChoices`): one
parameter per choice, with its type (or None: not given) and its description, so that Prefect's
parameter schema, its UI, ``prefect deployment run -p`` and a deployment's defaults all follow the one
definition. The flow function itself receives them together as ``choices`` (those given)."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from projmig.choices import CHOICES, RunChoices

F = TypeVar("F", bound=Callable[..., Any])


def choice_names(*, rollback: bool = False) -> list[str]:
    """The choices a flow takes: all of them for a migration, those that name what was migrated for its rollback."""
    return [name for name, choice in CHOICES.items() if choice.rollback or not rollback]


def taking_choices(*, rollback: bool = False) -> Callable[[F], F]:
    """Give ``fn(settings, choices, **others)`` the choices as parameters of their own, after
    ``settings`` (a flow's signature and docstring are what Prefect reads)."""
    names = choice_names(rollback=rollback)
    fields = RunChoices.model_fields
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation=typing.Optional[fields[name].annotation])  # noqa: UP007 (a runtime type)
        for name in names
    ]
    described = "\n".join(f"        {name}: {fields[name].description}." for name in names)

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "choices"]
        parameters = own[:1] + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in added] + [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[1:]
        ]

        @functools.wraps(fn)
        async def with_choices(settings: Any = None, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name, None) for name in names}
            return await fn(settings, {name: v for name, v in values.items() if v is not None}, **kwargs)

        with_choices.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        with_choices.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": signature.return_annotation}
        with_choices.__doc__ = (fn.__doc__ or "").rstrip() + "\n" + described + "\n"
        return with_choices  # type: ignore[return-value]

    return decorate
