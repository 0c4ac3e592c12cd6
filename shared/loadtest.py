"""``conveyor loadtest``: an open-loop load test of a running stack, at a fixed arrival rate.

Submission ``n`` is due at ``start + n / rate``, whatever became of the earlier ones (open loop: a slow
stack does not slow the test down, so its latency is not hidden). At most ``max_in_flight`` submissions
are open at once; one that starts more than :data:`LATE_S` after it was due (it waited for a slot, or the
client fell behind) is counted ``late``. Every job goes through ``POST /jobs {kind, payload}``, of a kind
drawn from the mix by weight, with the kind's payload (``{n}`` in a string is the submission's number).

Two latencies, each measured from when the submission was due (so the wait for a slot counts): the submit
latency, to the answer, and the end-to-end latency, to the job's final state, as the caller's own event
stream (``GET /events?topic=job.updated``) tells it; when that stream cannot be opened, the jobs are polled
(``GET /jobs/{id}``). After the last submission the test waits up to ``drain_s`` for the jobs accepted to
end. The report has p50/p90/p99/max of both, errors by HTTP status (0: no answer), and the jobs' final
states; :func:`run` returns 1 when a submission failed or a job did not end in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

import aiohttp
import orjson

from shared.cli_client import CommandError, add_client_options, api_url, find_token

#: A submission that starts later than this after it was due is late.
LATE_S = 0.1
FINAL_STATES = frozenset({"finished", "failed", "cancelled"})
#: A payload for the kinds that can be submitted with ``POST /jobs`` without fetching anything.
DEFAULT_PAYLOADS: dict[str, dict[str, Any]] = {"export": {"bookId": "loadtest-{n}", "type": "pdf"}}
POLL_INTERVAL_S = 0.5


class LoadTestError(Exception):
    """The load test cannot run as asked (a bad option, a stack that cannot be reached)."""


@dataclass
class LoadOptions:
    url: str
    rate: float
    duration_s: float
    mix: dict[str, float] = field(default_factory=lambda: {"export": 1.0})
    payloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    token: str | None = None
    drain_s: float = 60.0
    max_in_flight: int = 256
    seed: int | None = None

    def payload_of(self, kind: str) -> dict[str, Any]:
        return self.payloads.get(kind) or DEFAULT_PAYLOADS[kind]


def parse_mix(text: str) -> dict[str, float]:
    """``export=3,import=1`` (a kind alone weighs 1); a :class:`ValueError` naming what is wrong."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, weight = part.partition("=")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"the weight of {kind!r} is not a number: {weight!r}") from None
        if not kind.strip() or value <= 0:
            raise ValueError(f"{part!r}: give kind=weight with a weight above 0")
        mix[kind.strip()] = value
    if not mix:
        raise ValueError("name at least one kind")
    return mix


