"""The ``conveyor`` commands of a user of the API: ``login``, ``submit``, ``jobs``, ``job``, ``cancel`` and
``logs``, through :mod:`shared.client`."""

from __future__ import annotations

import argparse
import getpass
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from shared.cli_client import (
    CommandError,
    add_client_options,
    client_for,
    operator_client,
    show,
    store_token,
    usage,
)
from shared.client import Job
from shared.table import table


def _seconds(text: str) -> float:
    """A number of seconds for ``--delay``: finite, since NaN and infinity have no JSON (they would go as
    null, and the job would run at once)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, not {text!r}")
    return value


def _timeout(text: str) -> float:
    """``--timeout``: refused here, before the job is submitted, rather than after it by the wait."""
    value = _seconds(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text!r}")
    return value


def add_parsers(sub: Any, positive: Any) -> None:
    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        add_client_options(parser)
        return parser

    login = command("login", "log in at the gateway and keep the token (mode 0600) for the other commands")
    login.add_argument("username")
    login.add_argument("--password-stdin", action="store_true", help="read the password from stdin")

    submit = command("submit", "submit a job of any kind (POST /jobs), and --wait for it")
    submit.add_argument("kind")
    submit.add_argument("fields", nargs="*", metavar="PAYLOAD",
                        help="the payload: one JSON object, or fields as key=text and key:=JSON (seconds:=2)")
    submit.add_argument("--payload-file", default=None, metavar="FILE", help="the payload's JSON from a file (-: stdin)")
    submit.add_argument("--priority", type=int, default=None, help="-100..100, higher first (default 0)")
    when = submit.add_mutually_exclusive_group()
    when.add_argument("--delay", type=_seconds, default=None, metavar="SECONDS", help="not before this many seconds")
    when.add_argument("--run-at", default=None, metavar="TIME", help="not before this RFC 3339 time")
    submit.add_argument("--idempotency-key", default=None, help="default: one made for this submission")
    submit.add_argument("--wait", action="store_true", help="wait until the job ends, showing its progress")
    submit.add_argument("--timeout", type=_timeout, default=None, metavar="SECONDS", help="how long --wait waits")

    jobs = command("jobs", "list jobs, newest first (yours; an operator's: everyone's)")
    jobs.add_argument("--kind", default=None)
    jobs.add_argument("--state", default=None, choices=["pending", "processing", "finished", "failed", "cancelled"])
    jobs.add_argument("--owner", default=None, help="an owner's id (operators)")
    jobs.add_argument("--limit", type=positive, default=20, help="at most this many (default 20)")

    job = command("job", "one job: its state, attempts, errors and history")
    job.add_argument("job_id")

    cancel = command("cancel", "cancel a job")
    cancel.add_argument("job_id")

    logs = command("logs", "log lines, newest last (a job's: its owner's or an operator's; all: operators)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("--job", default=None, metavar="ID")
    logs.add_argument("--service", default=None)
    logs.add_argument("--level", default=None)
    logs.add_argument("--grep", "-q", dest="grep", default=None, metavar="TEXT",
                      help="only lines whose message holds TEXT, in any case (searched by the server)")
    logs.add_argument("--limit", type=positive, default=50)
    logs.add_argument("--data-dir", type=Path, default=None, help="ask this local stack's receptionist as an operator")


async def login(args: argparse.Namespace) -> None:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        try:
            password = getpass.getpass(f"password of {args.username}: ")
        except (EOFError, KeyboardInterrupt):
            raise usage("no password given") from None
    else:
        raise usage("no terminal to ask the password on: give --password-stdin")
    if not password:
        raise usage("no password given")
    async with client_for(args) as client:
        token = await client.login(args.username, password)
    path = store_token(token)
    show(args, {"username": args.username, "url": client.url, "token_file": str(path)},
         f"logged in as {args.username} at {client.url}; token kept in {path}")


def payload_of(args: argparse.Namespace) -> dict[str, Any]:
    if args.payload_file is not None:
        if args.fields:
            raise usage("give the payload as --payload-file or on the command line, not both")
        try:
            raw = sys.stdin.buffer.read() if args.payload_file == "-" else Path(args.payload_file).read_bytes()
        except OSError as exc:
            raise CommandError(f"cannot read {args.payload_file}: {exc.strerror}") from exc
        return _object(raw, args.payload_file)
    if len(args.fields) == 1 and args.fields[0].lstrip().startswith("{"):
        return _object(args.fields[0].encode(), "the payload")
    payload: dict[str, Any] = {}
    for field in args.fields:  # as httpie reads them: key=text, key:=JSON
        key, sep, value = field.partition("=")
        if not sep or not key.rstrip(":"):
            raise usage(f"{field!r} is neither key=text nor key:=JSON (or give the payload as one JSON object)")
        if key.endswith(":"):
            try:
                payload[key[:-1]] = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise usage(f"the value of {key[:-1]} is not JSON: {value!r}") from None
        else:
            payload[key] = value
    return payload


def _object(raw: bytes, where: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise usage(f"{where} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise usage(f"{where} is not a JSON object")
    return value


class Progress:
    """A one-line progress bar on stderr, redrawn in place; nothing when stderr is not a terminal."""

    def __init__(self) -> None:
        self.on = sys.stderr.isatty()

    def __call__(self, job_id: str, state: str, progress: float) -> None:
        if self.on:
            filled = int(max(0.0, min(1.0, progress)) * 30)
            sys.stderr.write(f"\r…{job_id[-8:]} [{'#' * filled}{'.' * (30 - filled)}] {progress:4.0%} {state:<10}")
            sys.stderr.flush()

    def done(self) -> None:
        if self.on:
            sys.stderr.write("\n")


async def submit(args: argparse.Namespace) -> int:
    payload = payload_of(args)
    async with client_for(args) as client:
        job = await client.submit(args.kind, payload, priority=args.priority, delay_s=args.delay,
                                  run_at=args.run_at, idempotency_key=args.idempotency_key)
        if args.wait:
            progress = Progress()
            try:
                job = await client.wait(job, args.timeout, on_update=progress)
            finally:
                progress.done()
    show(args, job.model_dump(mode="json"), lambda _: job_text(job))
    if args.wait and job.state != "finished":
        raise CommandError(f"job {job.id} {job.state}" + (f": {job.error}" if job.error else ""))
    return 0


def job_text(job: Job) -> str:
    rows = [("id", job.id), ("kind", job.kind), ("state", job.state), ("progress", f"{job.progress:.0%}"),
            ("attempt", f"{job.attempt} of {job.max_attempts}"), ("owner", job.owner or "-"),
            ("priority", str(job.priority)), ("created", _time(job.created_at)), ("updated", _time(job.updated_at))]
    if job.run_at:
        rows.append(("run at", _time(job.run_at)))
    if job.cancel_requested:
        rows.append(("cancel", "requested"))
    if job.result_url:
        rows.append(("result", job.result_url))
    if job.error:
        rows.append(("error", job.error))
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in rows)


def _time(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z") if value else "-"


async def jobs(args: argparse.Namespace) -> None:
    async with client_for(args) as client:
        found = [job async for job in client.list(kind=args.kind, state=args.state, owner=args.owner,
                                                  limit=args.limit)]
    rows = [("id", "kind", "state", "attempt", "progress", "created", "error")]
    rows += [(j.id, j.kind, j.state, str(j.attempt), f"{j.progress:.0%}", _time(j.created_at), (j.error or "")[:40])
             for j in found]
    show(args, [j.model_dump(mode="json") for j in found],
         lambda _: table(rows) + f"\n{len(found)} jobs" if found else "no jobs")


async def job(args: argparse.Namespace) -> None:
    async with client_for(args) as client:
        found = await client.get(args.job_id)
        history = await client.history(found)
    changes = [event.data for event in history if event.topic == "job.updated"]
    data = {"job": found.model_dump(mode="json"), "history": changes}

    def text(_: Any) -> str:
        out = [job_text(found)]
        if found.errors:
            out += ["", "attempts that failed:",
                    table([("attempt", "at", "error"), *[(str(e.get("attempt")), str(e.get("at", ""))[:19],
                                                         str(e.get("error"))[:80]) for e in found.errors]])]
        if changes:
            out += ["", "history:", table([("state", "from", "attempt", "progress"), *[
                (str(c["state"]), str(c.get("previous_state") or "-"), str(c.get("attempt")),
                 f"{c.get('progress') or 0:.0%}") for c in changes]])]
        return "\n".join(out)

    show(args, data, text)


async def cancel(args: argparse.Namespace) -> None:
    async with client_for(args) as client:
        found = await client.cancel(args.job_id)
    said = "cancelled" if found.state == "cancelled" else "cancel requested; it stops at its next heartbeat"
    show(args, found.model_dump(mode="json"), f"{found.id}: {said}")


def _line(item: dict[str, Any]) -> str:
    meta = item.get("meta") or {}
    job_id = f" job={meta['job_id']}" if meta.get("job_id") else ""
    return f"{str(item.get('timestamp'))[:23]} {item.get('service')} {item.get('level')} {item.get('message')}{job_id}"


async def logs(args: argparse.Namespace) -> None:
    async with operator_client(args) as client:
        if args.job is not None:  # the job's own route: its owner may read it too
            items = await client.logs_of(args.job, q=args.grep, limit=args.limit)
        else:
            items = await client.logs(service=args.service, level=args.level.lower() if args.level else None,
                                      q=args.grep, limit=args.limit)
        items = [i for i in items if (not args.service or i.get("service") == args.service)
                 and (not args.level or str(i.get("level")).upper() == args.level.upper())]
        for item in reversed(items):  # newest last, as a terminal scrolls
            print(orjson.dumps(item).decode() if args.as_json else _line(item), flush=True)
        if not args.follow:
            return
        # Following is the server's stream (operators): new lines as they arrive, from the newest shown.
        after = items[0].get("timestamp") if items else None
        async for item in client.follow_logs(service=args.service, level=args.level.lower() if args.level else None,
                                             job_id=args.job, q=args.grep, after=after):
            print(orjson.dumps(item).decode() if args.as_json else _line(item), flush=True)
