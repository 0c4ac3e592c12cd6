"""The kind registry: what a kind may be called and declare, where kinds are loaded from, and what stops a
service at start (a module that cannot be imported, a name taken twice or reserved, a bad option), said in
a message that names the kind and where it came from. The last tests start real service processes."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel

from handler.lanes import lanes_of, queues_of
from handler.settings import Settings as HandlerSettings
from shared.kinds import KINDS, KindError, KindRegistry, KindSpec, RetryPolicy, UnknownKind
from tests.plugins import install


class Payload(BaseModel):
    n: int = 0


async def run(ctx: Any) -> dict[str, Any]:
    return {}


def spec(name: str = "acme.thing", **options: Any) -> KindSpec:
    return KindSpec(kind=name, payload=options.pop("payload", Payload), run=options.pop("run", run),
                    module=options.pop("module", "acme"), **options)


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Write a module of kinds (a fresh name each time, so Python imports it anew); returns its name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(body: str) -> str:
        name = f"kinds_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{name}.py").write_text("from pydantic import BaseModel\nfrom shared.kinds import kind\n\n"
                                             "class P(BaseModel):\n    n: int = 0\n\n" + body)
        return name

    return write


def declaring(*names: str, **options: str) -> str:
    extra = "".join(f", {k}={v}" for k, v in options.items())
    return "".join(f"@kind({n!r}, payload=P{extra})\nasync def run_{i}(ctx):\n    return {{}}\n\n"
                   for i, n in enumerate(names))


def test_the_built_in_kinds_are_registered_like_any_other() -> None:
    assert list(KINDS) == ["data_export", "data_import", "ecg", "export", "import", "task"]
    assert KINDS.origin("task") == "built-in, shared.kinds.tasks"
    assert KINDS["export"].queue == "export" and KINDS["export"].retry.max_attempts == 3
    with pytest.raises(UnknownKind, match=r"no kind 'acme\.crop' is registered here"):
        KINDS["acme.crop"]


def test_a_kind_gets_its_name_as_queue_unless_it_names_one() -> None:
    kinds = KindRegistry()
    assert kinds.register(spec("acme.a")).queue == "acme.a"
    assert kinds.register(spec("acme.b", queue="images")).queue == "images"
    assert kinds.queues() == ["acme.a", "images"] and list(kinds) == ["acme.a", "acme.b"]


@pytest.mark.parametrize("name", ["Acme", "acme resize", "1acme", "", "a" * 65, "acme/resize", "acme:x"])
def test_a_kind_name_is_lower_case_letters_digits_and_separators(name: str) -> None:
    with pytest.raises(KindError, match="a kind's name is 1 to 64 lower-case letters"):
        KindRegistry().register(spec(name))


@pytest.mark.parametrize("name", ["export", "import", "task", "ecg", "data_import", "data_export"])
def test_the_built_in_names_are_reserved(name: str) -> None:
    with pytest.raises(KindError, match=f"kind '{name}' .*reserved for a built-in kind; choose another"):
        KindRegistry().register(spec(name))


@pytest.mark.parametrize(("options", "message"), [
    ({"payload": dict}, "payload must be a pydantic model class"),
    ({"run": lambda ctx: {}}, "run must be an async function"),
    ({"timeout_s": 0}, "timeout_s must be a positive number"),
    ({"timeout_s": float("inf")}, "timeout_s must be a positive number"),
    ({"concurrency": 0}, "concurrency must be a whole number of at least 1"),
    ({"concurrency": True}, "concurrency must be a whole number of at least 1"),
    ({"queue": "a queue"}, "queue 'a queue' is not a queue name"),
    ({"retry": {"max_attempts": 3}}, "retries must be a shared.kinds.RetryPolicy"),
    ({"own_route": "tasks"}, "own_route must be a path"),
    ({"own_route_only": True}, "own_route_only needs the own_route"),
    ({"fetch_urls": ("url",)}, "fetch_urls names 'url', which is no field of Payload"),
])
def test_bad_options_are_refused_naming_the_kind(options: dict[str, Any], message: str) -> None:
    with pytest.raises(KindError, match=f"kind 'acme.thing' \\(module acme\\): {message}"):
        KindRegistry().register(spec(**options))


def test_a_name_taken_twice_names_both_sources(modules: Any) -> None:
    first, second = modules(declaring("acme.thing")), modules(declaring("acme.thing"))
    with pytest.raises(KindError) as caught:
        KindRegistry().load([first, second])
    assert str(caught.value) == (f"kind 'acme.thing' is registered twice: by CONVEYOR_KINDS module '{first}' and "
                                 f"by CONVEYOR_KINDS module '{second}'")


def test_a_kind_a_module_imports_from_another_is_named_after_its_own(modules: Any) -> None:
    original = modules(declaring("acme.thing"))
    copycat = modules(f"import {original}\n\n" + declaring("acme.thing"))
    with pytest.raises(KindError) as caught:
        KindRegistry().load([copycat])
    assert str(caught.value) == (f"kind 'acme.thing' is registered twice: by module {original}, imported by "
                                 f"CONVEYOR_KINDS module '{copycat}' and by CONVEYOR_KINDS module '{copycat}'")


def test_one_module_named_twice_is_loaded_once(modules: Any) -> None:
    name = modules(declaring("acme.thing"))
    kinds = KindRegistry()
    kinds.load([name, name], [importlib.metadata.EntryPoint("acme", name, "conveyor.kinds")])
    assert list(kinds) == ["acme.thing"]


@pytest.mark.parametrize(("body", "message"), [
    ("raise RuntimeError('no licence')\n", "cannot be imported: RuntimeError: no licence"),
    ("def broken(:\n", "cannot be imported: SyntaxError"),
    ("import acme_does_not_exist\n", "cannot be imported: ModuleNotFoundError: No module named 'acme_does_not_exist'"),
    ("", "declares no kind: decorate its run function with @shared.kinds.kind"),
    ("@kind('acme.thing', payload=P)\ndef run(ctx):\n    return {}\n", "kind 'acme.thing' (CONVEYOR_KINDS module"),
])
def test_a_module_that_cannot_be_loaded_is_named(modules: Any, body: str, message: str) -> None:
    name = modules(body)
    with pytest.raises(KindError, match=f"CONVEYOR_KINDS module '{name}'") as caught:
        KindRegistry().load([name])
    assert message in str(caught.value)


def test_an_entry_point_is_named_with_its_distribution(modules: Any) -> None:
    name = modules(declaring("acme.thing", "acme.other"))
    kinds = KindRegistry()
    kinds.load([], [importlib.metadata.EntryPoint("acme", name, "conveyor.kinds")])
    assert list(kinds) == ["acme.other", "acme.thing"]
    assert kinds.origin("acme.thing") == f"entry point 'acme' = '{name}' (group conveyor.kinds)"
    with pytest.raises(KindError, match=r"entry point 'broken' = 'acme_nowhere' .* cannot be imported"):
        KindRegistry().load([], [importlib.metadata.EntryPoint("broken", "acme_nowhere", "conveyor.kinds")])


def test_a_kind_with_a_concurrency_limit_needs_a_queue_of_its_own(modules: Any) -> None:
    limited = modules(declaring("acme.limited", concurrency="2", queue="'images'"))
    other = modules(declaring("acme.other", queue="'images'"))
    with pytest.raises(KindError, match=r"'acme\.limited' .* has a concurrency limit, so it needs a queue of its own, "
                                        r"but its queue 'images' also takes 'acme\.other'"):
        KindRegistry().load([limited, other])


def test_a_limited_kind_runs_in_a_lane_of_its_own() -> None:
    """Per handler process: the kind's limit (never more than the handler's concurrency) for its queue, and
    the handler's concurrency for every other queue."""
    kinds = KindRegistry()
    kinds.register(spec("acme.a", concurrency=2))
    kinds.register(spec("acme.b", concurrency=50, queue="big"))
    kinds.register(spec("acme.c"))
    queues = queues_of(HandlerSettings(), kinds)
    assert queues == ["acme.a", "acme.c", "big"]
    lanes = {lane.name: (lane.queues, lane.slots) for lane in lanes_of(queues, 16, kinds)}
    assert lanes == {"shared": (["acme.c"], 16), "acme.a": (["acme.a"], 2), "acme.b": (["big"], 16)}
    assert {lane.name for lane in lanes_of(["acme.a"], 16, kinds)} == {"acme.a"}
    assert queues_of(HandlerSettings(queues="acme.c,acme.c"), kinds) == ["acme.c"]


