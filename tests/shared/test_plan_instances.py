"""``conveyor up --registries N --schedulers N``: what is planned, and what is refused before anything starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared import cli
from shared.plan import Options, StackRefused, instance_problems, plan, service_ports

PG = "postgresql://postgres@192.0.2.5:5432/conveyor"
REDIS = "redis://192.0.2.6:6379/0"


@pytest.fixture
def shared_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_STORE_URL", PG)
    monkeypatch.setenv("SCHEDULER_STORE_URL", REDIS)


@pytest.fixture
def embedded_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGISTRY_STORE_URL", raising=False)
    monkeypatch.delenv("SCHEDULER_STORE_URL", raising=False)


def test_several_registries_and_schedulers_on_shared_stores_and_every_client_gets_them_all(
        tmp_path: Path, shared_stores: None) -> None:
    opts = Options(data_dir=tmp_path, port_base=41000, registries=2, schedulers=3, receptionists=2, handlers=2)
    assert instance_problems(opts) == []
    services = {svc.name: svc for svc in plan(opts)}
    ports = {name: port for name, _, port in service_ports(opts)}
    assert {name: ports[name] for name in services if name.startswith(("registry", "scheduler"))} == {
        "registry-1": 41070, "registry-2": 41071, "scheduler-1": 41060, "scheduler-2": 41061, "scheduler-3": 41062}
    for name in ("registry-1", "registry-2"):
        assert services[name].module == "registry" and services[name].env["REGISTRY_STORE_URL"] == PG
    for name in ("scheduler-1", "scheduler-2", "scheduler-3"):
        assert services[name].env["SCHEDULER_STORE_URL"] == REDIS
    registries = ["http://127.0.0.1:41070", "http://127.0.0.1:41071"]
    schedulers = ["http://127.0.0.1:41060", "http://127.0.0.1:41061", "http://127.0.0.1:41062"]
    # Each client has every instance, starting at another one, so that they spread.
    for i, prefix in ((1, "RECEPTIONIST_"), (2, "RECEPTIONIST_"), (1, "HANDLER_"), (2, "HANDLER_")):
        env = services[f"{prefix[:-1].lower()}-{i}"].env
        assert env[f"{prefix}REGISTRY_URL"].split(",") == registries[i - 1:] + registries[:i - 1]
        assert env[f"{prefix}SCHEDULER_URL"].split(",") == schedulers[i - 1:] + schedulers[:i - 1]
    assert services["gateway"].env["GATEWAY_REGISTRY_URL"] == ",".join(registries)


def test_one_instance_keeps_its_name_and_port(tmp_path: Path, embedded_stores: None) -> None:
    services = {svc.name: svc for svc in plan(Options(data_dir=tmp_path, port_base=41000))}
    assert services["registry"].port == 41011 and services["scheduler"].port == 41010
    assert services["handler-1"].env["HANDLER_REGISTRY_URL"] == "http://127.0.0.1:41011"


def test_several_instances_on_a_store_of_one_process_are_refused(tmp_path: Path, embedded_stores: None,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    problems = instance_problems(Options(data_dir=tmp_path, registries=2, schedulers=2))
    assert problems == [
        "--registries 2 needs a registry store every instance shares: set REGISTRY_STORE_URL to a postgresql:// "
        "URL (PostgreSQL); a sqlite store belongs to one process",
        "--schedulers 2 needs a scheduler store every instance shares: set SCHEDULER_STORE_URL to a redis:// "
        "URL (Redis); a sqlite store belongs to one process"]
    monkeypatch.setenv("SCHEDULER_STORE_URL", "memory://")
    monkeypatch.setenv("REGISTRY_STORE_URL", PG)
    assert instance_problems(Options(data_dir=tmp_path, registries=2, schedulers=2)) == [
        "--schedulers 2 needs a scheduler store every instance shares: set SCHEDULER_STORE_URL to a redis:// "
        "URL (Redis); a memory store belongs to one process"]
    with pytest.raises(StackRefused, match="SCHEDULER_STORE_URL"):
        plan(Options(data_dir=tmp_path, registries=2, schedulers=2))


def test_instances_of_a_service_this_host_does_not_start_are_refused(tmp_path: Path, shared_stores: None) -> None:
    opts = Options(data_dir=tmp_path, only=frozenset({"handler"}), registries=2)
    assert instance_problems(opts) == ["--registries 2: this host does not start the registry (--only)"]


def test_handlers_that_would_reach_the_instances_ports_are_refused(tmp_path: Path, shared_stores: None) -> None:
    assert instance_problems(Options(data_dir=tmp_path, handlers=40, schedulers=2)) == []
    problems = instance_problems(Options(data_dir=tmp_path, handlers=41, schedulers=2))
    assert problems == ["handler-41 and scheduler-1 would both listen on port 8140: run fewer handlers here"]


@pytest.mark.parametrize(("args", "message"), [
    (["--registries", "2"], "conveyor up: --registries 2 needs a registry store every instance shares"),
    (["--schedulers", "3"], "conveyor up: --schedulers 3 needs a scheduler store every instance shares"),
    (["--registries", "10"], "conveyor: at most 9 registries"),
    (["--schedulers", "0"], "argument --schedulers: must be at least 1"),
])
def test_up_refuses_them_on_one_line_before_anything_starts(
        tmp_path: Path, embedded_stores: None, capsys: pytest.CaptureFixture[str], args: list[str],
        message: str) -> None:
    data_dir = tmp_path / "stack"
    try:
        code = cli.main(["up", "--data-dir", str(data_dir), "--port-base", "41000", *args])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    if not err.startswith("usage"):
        assert len(err.strip().splitlines()) == 1, err
    assert not data_dir.exists()
    assert "REGISTRY_STORE_URL" not in os.environ
