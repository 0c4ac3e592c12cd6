"""The launcher's pieces that need no running stack."""

from __future__ import annotations

import importlib
import os
import socket
from pathlib import Path

import orjson
import pytest

from shared import cli, console
from shared.plan import URL_ENV, Options, missing_token, missing_urls, new_password, plan, service_ports, taken_port


def test_a_made_password_can_be_given_on_a_command_line() -> None:
    # One in 64 random tokens starts with "-", which argparse would take for an option (--password -x…).
    passwords = [new_password() for _ in range(2000)]
    assert not [p for p in passwords if p.startswith("-")]
    assert len(set(passwords)) == 2000 and all(len(p) == 16 for p in passwords)


def test_the_ports_checked_are_the_ports_planned(tmp_path: Path) -> None:
    opts = Options(receptionists=3, handlers=2, data_dir=tmp_path, port_base=41000)
    assert {name: port for name, _, port in service_ports(opts)} == {svc.name: svc.port for svc in plan(opts)}


REMOTE = {"registry_url": "http://192.0.2.10:8091", "scheduler_url": "http://192.0.2.10:8090",
          "logging_url": "http://192.0.2.10:8092"}


def _set_by_plan(env: dict[str, str]) -> dict[str, str]:
    """The variables the plan set or changed (the rest is inherited from this process)."""
    return {key: value for key, value in env.items() if os.environ.get(key) != value}


def test_a_handler_host_starts_handlers_only_and_reaches_the_others_at_their_given_urls(tmp_path: Path) -> None:
    opts = Options(data_dir=tmp_path, port_base=41000, host="192.0.2.2", only=frozenset({"handler"}), **REMOTE)
    services = plan(opts)
    assert [svc.name for svc in services] == ["handler-1", "handler-2"]
    assert [name for name, _, _ in service_ports(opts)] == ["handler-1", "handler-2"]
    for svc in services:
        env = _set_by_plan(svc.env)
        assert env["HANDLER_REGISTRY_URL"] == "http://192.0.2.10:8091"
        assert env["HANDLER_SCHEDULER_URL"] == "http://192.0.2.10:8090"
        assert env["HANDLER_LOG_URL"] == "http://192.0.2.10:8092"
        assert env["HANDLER_HOST"] == "192.0.2.2" and svc.url == f"http://192.0.2.2:{svc.port}"
        assert env["HANDLER_INSTANCE"] == f"{svc.name}@{socket.gethostname()}"
        assert not [key for key, value in env.items() if "127.0.0.1" in value or "localhost" in value]


def test_every_url_of_a_whole_stack_is_the_address_its_services_bind(tmp_path: Path) -> None:
    opts = Options(data_dir=tmp_path, port_base=41000, host="192.0.2.2")
    services = plan(opts)
    assert {svc.name for svc in services} == {name for name, _, _ in service_ports(opts)}
    for svc in services:
        env = _set_by_plan(svc.env)
        urls = {key: value for key, value in env.items() if key.endswith(("_URL", "RECEPTIONISTS"))
                and "://" in value and not value.startswith("sqlite")}
        assert urls and all("//192.0.2.2:" in value for value in urls.values()), (svc.name, urls)
        assert not [key for key, value in env.items() if "127.0.0.1" in value], svc.name


def test_each_service_binds_its_own_host_setting_when_up_is_given_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_HOST", "192.0.2.7")
    services = {svc.name: svc for svc in plan(Options(data_dir=tmp_path, port_base=41000))}
    assert services["registry"].env["REGISTRY_HOST"] == "192.0.2.7"
    assert services["receptionist-1"].env["RECEPTIONIST_REGISTRY_URL"] == "http://192.0.2.7:41011"
    assert services["scheduler"].env["SCHEDULER_HOST"] == "127.0.0.1"
    # --host is every service's, the registry's own setting included.
    services = {svc.name: svc for svc in plan(Options(data_dir=tmp_path, port_base=41000, host="0.0.0.0"))}
    assert services["registry"].env["REGISTRY_HOST"] == "0.0.0.0"
    assert services["receptionist-1"].env["RECEPTIONIST_REGISTRY_URL"] == "http://127.0.0.1:41011"


@pytest.mark.parametrize("settings_class", [
    "gateway.settings", "receptionist.settings", "scheduler.settings", "handler.settings", "registry.settings",
    "logging_service.settings"])