def test_the_decorator_returns_the_function_and_declares_the_kind(modules: Any) -> None:
    name = modules(declaring("acme.thing", retries="__import__('shared.kinds').kinds.RetryPolicy(max_attempts=5)",
                             timeout_s="30", concurrency="3"))
    kinds = KindRegistry()
    kinds.load([name])
    declared = kinds["acme.thing"]
    module = sys.modules[name]
    assert declared.run is module.run_0 and declared.payload is module.P and declared.module == name
    assert (declared.retry, declared.timeout_s, declared.concurrency, declared.timeout_scaled) == (
        RetryPolicy(max_attempts=5), 30, 3, False)


CLASSES = """
from shared.kinds import Kind, RetryPolicy

class Images(Kind):  # no name: a base for the kinds below, not a kind
    payload = P
    retries = RetryPolicy(max_attempts=5)
    concurrency = 3

    def __init__(self):
        self.calls = []

class Resize(Images):
    name = "acme.resize"
    timeout_s = 30

    async def run(self, ctx):
        self.calls.append(ctx.job.payload)
        return {"n": ctx.job.payload["n"], "calls": len(self.calls)}

class Crop(Images):
    name = "acme.crop"
    queue = "crops"

    async def run(self, ctx):
        return {}
"""


async def test_a_kind_may_be_a_class_with_its_options_as_attributes(modules: Any) -> None:
    name = modules(CLASSES)
    kinds = KindRegistry()
    kinds.load([name])
    module = sys.modules[name]
    assert list(kinds) == ["acme.crop", "acme.resize"]  # the base without a name is no kind
    resize = kinds["acme.resize"]
    assert resize is module.Resize.spec and module.Images.spec is None
    assert (resize.payload, resize.module, resize.retry, resize.timeout_s, resize.concurrency, resize.queue) == (
        module.P, name, RetryPolicy(max_attempts=5), 30, 3, "acme.resize")
    assert (kinds["acme.crop"].queue, kinds["acme.crop"].timeout_s) == ("crops", 600.0)
    assert kinds.origin("acme.resize") == f"CONVEYOR_KINDS module {name!r}"
    # Each job runs on an instance of its own.
    job = SimpleNamespace(job=SimpleNamespace(payload={"n": 7}))
    assert [await resize.run(job), await resize.run(job)] == [{"n": 7, "calls": 1}, {"n": 7, "calls": 1}]


