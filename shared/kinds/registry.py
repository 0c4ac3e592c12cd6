"""The kinds one process knows, and how it comes to know them.

A kind is declared with :func:`kind` on its async ``run(ctx)``, or as a subclass of :class:`Kind` with the
same options as class attributes and an async ``run(self, ctx)``; importing the module registers it::

    @kind("acme.resize", payload=ResizePayload, retries=RetryPolicy(max_attempts=2), timeout_s=60, concurrency=2)
    async def resize(ctx: JobContext) -> dict[str, Any]: ...

    class Resize(Kind):
        name = "acme.resize"
        payload = ResizePayload
        retries = RetryPolicy(max_attempts=2)

        async def run(self, ctx: JobContext) -> dict[str, Any]: ...

A process loads kinds in this order (:func:`load_kinds`): the built-in kinds (``shared.kinds.books``,
``tasks``, ...: declared the same way, imported with :mod:`shared.kinds`); then each module named in
``CONVEYOR_KINDS`` (comma-separated module paths); then each entry point of the group ``conveyor.kinds``
(a module, or ``module:attribute``), which is how an installed distribution brings its kinds.

Anything wrong is a :class:`KindError` whose message names the kind or the module and where it came from:
a module that cannot be imported, a name taken twice, a built-in kind's name, a malformed name or option, a
module that declares no kind, a kind with a concurrency limit sharing its queue. Receptionists, handlers and
gateways load kinds before they serve anything, and stop with that message (:func:`require_kinds`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any, ClassVar

from loguru import logger
from pydantic import BaseModel

from shared.contract import KIND_PATTERN, JobKind, RetryPolicy
from shared.kinds.base import JobContext, KindSpec, RunFn

#: The environment variable naming modules of kinds to load, comma-separated.
KINDS_ENV = "CONVEYOR_KINDS"
#: The entry-point group installed distributions declare their kinds under.
ENTRY_POINT_GROUP = "conveyor.kinds"
#: The names of the kinds Conveyor ships: no other module may take them.
RESERVED = frozenset(str(k) for k in JobKind)
_BUILTIN_PACKAGE = "shared.kinds."
_KIND_NAME = re.compile(KIND_PATTERN)
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class KindError(Exception):
    """A kind that cannot be registered or loaded. A service that meets one stops at start."""


class UnknownKind(LookupError):
    """No kind of this name is registered in this process."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"no kind {self.name!r} is registered here"


class KindRegistry:
    """The kinds of one process, by name. :data:`KINDS` is the process's own; tests make others."""

    def __init__(self) -> None:
        self._specs: dict[str, KindSpec] = {}
        self._origins: dict[str, str] = {}
        self._loading: tuple[str, str] | None = None  # what is being imported now and its module, for messages
        self.loaded = False

    def register(self, spec: KindSpec) -> KindSpec:
        """Add ``spec`` (the queue defaults to its name); a :class:`KindError` when it cannot be."""
        builtin = spec.module.startswith(_BUILTIN_PACKAGE)
        origin = f"built-in, {spec.module}" if builtin else f"module {spec.module or '?'}"
        if self._loading is not None:
            where, module = self._loading
            origin = where if _within(spec.module, module) else f"{origin}, imported by {where}"
        name = spec.kind
        if not isinstance(name, str) or not _KIND_NAME.fullmatch(name):
            raise KindError(f"kind {name!r} ({origin}): a kind's name is 1 to 64 lower-case letters, digits, "
                            "'_', '-' or '.', starting with a letter (like 'acme.resize')")
        if problem := _problem(spec):
            raise KindError(f"kind {name!r} ({origin}): {problem}")
        if name in RESERVED and not builtin:
            raise KindError(f"kind {name!r} ({origin}): the name is reserved for a built-in kind; choose another, "
                            f"such as 'yourcompany.{name}'")
        if name in self._specs:
            raise KindError(f"kind {name!r} is registered twice: by {self._origins[name]} and by {origin}")
        spec = replace(spec, queue=spec.queue or name)
        self._specs[name] = spec
        self._origins[name] = origin
        return spec

    def __getitem__(self, name: str) -> KindSpec:
        try:
            return self._specs[str(name)]
        except KeyError:
            raise UnknownKind(str(name)) from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._specs))

    def __len__(self) -> int:
        return len(self._specs)

    def specs(self) -> list[KindSpec]:
        """Every kind, by name."""
        return [self._specs[name] for name in sorted(self._specs)]

    def origin(self, name: str) -> str:
        """Where the kind ``name`` came from (``built-in``, ``CONVEYOR_KINDS module 'acme'``, an entry point)."""
        return self._origins[name]

    def queues(self) -> list[str]:
        """Every kind's queue, once each, sorted."""
        return sorted({spec.queue for spec in self._specs.values()})

    def load(self, modules: Iterable[str] = (), entry_points: Iterable[importlib.metadata.EntryPoint] = ()) -> None:
        """Import ``modules``, then load ``entry_points``, registering the kinds they declare here; then
        :meth:`check` the whole. Raises :class:`KindError`."""
        for module in modules:
            self._import(f"{KINDS_ENV} module {module!r}", module, lambda module=module: importlib.import_module(module))
        for ep in entry_points:
            dist = f" of {ep.dist.name} {ep.dist.version}" if ep.dist is not None else ""
            where = f"entry point {ep.name!r} = {ep.value!r} (group {ENTRY_POINT_GROUP}{dist})"
            loaded = self._import(where, ep.module, ep.load)
            if isinstance(loaded, type) and issubclass(loaded, Kind) and loaded.spec is not None:
                loaded = loaded.spec  # a class of a module imported before: registered where it was
            if isinstance(loaded, KindSpec) and loaded.kind not in self:
                self._loading = (where, loaded.module)
                try:
                    self.register(loaded)
                finally:
                    self._loading = None
        self.check()

    def check(self) -> None:
        """What no single kind can be checked for: a kind with a concurrency limit has its queue to itself,
        since a handler holds back a queue, not a kind, while the kind's slots are taken."""
        for spec in self._specs.values():
            if spec.concurrency is None:
                continue
            others = sorted(n for n, s in self._specs.items() if s.queue == spec.queue and n != spec.kind)
            if others:
                raise KindError(f"kind {spec.kind!r} ({self._origins[spec.kind]}) has a concurrency limit, so it "
                                f"needs a queue of its own, but its queue {spec.queue!r} also takes "
                                f"{', '.join(repr(o) for o in others)}: give it another queue")

    def _import(self, where: str, module: str, load: Callable[[], Any]) -> Any:
        global _target
        previous_target, _target = _target, self
        self._loading = (where, module)
        try:
            loaded = load()
        except KindError:
            raise
        except Exception as exc:
            raise KindError(f"{where} cannot be imported: {type(exc).__name__}: {exc}") from exc
        finally:
            _target, self._loading = previous_target, None
        declared = isinstance(loaded, KindSpec) or (isinstance(loaded, type) and issubclass(loaded, Kind))
        if not declared and not any(_within(spec.module, module) for spec in self._specs.values()):
            raise KindError(f"{where} declares no kind: decorate its run function with @shared.kinds.kind(...), "
                            "or subclass shared.kinds.Kind")
        return loaded


