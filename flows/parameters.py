"""A flow's parameters made from the run's choices (:class:`projmig.choices.RunChoices`): one
parameter per choice, with its type (or None: not given) and its description, so that Prefect's
parameter schema, its UI, ``prefect deployment run -p`` and a deployment's defaults all follow the one
definition. The flow function itself receives them together as ``choices`` (those given).

Two more parameters are a deployment's alone (:data:`DEPLOYMENT_ONLY`): ``bounds``, what its runs may
choose (:class:`projmig.bounds.RunBounds`), and ``host_block``, the block of its worker host's
resources. ``flows/credentials.py`` reads both from the deployment itself, after refusing a run whose
own differ; the flow function never sees them."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from projmig.bounds import RunBounds
from projmig.choices import CHOICES, RunChoices

F = TypeVar("F", bound=Callable[..., Any])


def choice_names(*, rollback: bool = False) -> list[str]:
    """The choices a flow takes: all of them for a migration, those that name what was migrated for its rollback."""
    return [name for name, choice in CHOICES.items() if choice.rollback or not rollback]


# (name, type, description) of the parameters only a deployment sets
DEPLOYMENT_ONLY = (
    ("bounds", RunBounds, "what runs of the deployment may choose (projmig.bounds.RunBounds; none: the closed "
                          "defaults); fixed by the deployment, unused by a local call"),
    ("host_block", str, "the ProjmigHost block of the worker host's resources (Dask scheduler, osparc's "
                        "migrations, staging server); fixed by the deployment, unused by a local call"),
)


def taking_choices(*, rollback: bool = False) -> Callable[[F], F]:
    """Give ``fn(settings, choices, **others)`` the choices as parameters of their own, after
    ``settings``, and the deployment's own parameters (:data:`DEPLOYMENT_ONLY`) last (a flow's
    signature and docstring are what Prefect reads)."""
    names = choice_names(rollback=rollback)
    fields = RunChoices.model_fields
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation=typing.Optional[fields[name].annotation])  # noqa: UP007 (a runtime type)
        for name in names
    ]
    fixed = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=typing.Optional[kind])  # noqa: UP007
        for name, kind, _ in DEPLOYMENT_ONLY
    ]
    described = "\n".join([f"        {name}: {fields[name].description}." for name in names]
                          + [f"        {name}: {description}." for name, _, description in DEPLOYMENT_ONLY])

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "choices"]
        parameters = own[:1] + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in added] + [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[1:]
        ] + fixed

        @functools.wraps(fn)
        async def with_choices(settings: Any = None, **kwargs: Any) -> Any:
            for name, _, _ in DEPLOYMENT_ONLY:
                kwargs.pop(name, None)  # the deployment's own value is what counts (flows/credentials.py)
            values = {name: kwargs.pop(name, None) for name in names}
            return await fn(settings, {name: v for name, v in values.items() if v is not None}, **kwargs)

        with_choices.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        with_choices.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": signature.return_annotation}
        with_choices.__doc__ = (fn.__doc__ or "").rstrip() + "\n" + described + "\n"
        return with_choices  # type: ignore[return-value]

    return decorate
