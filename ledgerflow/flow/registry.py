"""One registry of workflows and activities: register a workflow once and it is served by the
worker and startable and steerable from the CLI, the SDK, the webhooks API and the Temporal UI.

* ``@register`` on a ``@workflow.defn`` class records its Temporal name, its one input model, its
  result model and every named signal and update with its argument model (all read from the
  Temporal definition, so they cannot drift apart).
* Activities: module-level ``@step_activity`` functions register themselves; activities that need
  the process's :class:`~ledgerflow.runtime.Runtime` are methods of an :class:`Activities`
  subclass, which registers itself and is instantiated once per worker.
* :func:`load` imports the built-in workflow modules and the ones named in the
  ``LEDGERFLOW_WORKFLOW_MODULES`` setting (a team's own package), so their registrations run.

Input is validated the same way everywhere with :func:`parse_input` (the workflow's own model).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from temporalio import workflow

from ledgerflow import jsonsafe
from ledgerflow.converter import MAX_INPUT_BYTES, MAX_INPUT_DEPTH, validation_message
from ledgerflow.errors import ConfigError

if TYPE_CHECKING:
    from ledgerflow.runtime import Runtime

__all__ = [
    "BUILTIN_WORKFLOW_MODULES",
    "Activities",
    "Registration",
    "activity_functions",
    "get",
    "load",
    "parse_input",
    "public",
    "register",
    "registrations",
]

#: The workflows that ship with ledgerflow.
BUILTIN_WORKFLOW_MODULES = (
    "ledgerflow.workflows.procurement",
    "ledgerflow.workflows.invoice",
    "ledgerflow.workflows.content",
    "ledgerflow.workflows.watcher",
    "ledgerflow.workflows.vendor_payment",
)
#: Activity modules every worker serves even if no workflow module imports them.
BUILTIN_ACTIVITY_MODULES = (
    "ledgerflow.activities.checkpoint",
    "ledgerflow.activities.events",
    "ledgerflow.activities.steps",
)

W = TypeVar("W", bound=type)
SteerKind = Literal["signal", "update"]


@dataclass(frozen=True)
class Registration:
    """What the rest of ledgerflow knows about a registered workflow."""

    name: str
    cls: type
    input_model: type[BaseModel]
    result_model: Any
    signals: dict[str, type[BaseModel]] = field(default_factory=dict)
    updates: dict[str, type[BaseModel]] = field(default_factory=dict)
    #: Startable from the CLI, the SDK and webhooks (internal workflows are not).
    public: bool = True

    def steering(self, kind: SteerKind) -> dict[str, type[BaseModel]]:
        """The signals or updates a caller may send, by name."""
        return self.signals if kind == "signal" else self.updates


_WORKFLOWS: dict[str, Registration] = {}
_ACTIVITY_CLASSES: list[type[Activities]] = []
_ACTIVITY_FUNCTIONS: list[Callable[..., Any]] = []
_loaded: set[str] = set()


def _model_of(types: list[type] | None, what: str) -> type[BaseModel]:
    if (
        not types
        or len(types) != 1
        or not (isinstance(types[0], type) and issubclass(types[0], BaseModel))
    ):
        raise TypeError(f"{what} must take exactly one pydantic model")
    return types[0]


def register(cls: W | None = None, *, public: bool = True) -> Any:
    """Register a ``@workflow.defn`` class (apply above ``@workflow.defn``).

    Args:
        cls: the workflow class.
        public: whether callers may start it (``False`` for internal workflows).

    Raises:
        TypeError: the class is not a workflow, or its run, a signal or an update does not take
            exactly one pydantic model.
    """

    def apply(klass: W) -> W:
        if workflow.unsafe.in_sandbox():
            # The sandbox re-imports workflow modules for every run: its copies of the classes
            # must not replace the registration the worker, the API and the SDK use.
            return klass
        defn = getattr(klass, "__temporal_workflow_definition", None)
        if defn is None or not defn.name:
            raise TypeError(f"{klass.__qualname__}: apply @register above @workflow.defn")
        signals = {
            name: _model_of(s.arg_types, f"signal {name} of {defn.name}")
            for name, s in defn.signals.items()
            if name
        }
        updates = {
            name: _model_of(u.arg_types, f"update {name} of {defn.name}")
            for name, u in defn.updates.items()
            if name
        }
        _WORKFLOWS[defn.name] = Registration(
            name=defn.name,
            cls=klass,
            input_model=_model_of(defn.arg_types, f"workflow {defn.name}"),
            result_model=defn.ret_type,
            signals=signals,
            updates=updates,
            public=public,
        )
        return klass

    return apply(cls) if cls is not None else apply


class Activities:
    """Base of activity classes that need the process's runtime (store, chain, signers).

    Subclasses register themselves; the worker builds one instance per process and serves every
    method declared with ``@step_activity`` (or ``@activity.defn``).
    """

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _ACTIVITY_CLASSES.append(cls)

    def all(self) -> list[Callable[..., Any]]:
        """This instance's activities (bound methods with a Temporal activity definition)."""
        out = []
        for name in dir(type(self)):
            member = getattr(type(self), name, None)
            if getattr(member, "__temporal_activity_definition", None) is not None:
                out.append(getattr(self, name))
        return out