def _within(module: str, package: str) -> bool:
    """Whether ``module`` is ``package`` or one of its submodules."""
    return module == package or module.startswith(package + ".")


def _problem(spec: KindSpec) -> str | None:
    """What is wrong with one kind's options, or None."""
    if not (isinstance(spec.payload, type) and issubclass(spec.payload, BaseModel)):
        return f"payload must be a pydantic model class, not {spec.payload!r}"
    try:
        spec.payload.model_json_schema()
    except Exception as exc:  # the OpenAPI document is made of these schemas
        return f"its payload model {spec.payload.__name__} has no JSON schema: {exc}"
    if not inspect.iscoroutinefunction(spec.run):
        return "run must be an async function: async def run(ctx) -> dict"
    if not isinstance(spec.retry, RetryPolicy):
        return "retries must be a shared.kinds.RetryPolicy"
    if isinstance(spec.timeout_s, bool) or not isinstance(spec.timeout_s, int | float) or not (
            spec.timeout_s > 0 and math.isfinite(spec.timeout_s)):
        return f"timeout_s must be a positive number of seconds, not {spec.timeout_s!r}"
    if spec.queue and not (isinstance(spec.queue, str) and _QUEUE_NAME.fullmatch(spec.queue)):
        return f"queue {spec.queue!r} is not a queue name (letters, digits, '_', '-', '.'; at most 100)"
    if spec.concurrency is not None and (isinstance(spec.concurrency, bool) or not isinstance(spec.concurrency, int)
                                         or spec.concurrency < 1):
        return f"concurrency must be a whole number of at least 1, or None, not {spec.concurrency!r}"
    if spec.own_route is not None and not (isinstance(spec.own_route, str) and spec.own_route.startswith("/")):
        return f"own_route must be a path like '/tasks', not {spec.own_route!r}"
    if spec.own_route_only and spec.own_route is None:
        return "own_route_only needs the own_route its jobs come by"
    for name in spec.fetch_urls:
        if name not in spec.payload.model_fields:
            return f"fetch_urls names {name!r}, which is no field of {spec.payload.__name__}"
    return None


#: The process's kinds.
KINDS = KindRegistry()
#: Where :func:`kind` registers: :data:`KINDS`, or the registry that is loading a module.
_target = KINDS


