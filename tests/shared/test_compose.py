"""``docker-compose.yml`` and the ``Dockerfile``, read as files (no Docker engine runs here): what they set is
what the services read, secrets stop ``docker compose up`` when unset, and everything waits on health."""

from __future__ import annotations

import importlib
import importlib.util
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, Any] = COMPOSE["services"]
#: Variables a Conveyor container may set that are no setting of its service: the standard AWS ones
#: (credentials of the S3 artifact store), and those the ``conveyor`` CLI reads.
STANDARD = re.compile(r"AWS_[A-Z_]+")
CLI_VARIABLES = {"CONVEYOR_PASSWORD", "CONVEYOR_SERVICE_TOKEN"}
#: The secrets of the deployment: each must stop ``docker compose up`` when unset.
SECRET = re.compile(r"TOKEN|SECRET|PASSWORD|KEY")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")


def _module(service: dict[str, Any]) -> str | None:
    """The Conveyor package a service runs (``python -m registry``), or None for another image."""
    command = service.get("command") or []
    if command[:2] == ["python", "-m"]:
        return command[2]
    return None


CONVEYOR = {name: module for name, svc in SERVICES.items() if (module := _module(svc))}


def _env_names(settings: type[BaseSettings]) -> set[str]:
    """Every variable ``settings`` reads: its prefix and each field's name, or the field's aliases."""
    prefix = settings.model_config.get("env_prefix", "")
    names = set()
    for field_name, field in settings.model_fields.items():
        aliases = [a for a in (field.alias, field.validation_alias) if isinstance(a, str)]
        names.update(a.upper() for a in aliases) if aliases else names.add(f"{prefix}{field_name}".upper())
    return names


def test_the_file_runs_the_conveyor_services_on_the_many_machine_backends() -> None:
    assert set(CONVEYOR.values()) == {"gateway", "receptionist", "scheduler", "handler", "registry",
                                      "logging_service"}
    env = {name: SERVICES[name]["environment"] for name in CONVEYOR}
    assert env["registry"]["REGISTRY_STORE_URL"].startswith("postgresql://")
    assert env["logging_service"]["LOGGING_STORE_URL"].startswith("postgresql://")
    assert env["logging_service"]["LOGGING_STORE_URL"].endswith("?schema=logs")
    assert env["scheduler"]["SCHEDULER_STORE_URL"].startswith("redis://")
    assert env["gateway"]["GATEWAY_RATE_LIMIT_URL"].startswith("redis://")
    for name in ("postgres", "redis", "minio"):  # PostgreSQL, Redis and an S3-compatible store
        assert name in SERVICES
    # Nothing a job needs is on one container's disk: receptionists and handlers share the bulk data store on
    # PostgreSQL and the artifacts on the S3-compatible store, and no Conveyor service mounts a volume.
    receptionists = [name for name, module in CONVEYOR.items() if module == "receptionist"]
    assert len(receptionists) == 2
    for name in [*receptionists, "handler"]:
        prefix = CONVEYOR[name].upper()
        assert env[name][f"{prefix}_DATA_STORE_URL"] == env["handler"]["HANDLER_DATA_STORE_URL"]
        assert env[name][f"{prefix}_DATA_STORE_URL"].startswith("postgresql://")
        assert env[name][f"{prefix}_ARTIFACTS_URL"] == env["handler"]["HANDLER_ARTIFACTS_URL"]
        assert env[name][f"{prefix}_ARTIFACTS_URL"].startswith("s3://")
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env[name])
    assert not any(SERVICES[name].get("volumes") for name in CONVEYOR)
    # The gateway routes to the receptionists the file runs, at their ports.
    routed = env["gateway"]["GATEWAY_RECEPTIONISTS"].split(",")
    assert routed == [f"http://{name}:{env[name]['RECEPTIONIST_PORT']}" for name in receptionists]


@pytest.mark.parametrize("name", sorted(CONVEYOR))
def test_every_variable_a_service_is_given_is_a_setting_it_reads(name: str) -> None:
    settings = importlib.import_module(f"{CONVEYOR[name]}.settings").Settings
    readable = _env_names(settings)
    given = set(SERVICES[name]["environment"])
    unknown = {var for var in given - readable if not STANDARD.fullmatch(var)}
    assert not unknown, f"{name} sets variables its Settings do not read: {sorted(unknown)}"
    prefix = settings.model_config["env_prefix"]
    # It listens on every interface of its container, and ships its logs (but the logging service's own).
    assert given >= {f"{prefix}HOST", f"{prefix}PORT", f"{prefix}SERVICE_TOKEN"}
    assert f"{prefix}LOG_URL" in given or name == "logging_service"
    assert SERVICES[name]["environment"][f"{prefix}HOST"] == "0.0.0.0"


