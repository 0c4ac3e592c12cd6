"""``python -m <service>``: every service's process starts here, so that every line it writes, from the
first, is one of the JSON lines its log file holds (:func:`shared.logs.setup_logging`).

Logging is set up before anything that can fail: the settings, the kinds, the app's modules. The
standard library's logging, warnings and an uncaught exception become lines of the same shape
(:func:`shared.logs.capture_stray_output`). What stops a service at start says why on one line:

- a setting the environment gets wrong: ``cannot start: invalid setting GATEWAY_RATE_LIMIT_PER_S: Input
  should be a valid number, …``, exit status 2, as for a misconfigured kind
  (:func:`shared.kinds.require_kinds`);
- an error that stops the app starting or serving (a store it cannot reach): ``stopped by an error:
  StoreUnavailable``, the error in ``meta.exception`` and its traceback in ``meta.traceback``, exit status 1.
"""

from __future__ import annotations

import importlib

from loguru import logger
from pydantic import ValidationError
from pydantic_settings import SettingsError

from shared.logs import capture_stray_output, setup_logging
from shared.settings import ServiceSettings


def setting_problems(settings_class: type[ServiceSettings], exc: ValidationError) -> dict[str, str]:
    """What is wrong with the settings, by the environment variable that set it (``GATEWAY_PORT``); a
    problem of no one field (a check across fields) is under ``settings``. The values are not repeated:
    a setting may be a secret."""
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    problems: dict[str, str] = {}
    for error in exc.errors(include_input=False, include_url=False):
        loc = error["loc"]
        name = f"{prefix}{loc[0]}".upper() if loc else "settings"
        reason = error["msg"]
        if len(loc) > 1:
            reason = f"item {'.'.join(str(part) for part in loc[1:])}: {reason}"
        problems[name] = f"{problems[name]}; {reason}" if name in problems else reason
    return problems


def serve(service: str, *, kinds: bool = False) -> None:
    """Run ``service`` (its package's ``settings.Settings`` and ``app.create_app``) until SIGINT or
    SIGTERM; ``kinds``: load the job kinds first (:func:`shared.kinds.require_kinds`)."""
    setup_logging(service)
    capture_stray_output()
    settings_class: type[ServiceSettings] = importlib.import_module(f"{service}.settings").Settings
    try:
        settings = settings_class()
    except ValidationError as exc:
        problems = setting_problems(settings_class, exc)
        logger.bind(settings=problems).error(
            "cannot start: invalid setting{} {}", "s" if len(problems) > 1 else "",
            "; ".join(f"{name}: {reason}" for name, reason in problems.items()))
        raise SystemExit(2) from None
    except SettingsError as exc:  # a value the environment source could not even parse (a list's JSON)
        logger.error("cannot start: invalid settings: {}", exc)
        raise SystemExit(2) from None
    name = settings.instance_name(service)
    setup_logging(name, settings.log_level)
    capture_stray_output(settings.log_level)
    if kinds:
        from shared.kinds import require_kinds

        require_kinds(name)
    from shared.web import run

    create_app = importlib.import_module(f"{service}.app").create_app
    try:
        run(create_app(settings), settings)
    except Exception as exc:
        logger.opt(exception=exc).critical("stopped by an error: {}", type(exc).__name__)
        raise SystemExit(1) from None
