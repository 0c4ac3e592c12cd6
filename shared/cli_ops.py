"""The ``conveyor`` commands of an operator: ``status``, ``queues [pause|resume Q]`` and
``dlq list|requeue|discard``, through :mod:`shared.client` (the gateway with a token, or the local stack's
receptionist: :func:`shared.cli_client.operator_client`)."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shared.cli_client import CommandError, add_client_options, operator_client, show, usage
from shared.client import ClientError
from shared.table import table

QUEUE_COLUMNS = ("ready", "delayed", "leased", "dead")


def add_parsers(sub: Any, positive: Any) -> None:
    def command(parent: Any, name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(name, help=help_text)
        add_client_options(parser)
        parser.add_argument("--data-dir", type=Path, default=None,
                            help="ask this local stack's receptionist as an internal operator (default, when no "
                                 "token or URL is given: ./var)")
        return parser

    command(sub, "status", "services, queues and instances at a glance (operators)")

    queues = command(sub, "queues", "the queues (operators); pause or resume one")
    queues_sub = queues.add_subparsers(dest="queues_command")
    for action, text in (("pause", "a paused queue takes jobs but hands none out"), ("resume", "hand jobs out again")):
        command(queues_sub, action, text).add_argument("queue")

    dlq = sub.add_parser("dlq", help="dead letters (operators): list, requeue (redrive) or discard them")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    for name, help_text in (("list", "list dead letters"), ("requeue", "give dead jobs their attempts again"),
                            ("discard", "drop dead letters for good")):
        cmd = command(dlq_sub, name, help_text)
        cmd.add_argument("--queue", default=None, help="only this queue")
        if name == "list":
            cmd.add_argument("--limit", type=positive, default=100)
        else:
            cmd.add_argument("job_ids", nargs="*", help="the jobs")
            cmd.add_argument("--all", action="store_true", help="every dead letter (of --queue)")
        if name == "discard":
            cmd.add_argument("--yes", action="store_true", help="no question asked for --all")


def queues_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no queues"
    lines = [("queue", *QUEUE_COLUMNS, "oldest ready", "paused")]
    for row in rows:
        age = row.get("oldest_ready_age_s")
        lines.append((str(row["queue"]), *(str(row.get(c, "-")) for c in QUEUE_COLUMNS),
                      "-" if age is None else f"{float(age):.1f}s", "yes" if row.get("paused") else "no"))
    return table(lines)


def services_table(instances: list[dict[str, Any]]) -> str:
    by_kind: dict[str, list[int]] = {}
    for item in instances:
        counts = by_kind.setdefault(str(item.get("kind")), [0, 0])
        counts[1 if item.get("gone") else 0] += 1
    if not by_kind:
        return "no instances registered"
    return table([("service", "alive", "gone"), *[(kind, str(a), str(g)) for kind, (a, g) in sorted(by_kind.items())]])


def instances_table(instances: list[dict[str, Any]]) -> str:
    if not instances:
        return "no instances registered"
    now = datetime.now(timezone.utc)
    rows = [("name", "kind", "url", "up", "heartbeat", "state")]
    for item in instances:
        started = item.get("started_at")
        up = f"{(now - datetime.fromisoformat(started)).total_seconds():.0f}s" if started else "-"
        rows.append((str(item.get("name")), str(item.get("kind")), str(item.get("url")), up,
                     f"{float(item.get('silent_s') or 0):.1f}s ago", "gone" if item.get("gone") else "alive"))
    return table(rows)


async def status(args: argparse.Namespace) -> None:
    async with operator_client(args) as client:
        try:
            health: dict[str, Any] = await client.health()
        except ClientError as exc:
            health = {"status": "unhealthy", "error": str(exc)}
        queues = await client.queues()
        instances = await client.instances()
    data = {"url": client.url, "health": health, "queues": queues, "instances": instances}
    alive = sum(1 for i in instances if not i.get("gone"))
    show(args, data, lambda _: "\n".join([
        f"{client.url}: {health.get('status', 'ok') if isinstance(health, dict) else health}",
        "", "services:", services_table(instances),
        "", "queues:", queues_table(queues),
        "", f"instances ({alive} alive, {len(instances) - alive} gone):", instances_table(instances)]))


async def queues(args: argparse.Namespace) -> None:
    async with operator_client(args) as client:
        if args.queues_command is None:
            rows = await client.queues()
            show(args, rows, lambda _: queues_table(rows))
            return
        answer = await (client.pause if args.queues_command == "pause" else client.resume)(args.queue)
    show(args, answer, f"{args.queue}: {'paused' if args.queues_command == 'pause' else 'resumed'}")


async def dlq(args: argparse.Namespace) -> None:
    async with operator_client(args) as client:
        if args.dlq_command == "list":
            items = await client.dead(queue=args.queue, limit=args.limit)
            rows = [("job id", "queue", "attempt", "died at", "error")]
            rows += [(i["job_id"], i["queue"], str(i["attempt"]), str(i["died_at"])[:19], (i.get("error") or "")[:60])
                     for i in items]
            show(args, items, lambda _: table(rows) + f"\n{len(items)} dead letters" if items else "no dead letters")
            return
        if bool(args.job_ids) == args.all:
            raise usage("name job ids, or --all")
        if args.dlq_command == "discard" and args.all and not args.yes:
            raise usage("discarding every dead letter cannot be undone: add --yes")
        act = client.requeue if args.dlq_command == "requeue" else client.discard
        answer = await act(args.job_ids or None, all=args.all, queue=args.queue)
    verb = "requeued" if args.dlq_command == "requeue" else "discarded"
    done = answer.get(verb, [])
    skipped = answer.get("skipped") or [{"id": i, "reason": "not a dead letter"}
                                        for i in args.job_ids if verb == "discarded" and i not in done]
    if args.as_json:
        show(args, answer, "")
    if skipped:
        reasons = "; ".join(f"{s['id']}: {s['reason']}" for s in skipped)
        raise CommandError(f"could not {args.dlq_command} {len(skipped)}: {reasons}",
                           output="" if args.as_json else f"{verb} {len(done)}")
    if not args.as_json:
        print(f"{verb} {len(done)}")