def parse_payload(text: str) -> tuple[str, dict[str, Any]]:
    """``KIND=JSON``: the payload of that kind's jobs."""
    kind, sep, raw = text.partition("=")
    try:
        payload = orjson.loads(raw) if sep else None
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the payload of {kind!r} is not JSON: {exc}") from None
    if not kind or not isinstance(payload, dict):
        raise ValueError("give KIND={...}, a JSON object")
    return kind, payload


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p90, p99 (nearest rank) and max, in milliseconds; None each when there are no values."""
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99)):
        out[name] = round(ordered[max(0, min(len(ordered) - 1, int(q * len(ordered) + 0.999999) - 1))] * 1000, 1) \
            if ordered else None
    out["max"] = round(ordered[-1] * 1000, 1) if ordered else None
    return out


def _filled(value: Any, n: int) -> Any:
    if isinstance(value, str):
        return value.replace("{n}", str(n))
    if isinstance(value, dict):
        return {k: _filled(v, n) for k, v in value.items()}
    if isinstance(value, list):
        return [_filled(v, n) for v in value]
    return value


@dataclass
class _Tally:
    planned: int
    sent: int = 0
    accepted: int = 0
    late: int = 0
    in_flight: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    submit_s: list[float] = field(default_factory=list)
    #: Accepted jobs not known to be final yet: job id to when its submission was due (monotonic).
    open_jobs: dict[str, float] = field(default_factory=dict)
    #: Final states seen for ids whose submission had not answered yet (the event can come first).
    early: dict[str, tuple[float, str]] = field(default_factory=dict)
    end_to_end_s: list[float] = field(default_factory=list)
    states: Counter[str] = field(default_factory=Counter)

    def ended(self, job_id: str, at: float, state: str) -> None:
        due = self.open_jobs.pop(job_id, None)
        if due is None:
            self.early[job_id] = (at, state)
            return
        self.end_to_end_s.append(at - due)
        self.states[state] += 1

    def accepted_job(self, job_id: str, due: float, state: str) -> None:
        self.accepted += 1
        self.open_jobs[job_id] = due
        if job_id in self.early:
            self.ended(job_id, *self.early.pop(job_id))
        elif state in FINAL_STATES:
            self.ended(job_id, time.monotonic(), state)


class LoadTest:
    def __init__(self, opts: LoadOptions, progress: TextIO | None = None) -> None:
        if opts.rate <= 0 or opts.duration_s <= 0:
            raise LoadTestError("--rate and --duration must be above 0")
        unknown = [kind for kind in opts.mix if kind not in opts.payloads and kind not in DEFAULT_PAYLOADS]
        if unknown:
            raise LoadTestError(f"no payload for {', '.join(unknown)}: give --payload KIND=JSON")
        self.opts = opts
        self.url = opts.url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {opts.token}"} if opts.token else {}
        self.progress = progress
        self.tally = _Tally(planned=max(1, round(opts.rate * opts.duration_s)))
        self.follow = "events"
        self._started = 0.0
        self._last_sent = 0.0

    async def run(self) -> dict[str, Any]:
        opts = self.opts
        rng = random.Random(opts.seed)
        kinds, weights = list(opts.mix), list(opts.mix.values())
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
            stream = await self._open_stream(session)
            follower = asyncio.create_task(self._follow(session, stream) if stream is not None
                                           else self._poll(session))
            ticker = asyncio.create_task(self._ticker()) if self.progress is not None else None
            room = asyncio.Semaphore(opts.max_in_flight)
            tasks: set[asyncio.Task[None]] = set()
            self._started = start = time.monotonic()
            try:
                for n in range(self.tally.planned):
                    due = start + n / opts.rate
                    if (wait := due - time.monotonic()) > 0:
                        await asyncio.sleep(wait)
                    await room.acquire()
                    kind = rng.choices(kinds, weights)[0]
                    task = asyncio.create_task(self._submit(session, n, kind, due, room))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await asyncio.gather(*tasks)
                await self._drain()
            finally:
                for task in (follower, ticker):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                if stream is not None:
                    stream.close()
                if self.progress is not None:
                    self.progress.write("\n")
                    self.progress.flush()
        return self._report(time.monotonic() - start)

    async def _submit(self, session: aiohttp.ClientSession, n: int, kind: str, due: float,
                      room: asyncio.Semaphore) -> None:
        tally = self.tally
        tally.sent += 1
        tally.in_flight += 1
        self._last_sent = time.monotonic()
        if time.monotonic() - due > LATE_S:
            tally.late += 1
        body = {"kind": kind, "payload": _filled(self.opts.payload_of(kind), n)}
        try:
            async with session.post(self.url + "/jobs", json=body, headers=self.headers,
                                    timeout=aiohttp.ClientTimeout(total=30)) as resp:
                answer = await resp.read()
                if resp.status in (200, 201):
                    job = orjson.loads(answer)
                    tally.submit_s.append(time.monotonic() - due)
                    tally.accepted_job(str(job["id"]), due, job.get("state", "pending"))
                else:
                    tally.errors[str(resp.status)] += 1
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
            tally.errors["0"] += 1
        finally:
            tally.in_flight -= 1
            room.release()

    async def _open_stream(self, session: aiohttp.ClientSession) -> aiohttp.ClientResponse | None:
        """The caller's event stream, open before the first submission (so no final state is missed); None
        when it cannot be opened (the jobs are polled instead)."""
        try:
            resp = await session.get(self.url + "/events", params={"topic": "job.updated"}, headers=self.headers,
                                     timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None))
        except aiohttp.ClientError as exc:
            raise LoadTestError(f"cannot reach {self.url}: {exc}") from exc
        if resp.status != 200 or resp.content_type != "text/event-stream":
            resp.close()
            self.follow = "poll"
            return None
        return resp

    async def _follow(self, session: aiohttp.ClientSession, resp: aiohttp.ClientResponse) -> None:
        """Read final states off the event stream; resume it (``Last-Event-ID``) when it ends."""
        last_id: str | None = None
        while True:
            data: list[str] = []
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async for raw in resp.content:
                    line = raw.decode(errors="replace").rstrip("\r\n")
                    if line.startswith("id:"):
                        last_id = line[3:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip(" "))
                    elif not line and data:
                        self._event("\n".join(data))
                        data = []
            resp.close()
            await asyncio.sleep(0.2)
            headers = {**self.headers, **({"Last-Event-ID": last_id} if last_id else {})}
            try:
                resp = await session.get(self.url + "/events", params={"topic": "job.updated"}, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
            except aiohttp.ClientError:
                continue

    def _event(self, data: str) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            event = orjson.loads(data)
            if event["state"] in FINAL_STATES:
                self.tally.ended(str(event["job_id"]), time.monotonic(), event["state"])

    async def _poll(self, session: aiohttp.ClientSession) -> None:
        """Without an event stream: ask for each open job's state, a few at a time, every so often."""
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            for job_id in list(self.tally.open_jobs)[:200]:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError):
                    async with session.get(f"{self.url}/jobs/{job_id}", headers=self.headers,
                                           timeout=aiohttp.ClientTimeout(total=10)) as resp:
                        if resp.status == 200 and (state := (await resp.json())["state"]) in FINAL_STATES:
                            self.tally.ended(job_id, time.monotonic(), state)

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.opts.drain_s
        while self.tally.open_jobs and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def _ticker(self) -> None:
        while True:
            self._show()
            await asyncio.sleep(0.5)

    def _show(self) -> None:
        t = self.tally
        elapsed = time.monotonic() - self._started if self._started else 0.0
        errors = sum(t.errors.values())
        line = (f"\r{elapsed:6.1f}s  sent {t.sent}/{t.planned}  accepted {t.accepted}  errors {errors}  "
                f"late {t.late}  in flight {t.in_flight}  ended {sum(t.states.values())}  "
                f"waiting {len(t.open_jobs)}")
        assert self.progress is not None
        self.progress.write(line.ljust(100))
        self.progress.flush()

    def _report(self, elapsed_s: float) -> dict[str, Any]:
        t, opts = self.tally, self.opts
        sending_s = self._last_sent - self._started
        return {
            "url": self.url, "rate": opts.rate, "duration_s": opts.duration_s, "mix": opts.mix,
            "follow": self.follow, "max_in_flight": opts.max_in_flight,
            "planned": t.planned, "sent": t.sent, "accepted": t.accepted, "late": t.late,
            "errors": dict(sorted(t.errors.items())), "states": dict(sorted(t.states.items())),
            "unfinished": len(t.open_jobs),
            # Submissions a second between the first and the last one sent.
            "achieved_rate": round((t.sent - 1) / sending_s, 2) if t.sent > 1 and sending_s > 0 else None,
            "elapsed_s": round(elapsed_s, 3),
            "submit_latency_ms": percentiles(t.submit_s), "end_to_end_ms": percentiles(t.end_to_end_s),
        }