@pytest.mark.parametrize("name", sorted(CONVEYOR))
def test_every_service_accepts_the_values_it_is_given(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = importlib.import_module(f"{CONVEYOR[name]}.settings").Settings
    for var, value in SERVICES[name]["environment"].items():
        # Secrets as an operator would set them: 40 URL-safe characters.
        monkeypatch.setenv(var, INTERPOLATION.sub("s" * 40, str(value)))
    loaded = settings()  # a value the service refuses fails here, as it would at the container's start
    prefix = settings.model_config["env_prefix"]
    assert loaded.host == "0.0.0.0" and str(loaded.port) == SERVICES[name]["environment"][f"{prefix}PORT"]


def test_the_settings_map_is_not_vacuous() -> None:
    from handler.settings import Settings

    names = _env_names(Settings)
    assert {"HANDLER_REGISTRY_URL", "HANDLER_HOST", "HANDLER_SERVICE_TOKEN"} <= names
    assert "HANDLER_REGISTRY" not in names and "REGISTRY_URL" not in names


def test_every_secret_stops_compose_when_unset() -> None:
    used = INTERPOLATION.findall(COMPOSE_TEXT)
    secrets = {var for var, _ in used if SECRET.search(var)}
    assert {"CONVEYOR_SERVICE_TOKEN", "CONVEYOR_JWT_SECRET", "POSTGRES_PASSWORD", "REDIS_PASSWORD",
            "CONVEYOR_ADMIN_PASSWORD"} <= secrets
    for var, rest in used:
        if SECRET.search(var):
            assert rest.startswith(":?") and len(rest) > 2, f"${{{var}{rest}}} does not stop compose when unset"
    # Every Conveyor service requires the internal token (an empty one would turn its auth off).
    for name in CONVEYOR:
        prefix = importlib.import_module(f"{CONVEYOR[name]}.settings").Settings.model_config["env_prefix"]
        token = SERVICES[name]["environment"][f"{prefix}SERVICE_TOKEN"]
        assert token.startswith("${CONVEYOR_SERVICE_TOKEN:?"), (name, token)
    assert SERVICES["gateway"]["environment"]["GATEWAY_JWT_SECRET"].startswith("${CONVEYOR_JWT_SECRET:?")


def test_every_service_has_a_healthcheck_and_waits_on_the_health_of_what_it_needs() -> None:
    for name, svc in SERVICES.items():
        if "profiles" in svc:  # a one-off command (`docker compose run`), not a server
            continue
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        depends = svc.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on as a list waits only for the start, not health"
        for other, condition in depends.items():
            assert other in SERVICES and condition == {"condition": "service_healthy"}, (name, other)
    for name in CONVEYOR:
        test = SERVICES[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"]
        port = next(v for k, v in SERVICES[name]["environment"].items() if k.endswith("_PORT"))
        assert f"http://127.0.0.1:{port}/health" in test[3], (name, test)
        compile(test[3], f"{name} healthcheck", "exec")
    # Whatever a service calls, it waits for.
    for name in CONVEYOR:
        env = " ".join(str(v) for v in SERVICES[name]["environment"].values())
        called = {other for other in SERVICES if re.search(rf"[/@]{re.escape(other)}:\d", env)}
        assert called <= set(SERVICES[name].get("depends_on", {})), (name, called)


def test_the_first_admin_is_made_by_a_command_the_cli_has() -> None:
    from shared.cli import build_parser

    admin = SERVICES["admin"]
    assert admin["profiles"] == ["admin"] and admin["depends_on"] == {"registry": {"condition": "service_healthy"}}
    command = admin["command"]
    assert command[0] == "conveyor"
    args = build_parser().parse_args(command[1:])
    assert (args.command, args.user_command, args.username, args.role) == ("user", "add", "admin", ["admin"])
    assert args.url == "http://registry:8091"
    assert set(admin["environment"]) <= CLI_VARIABLES
    assert admin["environment"]["CONVEYOR_PASSWORD"].startswith("${CONVEYOR_ADMIN_PASSWORD:?")
    cli = (ROOT / "shared" / "cli.py").read_text() + (ROOT / "shared" / "console.py").read_text()
    assert all(f'"{var}"' in cli for var in CLI_VARIABLES)  # the variables the CLI really reads


def test_the_dockerfile_runs_what_exists() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {line.split()[1] for line in lines if line.startswith("COPY ")}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    cmd = next(line for line in lines if line.startswith("CMD "))
    command = yaml.safe_load(cmd.removeprefix("CMD "))
    commands = [command, *(svc["command"] for svc in SERVICES.values() if _module(svc) or svc.get("build"))]
    for argv in commands:
        if argv[:2] == ["python", "-m"]:
            assert importlib.util.find_spec(f"{argv[2]}.__main__") is not None, argv
        else:
            assert argv[0] in pyproject["project"]["scripts"], argv
    install = next(line for line in lines if "pip install" in line)
    extras = re.search(r"\.\[([a-z0-9,]+)\]", install)
    assert extras and set(extras.group(1).split(",")) <= set(pyproject["project"]["optional-dependencies"])
