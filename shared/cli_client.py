"""What the client commands of ``conveyor`` share: where the stack is (``--url``, ``CONVEYOR_URL``), who
asks (``--token``, ``CONVEYOR_TOKEN``, or the token ``conveyor login`` stored), how answers are shown (a
table, or JSON with ``--json``), and how a failure ends (one line on stderr, exit 1).

Operator commands (``status``, ``queues``, ``dlq``, ``logs``) given no token and no URL, or given
``--data-dir``, ask the local stack's receptionist instead, as an internal operator with the data dir's
service token (what ``conveyor dlq`` always did).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from shared.client import AsyncClient, ClientError
from shared.client.transport import DEFAULT_URL


class CommandError(Exception):
    """A command that failed (exit 1, or ``code``), its reason on one line; ``output`` is what it did do."""

    def __init__(self, message: str, output: str = "", code: int = 1) -> None:
        super().__init__(message)
        self.output = output
        self.code = code


def add_client_options(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--url``, ``--token`` and ``--json``: on the main parser (``top``, with their defaults) and again on
    each client command, so that they may come before or after it."""
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--url", dest="api_url", default=default, metavar="URL",
                        help=f"the gateway (default: CONVEYOR_URL, else {DEFAULT_URL})")
    parser.add_argument("--token", dest="api_token", default=default, metavar="TOKEN",
                        help="a token (default: CONVEYOR_TOKEN, else the one `conveyor login` stored)")
    parser.add_argument("--json", dest="as_json", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="print JSON instead of a table")


def token_path() -> Path:
    """Where ``conveyor login`` keeps the token: ``$XDG_CONFIG_HOME/conveyor/token`` (``~/.config/...``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "conveyor" / "token"


def store_token(token: str) -> Path:
    """Write the token readable by its owner only (0600, whatever the umask), in a 0700 directory."""
    path = token_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(token + "\n")
    return path


def find_token(args: argparse.Namespace) -> str | None:
    if getattr(args, "api_token", None):
        return str(args.api_token)
    if env := os.environ.get("CONVEYOR_TOKEN"):
        return env
    try:
        return token_path().read_text().strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CommandError(f"cannot read {token_path()}: {exc.strerror}") from exc


def api_url(args: argparse.Namespace) -> str:
    return str(getattr(args, "api_url", None) or os.environ.get("CONVEYOR_URL") or DEFAULT_URL)


def client_for(args: argparse.Namespace) -> AsyncClient:
    """A client of the gateway, as the caller the token names (anonymous without one)."""
    return AsyncClient(api_url(args), find_token(args))


def operator_client(args: argparse.Namespace) -> AsyncClient:
    """A client for an operator command: the gateway with a token; else (or with ``--data-dir``) the local
    stack's receptionist, as an internal operator."""
    data_dir = getattr(args, "data_dir", None)
    token = find_token(args)
    remote = getattr(args, "api_url", None) or os.environ.get("CONVEYOR_URL")
    if data_dir is None and (token or remote):
        return AsyncClient(api_url(args), token)
    from shared.console import ConsoleError, Stack

    try:
        stack = Stack(data_dir or Path("var"))
    except ConsoleError as exc:
        raise CommandError(str(exc)) from exc
    return AsyncClient(stack.url, "", headers=stack.headers)


def show(args: argparse.Namespace, data: Any, text: Callable[[Any], str] | str) -> None:
    """Print ``data`` as JSON with ``--json``, else as ``text`` (or ``text(data)``)."""
    if getattr(args, "as_json", False):
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())
    else:
        print(text(data) if callable(text) else text)


def run(args: argparse.Namespace, name: str, command: Callable[[argparse.Namespace], Awaitable[int | None]]) -> int:
    """Run a client command: its exit code; any failure is one line on stderr and exit 1 (2 for usage)."""
    try:
        return asyncio.run(command(args)) or 0
    except CommandError as exc:
        if exc.output:
            print(exc.output)
        print(f"conveyor {name}: {exc}", file=sys.stderr)
        return exc.code
    except ClientError as exc:
        print(f"conveyor {name}: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError, TypeError) as exc:  # an answer or a file not as expected
        print(f"conveyor {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def usage(message: str) -> CommandError:
    return CommandError(message, code=2)