def kind(name: str, *, payload: type[BaseModel], retries: RetryPolicy | None = None, timeout_s: float = 600.0,
         timeout_scaled: bool = False, queue: str | None = None, concurrency: int | None = None,
         own_route: str | None = None, own_route_only: bool = False, fetch_urls: Iterable[str] = (),
         uses_datastore: bool = False) -> Callable[[RunFn], RunFn]:
    """Declare the decorated ``async def run(ctx)`` as the kind ``name``:

    - ``payload``: the pydantic model a submission's payload is validated with (``ctx.job.payload`` is
      its JSON dump);
    - ``retries``: attempts and backoff (default: 3 attempts, 1 s base, 60 s cap);
    - ``timeout_s``: an attempt running longer fails (``timeout_scaled``: shrink it with the handler's
      time scale, for simulated work);
    - ``queue``: the scheduler queue (default: the kind's name);
    - ``concurrency``: jobs of this kind one handler runs at once, at most (the kind then needs a queue of
      its own);
    - ``own_route``, ``own_route_only``, ``fetch_urls``, ``uses_datastore``: see :class:`KindSpec`.

    The function is returned unchanged; :data:`KINDS` holds the kind."""

    def register(run: RunFn) -> RunFn:
        _declare(name, run, getattr(run, "__module__", "") or "", payload=payload, retries=retries, timeout_s=timeout_s, timeout_scaled=timeout_scaled,
                 queue=queue, concurrency=concurrency, own_route=own_route, own_route_only=own_route_only,
                 fetch_urls=fetch_urls, uses_datastore=uses_datastore)
        return run

    return register


def _declare(name: str, run: Any, module: str, *, payload: Any, retries: RetryPolicy | None, queue: str | None,
             fetch_urls: Iterable[str], **options: Any) -> KindSpec:
    """Register a kind of ``module`` where kinds are being registered (:data:`KINDS`, or the registry loading
    a module): what :func:`kind` and a :class:`Kind` subclass both do."""
    return _target.register(KindSpec(
        kind=str(name) if isinstance(name, str) else name, payload=payload, run=run,
        retry=retries if retries is not None else RetryPolicy(), queue=queue or "", fetch_urls=tuple(fetch_urls),
        module=module, **options))


class Kind:
    """A kind declared as a class: the options of :func:`kind` as class attributes (``name`` and ``payload``
    at least) and an async ``run(self, ctx)``. Defining a subclass that sets ``name`` registers it, as
    :func:`kind` would, so a module of such classes loads like one of decorated functions (``CONVEYOR_KINDS``,
    an entry point naming the module or the class); a subclass without a ``name`` of its own is a base for
    others. Each job gets a new instance, so ``run`` may keep its state on ``self``; the class's
    :attr:`spec` is what was registered."""

    name: ClassVar[str]
    payload: ClassVar[type[BaseModel]]
    retries: ClassVar[RetryPolicy | None] = None
    timeout_s: ClassVar[float] = 600.0
    timeout_scaled: ClassVar[bool] = False
    queue: ClassVar[str | None] = None
    concurrency: ClassVar[int | None] = None
    fetch_urls: ClassVar[tuple[str, ...]] = ()
    uses_datastore: ClassVar[bool] = False
    #: What the registry holds for this class (None for a base without a name).
    spec: ClassVar[KindSpec | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.spec = None
        if "name" not in cls.__dict__:
            return
        method = cls.run if cls.run is not Kind.run else None
        run: Any = method  # none, or not async: the registry refuses it, as it would a decorated function's
        if inspect.iscoroutinefunction(method):
            @functools.wraps(method)
            async def run(ctx: JobContext) -> dict[str, Any]:
                return await cls().run(ctx)

        cls.spec = _declare(cls.name, run, cls.__module__, payload=getattr(cls, "payload", None), retries=cls.retries,
                            timeout_s=cls.timeout_s, timeout_scaled=cls.timeout_scaled, queue=cls.queue,
                            concurrency=cls.concurrency, fetch_urls=cls.fetch_urls, uses_datastore=cls.uses_datastore)

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        """The job's work, as a decorated kind's ``run(ctx)``: its ``result``."""
        raise NotImplementedError


def load_kinds(environ: dict[str, str] | None = None) -> KindRegistry:
    """Load the kinds of ``CONVEYOR_KINDS`` and of the ``conveyor.kinds`` entry points into :data:`KINDS`
    (the built-ins are there already), once per process. Raises :class:`KindError`."""
    if not KINDS.loaded:
        env = os.environ if environ is None else environ
        modules = [m.strip() for m in env.get(KINDS_ENV, "").split(",") if m.strip()]
        KINDS.load(modules, importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        KINDS.loaded = True
    return KINDS


def require_kinds(service: str) -> KindRegistry:
    """:func:`load_kinds` for a service's start (:mod:`shared.entry`): a misconfigured kind stops the
    process with its message logged (one line on stderr) and exit status 2, before anything is served."""
    try:
        return load_kinds()
    except KindError as exc:
        logger.error("{}: cannot start: {}", service, exc)
        raise SystemExit(2) from None