def test_every_service_binds_the_address_of_its_host_setting(settings_class: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    settings = importlib.import_module(settings_class).Settings
    prefix = settings.model_config["env_prefix"]
    monkeypatch.setenv(f"{prefix}HOST", "192.0.2.9")
    assert settings().host == "192.0.2.9"


def test_a_service_run_elsewhere_needs_its_url_and_a_local_one_refuses_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in URL_ENV.values():
        monkeypatch.delenv(name, raising=False)
    problems = missing_urls(Options(data_dir=tmp_path, only=frozenset({"handler"})))
    assert len(problems) == 3
    for flag, env in (("--logging-url", "CONVEYOR_LOGGING_URL"), ("--registry-url", "CONVEYOR_REGISTRY_URL"),
                      ("--scheduler-url", "CONVEYOR_SCHEDULER_URL")):
        assert any(flag in problem and env in problem and "handler" in problem for problem in problems), problems
    gateway_only = missing_urls(Options(data_dir=tmp_path, only=frozenset({"gateway"}), **REMOTE))
    assert len(gateway_only) == 1 and "--receptionist-url" in gateway_only[0], gateway_only
    monkeypatch.setenv("CONVEYOR_RECEPTIONIST_URLS", "http://192.0.2.10:8081,http://192.0.2.11:8081")
    assert missing_urls(Options(data_dir=tmp_path, only=frozenset({"gateway"}), **REMOTE)) == []
    gateway = plan(Options(data_dir=tmp_path, only=frozenset({"gateway"}), **REMOTE))[0]
    assert gateway.env["GATEWAY_RECEPTIONISTS"] == "http://192.0.2.10:8081,http://192.0.2.11:8081"
    assert gateway.env["GATEWAY_REGISTRY_URL"] == "http://192.0.2.10:8091"
    both = missing_urls(Options(data_dir=tmp_path, only=frozenset({"registry", "logging"}),
                                registry_url="http://192.0.2.10:8091"))
    assert len(both) == 1 and "this host starts the registry itself" in both[0], both
    monkeypatch.delenv("CONVEYOR_RECEPTIONIST_URLS")
    assert missing_urls(Options(data_dir=tmp_path)) == []  # the whole stack needs no URL
    bad = missing_urls(Options(data_dir=tmp_path, only=frozenset({"handler"}), **{**REMOTE, "scheduler_url": "10.0.0.1"}))
    assert bad == ["--scheduler-url (CONVEYOR_SCHEDULER_URL): not an http(s)://host:port URL: '10.0.0.1'"], bad


def test_a_host_that_calls_another_needs_that_hosts_service_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVEYOR_SERVICE_TOKEN", raising=False)
    handlers = Options(data_dir=tmp_path, only=frozenset({"handler"}), **REMOTE)
    assert "CONVEYOR_SERVICE_TOKEN" in (missing_token(handlers) or "")
    assert missing_token(Options(data_dir=tmp_path)) is None  # a whole stack makes its own
    monkeypatch.setenv("CONVEYOR_SERVICE_TOKEN", "t" * 48)
    assert missing_token(handlers) is None


def test_only_the_ports_of_the_services_started_are_checked(tmp_path: Path) -> None:
    handlers = Options(data_dir=tmp_path, only=frozenset({"handler"}), **REMOTE)
    for base in range(21000, 32000, 40):  # below the ephemeral ports that other tests' connections hold
        opts = Options(data_dir=tmp_path, port_base=base)
        handlers.port_base = base
        if taken_port(opts) is None:
            break
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base))  # the gateway's port is taken
        squatter.listen()
        assert taken_port(opts) == ("gateway", "127.0.0.1", base)
        assert taken_port(handlers) is None


def test_up_refuses_a_host_part_that_lacks_a_url_before_writing_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in URL_ENV.values():
        monkeypatch.delenv(name, raising=False)
    data_dir = tmp_path / "b"
    code = cli.main(["up", "--only", "handler", "--data-dir", str(data_dir), "--registry-url", REMOTE["registry_url"]])
    err = capsys.readouterr().err
    assert code == 2 and "--scheduler-url" in err and "--logging-url" in err and "--registry-url" not in err, err
    assert not data_dir.exists()
    with pytest.raises(SystemExit) as exc:
        cli.main(["up", "--only", "handler,recepsionist"])
    assert exc.value.code == 2 and "unknown service recepsionist" in capsys.readouterr().err