def register_activity_function(fn: Callable[..., Any]) -> None:
    """Serve a module-level activity function on every worker (``@step_activity`` calls this)."""
    if fn not in _ACTIVITY_FUNCTIONS:
        _ACTIVITY_FUNCTIONS.append(fn)


def load(modules: Iterable[str] = ()) -> None:
    """Import the built-in workflow modules and ``modules`` (a team's own), once each.

    Raises:
        ConfigError: a module cannot be imported.
    """
    for name in (*BUILTIN_WORKFLOW_MODULES, *BUILTIN_ACTIVITY_MODULES, *modules):
        name = name.strip()
        if not name or name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"cannot import workflow module {name!r}: {exc}") from None
        _loaded.add(name)


def registrations() -> list[Registration]:
    """Every registered workflow (call :func:`load` first)."""
    load()
    return list(_WORKFLOWS.values())


def public() -> dict[str, Registration]:
    """The workflows callers may start, by Temporal name."""
    return {r.name: r for r in registrations() if r.public}


def get(name: str) -> Registration:
    """The registration of a public workflow.

    Raises:
        ConfigError: no public workflow has that name (the message lists the known ones).
    """
    known = public()
    if name not in known:
        raise ConfigError(
            f"unknown workflow type {name!r}; known: {', '.join(sorted(known)) or '(none)'}"
        )
    return known[name]


def parse_input(workflow_type: str, data: Any) -> BaseModel:
    """Validate ``data`` (a dict, a model or JSON text) as the input of ``workflow_type``.

    The same rules as the worker's data converter (:mod:`ledgerflow.converter`): JSON text is
    read with size and depth limits and without duplicate keys, and a strict model coerces
    nothing.

    Raises:
        ConfigError: unknown workflow type, or input that fails the workflow's model (the message
            says which field and why).
    """
    model = get(workflow_type).input_model
    try:
        if isinstance(data, model):
            return data
        if isinstance(data, BaseModel):
            data = data.model_dump(mode="json")
        if isinstance(data, str | bytes):
            data = jsonsafe.loads(
                data, max_bytes=MAX_INPUT_BYTES, max_depth=MAX_INPUT_DEPTH, what="input"
            )
        return model.model_validate(data)
    except jsonsafe.UnsafeJSON as exc:
        raise ConfigError(f"invalid input for {workflow_type}: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(f"invalid input for {workflow_type}: {validation_message(exc)}") from None


def workflow_classes() -> list[type]:
    """Every registered workflow class (what a worker serves)."""
    return [r.cls for r in registrations()]


def activity_functions(runtime: Runtime) -> list[Callable[..., Any]]:
    """Every registered activity, the runtime-bound ones bound to ``runtime``."""
    load()
    out: list[Callable[..., Any]] = list(_ACTIVITY_FUNCTIONS)
    for cls in _ACTIVITY_CLASSES:
        out.extend(cls(runtime).all())
    return out