def test_an_entry_point_may_name_a_class(modules: Any) -> None:
    name = modules(CLASSES)
    kinds = KindRegistry()
    kinds.load([], [importlib.metadata.EntryPoint("acme", f"{name}:Resize", "conveyor.kinds")])
    assert kinds.origin("acme.resize") == f"entry point 'acme' = '{name}:Resize' (group conveyor.kinds)"
    kinds = KindRegistry()  # the module imported already: the class's kind is registered all the same
    kinds.load([], [importlib.metadata.EntryPoint("acme", f"{name}:Resize", "conveyor.kinds")])
    assert list(kinds) == ["acme.resize"] and kinds["acme.resize"] == sys.modules[name].Resize.spec


@pytest.mark.parametrize(("body", "message"), [
    ("from shared.kinds import Kind\nclass K(Kind):\n    name = 'acme.k'\n    payload = P\n",
     "kind 'acme.k' .*: run must be an async function"),
    ("from shared.kinds import Kind\nclass K(Kind):\n    name = 'acme.k'\n    payload = P\n"
     "    def run(self, ctx):\n        return {}\n", "kind 'acme.k' .*: run must be an async function"),
    ("from shared.kinds import Kind\nclass K(Kind):\n    name = 'acme.k'\n    async def run(self, ctx):\n"
     "        return {}\n", "kind 'acme.k' .*: payload must be a pydantic model class"),
    ("from shared.kinds import Kind\nclass K(Kind):\n    name = 'acme.k'\n    payload = P\n"
     "    async def run(self, ctx):\n        return {}\n\n" + declaring("acme.k"), "'acme.k' is registered twice"),
])
def test_a_misdeclared_class_is_refused_naming_it(modules: Any, body: str, message: str) -> None:
    name = modules(body)
    with pytest.raises(KindError, match=message):
        KindRegistry().load([name])


@pytest.mark.parametrize("service", ["receptionist", "handler", "gateway"])
async def test_a_service_with_a_misconfigured_kind_exits_at_start_saying_why(service: str, tmp_path: Path) -> None:
    """The real process: a module of ``CONVEYOR_KINDS`` that takes the name of an installed distribution's
    kind (its entry point) stops it before it listens, exit status 2, the reason on stderr."""
    (tmp_path / "copycat.py").write_text(
        "from pydantic import BaseModel\nfrom shared.kinds import kind\n\nclass P(BaseModel):\n    n: int\n\n"
        "@kind('acme.resize', payload=P)\nasync def resize(ctx):\n    return {}\n")
    env = install(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), env["PYTHONPATH"]]),
           "CONVEYOR_KINDS": "copycat", f"{service.upper()}_PORT": "1", f"{service.upper()}_ARTIFACTS_DIR": str(tmp_path)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", service, env=env, cwd=tmp_path,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 2, err.decode()
    assert (f"{service}: cannot start: kind 'acme.resize' is registered twice: by CONVEYOR_KINDS module 'copycat' "
            "and by entry point 'acme' = 'acme_kinds' (group conveyor.kinds of acme-kinds 0.1.0)") in err.decode()