async def test_a_token_is_not_asked_of_a_host_that_runs_no_gateway(tmp_path: Path) -> None:
    # stack.json of `conveyor up --only registry,logging`: the registry is here, the gateway elsewhere.
    (tmp_path / "stack.json").write_bytes(orjson.dumps({"gateway": None, "services": [
        {"name": "registry", "url": "http://127.0.0.1:9"}]}))
    stack = console.Stack(tmp_path, None, service="registry")
    with pytest.raises(console.ConsoleError, match="runs no gateway"):
        await console.token(stack, "carol", "carol's password")


def test_every_instance_is_told_the_url_it_registers_and_the_registry_it_registers_with(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*URL_ENV.values(), "SCHEDULER_ADVERTISE_URL"):
        monkeypatch.delenv(name, raising=False)
    services = plan(Options(data_dir=tmp_path, port_base=41000, host="192.0.2.2"))
    prefixes = {"gateway": "GATEWAY_", "receptionist": "RECEPTIONIST_", "handler": "HANDLER_",
                "registry": "REGISTRY_", "scheduler": "SCHEDULER_", "logging_service": "LOGGING_"}
    for svc in services:
        prefix = prefixes[svc.name.split("-")[0]]
        assert svc.env[f"{prefix}ADVERTISE_URL"] == svc.url, svc.name  # what the others are told
        if prefix != "REGISTRY_":  # the registry registers in its own store
            assert svc.env[f"{prefix}REGISTRY_URL"] == "http://192.0.2.2:41011", svc.name
    # Every address, the whole stack here: every caller is on this host, on loopback.
    anywhere = {svc.name: svc for svc in plan(Options(data_dir=tmp_path, port_base=41000, host="0.0.0.0"))}
    assert anywhere["receptionist-2"].env["RECEPTIONIST_ADVERTISE_URL"] == "http://127.0.0.1:41002"
    # A host's part bound to every address: which one the other hosts reach is not known here, so the plan
    # says nothing (the instance does not register), unless the operator's environment does.
    workers = plan(Options(data_dir=tmp_path, port_base=41000, host="0.0.0.0", only=frozenset({"handler"}), **REMOTE))
    assert all("HANDLER_ADVERTISE_URL" not in svc.env for svc in workers)
    assert all(svc.env["HANDLER_REGISTRY_URL"] == REMOTE["registry_url"] for svc in workers)
    # A scheduler and a logging service registers with the registry when one is known, and starts without.
    part = Options(data_dir=tmp_path, port_base=41000, only=frozenset({"scheduler", "logging"}))
    assert missing_urls(part) == []
    assert all(not svc.env.get(f"{prefixes[svc.name]}REGISTRY_URL") for svc in plan(part))
    part.registry_url = REMOTE["registry_url"]
    assert all(svc.env[f"{prefixes[svc.name]}REGISTRY_URL"] == REMOTE["registry_url"] for svc in plan(part))
    monkeypatch.setenv("SCHEDULER_ADVERTISE_URL", "http://sched.example:8090")
    part.host = "0.0.0.0"
    (scheduler,) = [svc for svc in plan(part) if svc.name == "scheduler"]
    assert scheduler.env["SCHEDULER_ADVERTISE_URL"] == "http://sched.example:8090"  # the operator's, kept


async def test_a_service_that_exits_at_start_says_why_in_the_launchers_error(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The error carries the end of the service's log: a bench removes its data dir, and the log with it."""
    from shared.launcher import Launcher
    from tests.e2e.conftest import _free_port_base

    monkeypatch.setenv("LOGGING_LOG_LEVEL", "LOUDEST")  # not a level: the logging service stops at once
    launcher = Launcher(Options(data_dir=tmp_path, port_base=_free_port_base(), only=frozenset({"logging"}),
                                health_timeout_s=30))
    with pytest.raises(RuntimeError) as failed:
        await launcher.start()
    await launcher.stop()
    message = str(failed.value)
    assert message.startswith("logging_service exited with code 2; the end of ")
    assert "cannot start: invalid setting LOGGING_LOG_LEVEL" in message