def render(report: dict[str, Any]) -> str:
    """The report as a person reads it."""
    from shared.table import table

    def ms(values: dict[str, float | None]) -> tuple[str, ...]:
        return tuple("-" if values[k] is None else f"{values[k]:g}" for k in ("p50", "p90", "p99", "max"))

    lines = [
        f"{report['sent']} of {report['planned']} sent to {report['url']} at {report['rate']:g}/s "
        f"(achieved {report['achieved_rate']}/s), {report['late']} late; {report['accepted']} accepted",
        "",
        table([("latency (ms)", "p50", "p90", "p99", "max"),
               ("submit", *ms(report["submit_latency_ms"])),
               ("end to end", *ms(report["end_to_end_ms"]))]),
        "",
        "final states: " + (", ".join(f"{k} {v}" for k, v in report["states"].items()) or "none"),
        "errors by status: " + (", ".join(f"{'no answer' if k == '0' else k} {v}"
                                          for k, v in report["errors"].items()) or "none"),
    ]
    if report["unfinished"]:
        lines.append(f"{report['unfinished']} jobs did not end within the drain time")
    return "\n".join(lines)


async def run(opts: LoadOptions, as_json: bool = False, out: TextIO | None = None,
              progress: TextIO | None = None) -> int:
    """Run the load test and print its report; 0 when every submission was accepted and every job ended."""
    try:
        report = await LoadTest(opts, progress=progress).run()
    except LoadTestError as exc:
        print(f"conveyor loadtest: {exc}", file=sys.stderr)
        return 1
    (out or sys.stdout).write((json.dumps(report, indent=2) if as_json else render(report)) + "\n")
    return 1 if report["errors"] or report["unfinished"] or report["accepted"] < report["planned"] else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``conveyor loadtest``."""

    def mix(text: str) -> dict[str, float]:
        try:
            return parse_mix(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    def payload(text: str) -> tuple[str, dict[str, Any]]:
        try:
            return parse_payload(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parser.add_argument("--rate", type=float, required=True, metavar="JOBS_PER_S", help="submissions a second")
    parser.add_argument("--duration", type=float, required=True, metavar="SECONDS", help="how long to submit")
    parser.add_argument("--mix", type=mix, default={"export": 1.0}, metavar="KIND=WEIGHT,...",
                        help="the kinds submitted, by weight (default export=1)")
    parser.add_argument("--payload", type=payload, action="append", default=[], metavar="KIND=JSON",
                        help="a kind's payload ('{n}' in a string is the submission's number); export has one")
    parser.add_argument("--drain", type=float, default=60.0, metavar="SECONDS",
                        help="how long to wait for the jobs to end after the last submission (default 60)")
    parser.add_argument("--max-in-flight", type=int, default=256, metavar="N",
                        help="submissions open at once at most; one that waits for room is late (default 256)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the kinds' draw")
    add_client_options(parser)  # --url, --token, --json: as for every client command, before or after it


async def run_from_args(args: argparse.Namespace) -> int:
    if args.max_in_flight < 1:
        print("conveyor loadtest: --max-in-flight must be at least 1", file=sys.stderr)
        return 2
    try:
        token = find_token(args)
    except CommandError as exc:
        print(f"conveyor loadtest: {exc}", file=sys.stderr)
        return 1
    opts = LoadOptions(url=api_url(args), rate=args.rate, duration_s=args.duration, mix=args.mix,
                       payloads=dict(args.payload), token=token,
                       drain_s=args.drain, max_in_flight=args.max_in_flight, seed=args.seed)
    return await run(opts, as_json=args.as_json, progress=sys.stderr if sys.stderr.isatty() else None)
