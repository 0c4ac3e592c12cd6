"""The ``conveyor`` command.

Every command exits 0 when it did what it was asked, 1 when it failed (its reason on one line of stderr:
an error answer, an unknown id, a stack that cannot be reached, a stack that cannot start), and 2 for a
command line it cannot use (argparse's usage errors, and a password that cannot be asked for).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from pathlib import Path

from shared import cli_jobs, cli_ops
from shared.cli_client import add_client_options
from shared.cli_client import run as run_client
from shared.instances import InstanceKind
from shared.logs import setup_logging


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _services(text: str) -> frozenset[str]:
    from shared.plan import SERVICES

    names = {"logging" if name.strip() == "logging_service" else name.strip() for name in text.split(",")}
    names.discard("")
    if unknown := sorted(names - set(SERVICES)):
        raise argparse.ArgumentTypeError(f"unknown service {', '.join(unknown)} (known: {', '.join(SERVICES)})")
    if not names:
        raise argparse.ArgumentTypeError("name at least one service")
    return frozenset(names)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description="Conveyor, a job pipeline.")
    add_client_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the whole stack on this machine, or this host's part of it (--only)")
    up.add_argument("--receptionists", type=_positive_int, default=2, help="receptionist processes (default 2)")
    up.add_argument("--handlers", type=_positive_int, default=2,
                    help="handler processes (default 2); with --max-handlers, the fewest")
    up.add_argument("--max-handlers", type=_positive_int, default=None, metavar="N",
                    help="autoscale: up to N handler processes when jobs wait, back to --handlers when quiet")
    up.add_argument("--scale-down-after", type=float, default=30.0, metavar="SECONDS",
                    help="autoscale: how long the handlers are quiet before one stops (default 30)")
    up.add_argument("--registries", type=_positive_int, default=1,
                    help="registry processes (default 1; more need REGISTRY_STORE_URL on PostgreSQL)")
    up.add_argument("--schedulers", type=_positive_int, default=1,
                    help="scheduler processes (default 1; more need SCHEDULER_STORE_URL on Redis)")
    up.add_argument("--time-scale", type=float, default=1.0,
                    help="simulated work lasts its nominal time times this (default 1; 0 = no waiting)")
    up.add_argument("--data-dir", type=Path, default=Path("var"), help="where data and logs live (default ./var)")
    up.add_argument("--port-base", type=int, default=8080,
                    help="gateway port; the others follow it (default 8080: receptionists 8081.., "
                         "scheduler 8090, registry 8091, logging 8092, handlers 8100..)")
    up.add_argument("--host", default=None,
                    help="address every service started here listens on, e.g. 0.0.0.0 or this host's address for "
                         "a deployment on several machines (default: each service's <PREFIX>_HOST, else 127.0.0.1)")
    up.add_argument("--only", type=_services, default=None, metavar="SERVICE,...",
                    help="start only these services, this host's part of a deployment: logging, registry, "
                         "scheduler, receptionist, handler, gateway (default: all)")
    for service, env in (("registry", "CONVEYOR_REGISTRY_URL"), ("scheduler", "CONVEYOR_SCHEDULER_URL"),
                         ("logging", "CONVEYOR_LOGGING_URL")):
        up.add_argument(f"--{service}-url", default=None, metavar="URL" if service == "logging" else "URL,...",
                        help=f"the {service} service of another host, when --only leaves it out (default: {env})"
                             + ("" if service == "logging" else "; a comma-separated list of its instances"))
    up.add_argument("--receptionist-url", default=None, metavar="URL,...",
                    help="the receptionists of other hosts, for a gateway started without them "
                         "(default: CONVEYOR_RECEPTIONIST_URLS)")
    up.add_argument("--rate-limit", type=float, default=None, help="requests/s per client at the gateway (0: off)")
    up.add_argument("--rate-burst", type=int, default=None, help="burst size of the gateway's rate limit")

    cli_jobs.add_parsers(sub, _positive_int)
    cli_ops.add_parsers(sub, _positive_int)

    ps = sub.add_parser("ps", help="the service instances of a running stack: alive or gone, and their status")
    ps.add_argument("--data-dir", type=Path, default=Path("var"), help="the stack's data dir (default ./var)")
    ps.add_argument("--token", default=None,
                    help="an operator's token (default: CONVEYOR_TOKEN): ask through the gateway with it; without "
                         "one, ask a receptionist with the data dir's service token, as conveyor dlq does")
    ps.add_argument("--url", default=None,
                    help="where to ask: the gateway (with a token), else a receptionist (default: from the data dir)")
    ps.add_argument("--kind", default=None, choices=[str(kind) for kind in InstanceKind],
                    help="only this service's instances")

    user = sub.add_parser("user", help="users of a running stack: add, list, remove, passwd, roles")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    for name, help_text in (("add", "add a user"), ("list", "list users"), ("remove", "remove a user"),
                            ("passwd", "set a user's password"),
                            ("roles", "set a user's roles (their older tokens stop working)")):
        cmd = user_sub.add_parser(name, help=help_text)
        cmd.add_argument("--data-dir", type=Path, default=Path("var"), help="the stack's data dir (default ./var)")
        cmd.add_argument("--url", default=None, help="the registry's URL (default: from the data dir)")
        if name != "list":
            cmd.add_argument("username")
        if name in ("add", "passwd"):
            cmd.add_argument("--password", default=None,
                             help="the password (default: CONVEYOR_PASSWORD, else one is made and printed)")
        if name == "roles":
            cmd.add_argument("roles", nargs="+", choices=["user", "operator", "admin"], metavar="ROLE",
                             help="the user's roles from now on: user, operator, admin")
        if name == "add":
            cmd.add_argument("--role", action="append", choices=["user", "operator", "admin"],
                             help="a role (repeat for several; default: user)")
            cmd.add_argument("--permission", action="append", default=[], help="a permission, e.g. exporter")

    token = sub.add_parser("token", help="get a token for a user from the gateway")
    token.add_argument("username")
    token.add_argument("--password", default=None, help="the password (default: CONVEYOR_PASSWORD, else asked)")
    token.add_argument("--data-dir", type=Path, default=Path("var"), help="the stack's data dir (default ./var)")

    bench = sub.add_parser("bench", help="start a stack at time scale 0 and measure throughput and latency")
    bench.add_argument("--jobs", type=int, default=5000, help="book jobs of the throughput phase (0: skip it)")
    bench.add_argument("--clients", type=_positive_int, default=32, help="concurrent submitting clients")
    bench.add_argument("--handlers", type=_positive_int, default=2)
    bench.add_argument("--receptionists", type=_positive_int, default=2)
    bench.add_argument("--port-base", type=int, default=18080)
    bench.add_argument("--scratch-dir", type=Path, default=Path("var"), metavar="DIR",
                       help="where each stack's data dir is made, and deleted after (default ./var)")
    bench.add_argument("--output", "--json", dest="output", type=Path, default=Path("bench-results.json"),
                       help="where the JSON of every figure goes (a copy is kept in var/bench/, named by time)")
    bench.add_argument("--runs", type=_positive_int, default=3,
                       help="stacks in turn for the throughput, paced and gateway phases; medians printed")
    bench.add_argument("--paced-seconds", type=float, default=10.0,
                       help="each paced latency phase's length, at 200 jobs/s and at half the peak (0: skip)")
    bench.add_argument("--gateway-requests", type=int, default=2000,
                       help="submissions straight to a receptionist and through the gateway (0: skip)")
    bench.add_argument("--machine-requests", type=int, default=5000, metavar="N",
                       help="each run first measures this machine's speed: a bare aiohttp server's CPU a request, "
                            "N requests flat out and up to 3 s at 200/s (0: skip; shared/bench_machine.py)")
    bench.add_argument("--profile-dir", type=Path, default=None, metavar="DIR",
                       help="record each service with py-spy during the first throughput phase: samples and a "
                            "summary of where they were, in DIR (shared/bench_profile.py)")
    bench.add_argument("--compare", type=_existing_file, default=None, metavar="PATH",
                       help="an earlier bench's JSON: its medians printed beside this run's")
    bench.add_argument("--failing-jobs", type=int, default=1000,
                       help="tasks of the failing phase: retries, dead letters, redrive (0: skip it)")
    bench.add_argument("--at-once-tasks", type=int, default=1000,
                       help="one-second tasks submitted at once on a stack at time scale 1 (0: skip)")
    bench.add_argument("--fail-probability", type=float, default=0.3, help="chance that one task attempt fails")
    bench.add_argument("--import-records", type=int, default=1_000_000,
                       help="users in the CSV of the bulk data import phase (0: skip it)")
    bench.add_argument("--ecg-memory", action="store_true",
                       help="only measure the receptionist's peak memory for one and four concurrent "
                            "maximum-size ECGs (12 leads x 1M samples)")
    bench.add_argument("--datastore-url", "--data-store-url", dest="data_store_url", default=None,
                       help="the bulk data store of the stack's handlers and receptionists (default: a SQLite file "
                            "in the bench's data dir; a postgresql:// URL without ?schema= gets a schema of its "
                            "own, dropped after)")
    bench.add_argument("--backends", type=_backends, default=(), metavar="LIST",
                       help="also run the same phases on these backends, after the embedded default, and "
                            "compare: postgres, redis, s3 (comma-separated), or distributed for all three")
    bench.add_argument("--postgres-url", default=None,
                       help="the PostgreSQL server of --backends postgres (default CONVEYOR_BENCH_POSTGRES_URL, "
                            "else postgresql://postgres@127.0.0.1:5432/test); a fresh database or schemas on it")
    bench.add_argument("--redis-url", default=None,
                       help="the Redis of --backends redis (default CONVEYOR_BENCH_REDIS_URL, else "
                            "redis://127.0.0.1:6379/0); a fresh key prefix on it")

    from shared.loadtest import add_arguments as loadtest_arguments

    loadtest_arguments(sub.add_parser("loadtest", help="open-loop load on a running stack at a fixed rate: "
                                      "latency percentiles, errors, final states"))
    from shared.bench_registry import add_arguments as bench_registry_arguments

    bench_registry_arguments(sub.add_parser("bench-registry", help="fill a SQLite registry with 1,000,000 jobs and "
                                            "time every query of the dashboard's pages"))
    from shared.bench_logs import add_arguments as bench_logs_arguments

    bench_logs_arguments(sub.add_parser("bench-logs", help="fill a SQLite log store with 1,000,000 lines and time "
                                        "the logs page's queries, the text filter with and without its index"))
    soak = sub.add_parser("soak", help="a long run at a steady rate: nothing lost, nothing twice, flat memory")
    soak.add_argument("--duration", type=float, default=600.0, metavar="SECONDS", help="each run's (default 600)")
    soak.add_argument("--rate", type=float, default=None, metavar="JOBS_PER_S",
                      help="default: half of the last make bench throughput (bench-results.json), else 200")
    soak.add_argument("--kill-every", type=float, default=30.0, metavar="SECONDS",
                      help="the distributed run SIGKILLs a random service this often (default 30)")
    soak.add_argument("--warmup", type=float, default=60.0, metavar="SECONDS",
                      help="memory is compared from the end of this (default 60)")
    which = soak.add_mutually_exclusive_group()
    which.add_argument("--embedded-only", action="store_true")
    which.add_argument("--distributed-only", action="store_true")
    soak.add_argument("--postgres-url", default=None, help="as for bench")
    soak.add_argument("--redis-url", default=None, help="as for bench")
    return parser


def _existing_file(text: str) -> Path:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no file {text}")
    return Path(text)


def _backends(text: str) -> tuple[str, ...]:
    from shared.bench_backends import parse_backends

    try:
        return parse_backends(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


CLIENT_COMMANDS = {"login": cli_jobs.login, "submit": cli_jobs.submit, "jobs": cli_jobs.jobs, "job": cli_jobs.job,
                   "cancel": cli_jobs.cancel, "logs": cli_jobs.logs, "status": cli_ops.status,
                   "queues": cli_ops.queues, "dlq": cli_ops.dlq}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("conveyor", json_lines=False)
    try:
        return _run(args)
    except KeyboardInterrupt:  # Ctrl-C on a command (``up`` handles its own)
        print(f"conveyor {args.command}: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.command == "up":
        from shared.launcher import up
        from shared.plan import SERVICES, Options

        for flag, count, why in (("receptionists", args.receptionists, "their ports follow the gateway's"),
                                 ("registries", args.registries, "their ports are a block of ten"),
                                 ("schedulers", args.schedulers, "their ports are a block of ten")):
            if count > 9:
                print(f"conveyor: at most 9 {flag} ({why})", file=sys.stderr)
                return 2
        if args.max_handlers is not None and args.max_handlers < args.handlers:
            print(f"conveyor: --max-handlers {args.max_handlers} is fewer than --handlers {args.handlers}",
                  file=sys.stderr)
            return 2
        if args.scale_down_after <= 0:
            print("conveyor: --scale-down-after must be more than 0 seconds", file=sys.stderr)
            return 2
        opts = Options(receptionists=args.receptionists, handlers=args.handlers, time_scale=args.time_scale,
                       max_handlers=args.max_handlers, scale_quiet_s=args.scale_down_after,
                       registries=args.registries, schedulers=args.schedulers,
                       data_dir=args.data_dir, port_base=args.port_base, host=args.host,
                       rate_limit_per_s=args.rate_limit, rate_limit_burst=args.rate_burst,
                       only=args.only or frozenset(SERVICES), registry_url=args.registry_url,
                       scheduler_url=args.scheduler_url, logging_url=args.logging_url,
                       receptionist_urls=args.receptionist_url)
        return asyncio.run(up(opts))
    if args.command in CLIENT_COMMANDS:
        name = args.command + (f" {args.dlq_command}" if args.command == "dlq" else "")
        return run_client(args, name, CLIENT_COMMANDS[args.command])
    if args.command == "ps":
        return asyncio.run(_ps(args))
    if args.command in ("user", "token"):
        return asyncio.run(_users(args))
    if args.command == "bench-registry":
        from shared.bench_registry import command

        return command(args)
    if args.command == "bench-logs":
        from shared.bench_logs import command as bench_logs

        return bench_logs(args)
    if args.command == "loadtest":
        from shared.loadtest import run_from_args

        return asyncio.run(run_from_args(args))
    if args.command == "soak":
        from shared.bench_backends import Servers
        from shared.soak import SoakOptions, soak

        servers = Servers()
        servers.postgres_url = args.postgres_url or servers.postgres_url
        servers.redis_url = args.redis_url or servers.redis_url
        return asyncio.run(soak(SoakOptions(
            duration_s=args.duration, rate=args.rate, kill_every_s=args.kill_every, warmup_s=args.warmup,
            embedded=not args.distributed_only, distributed=not args.embedded_only, servers=servers)))
    if args.command == "bench":
        from shared.bench import BenchOptions, bench
        from shared.bench_backends import Servers
        from shared.bench_client import run_on_uvloop

        servers = Servers()
        servers.postgres_url = args.postgres_url or servers.postgres_url
        servers.redis_url = args.redis_url or servers.redis_url
        return run_on_uvloop(bench(BenchOptions(backends=args.backends, servers=servers, jobs=args.jobs, clients=args.clients, handlers=args.handlers,
                                              receptionists=args.receptionists, port_base=args.port_base,
                                              scratch_dir=args.scratch_dir, output=args.output, failing_jobs=args.failing_jobs,
                                              fail_probability=args.fail_probability,
                                              import_records=args.import_records,
                                              at_once_tasks=args.at_once_tasks, ecg_memory=args.ecg_memory,
                                              data_store_url=args.data_store_url, runs=args.runs,
                                              paced_s=args.paced_seconds, gateway_requests=args.gateway_requests,
                                              machine_requests=args.machine_requests, compare=args.compare,
                                              profile_dir=args.profile_dir)))
    return 2


async def _ps(args: argparse.Namespace) -> int:
    from shared.console import ConsoleError, Stack, instances

    token = args.token or os.environ.get("CONVEYOR_TOKEN") or None
    try:
        stack = Stack(args.data_dir, args.url, service="gateway" if token else "receptionist")
        print(await instances(stack, token=token, kind=args.kind))
    except ConsoleError as exc:
        print(f"conveyor ps: {exc}", file=sys.stderr)
        return 1
    return 0


class UsageError(Exception):
    """A command line the command cannot use (exit 2)."""


def _password(args: argparse.Namespace, *, ask: bool) -> tuple[str, bool]:
    """The password given, else ``CONVEYOR_PASSWORD``, else asked (``ask``, on a terminal only) or made;
    and whether it was made."""
    if args.password:
        return args.password, False
    if env := os.environ.get("CONVEYOR_PASSWORD"):
        return env, False
    if ask:
        if not sys.stdin.isatty():
            raise UsageError("no terminal to ask the password on: give --password or set CONVEYOR_PASSWORD")
        try:
            return getpass.getpass(f"password of {args.username}: "), False
        except (EOFError, KeyboardInterrupt):
            raise UsageError("no password given") from None
    from shared.plan import new_password

    return new_password(), True


async def _users(args: argparse.Namespace) -> int:
    from shared import console

    try:
        if args.command == "token":
            stack = console.Stack(args.data_dir, None, service="registry")
            password, _ = _password(args, ask=True)
            print(await console.token(stack, args.username, password))
            return 0
        stack = console.Stack(args.data_dir, args.url, service="registry")
        if args.user_command == "list":
            print(await console.user_list(stack))
        elif args.user_command == "remove":
            print(await console.user_remove(stack, args.username))
        elif args.user_command == "roles":
            print(await console.user_roles(stack, args.username, args.roles))
        else:
            password, made = _password(args, ask=False)
            if args.user_command == "add":
                print(await console.user_add(stack, args.username, password, args.role or ["user"],
                                             args.permission))
            else:
                print(await console.user_passwd(stack, args.username, password))
            if made:
                print(f"password: {password}")
    except console.ConsoleError as exc:
        print(f"conveyor {_command_name(args)}: {exc}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"conveyor {_command_name(args)}: {exc}", file=sys.stderr)
        return 2
    return 0


def _command_name(args: argparse.Namespace) -> str:
    return f"user {args.user_command}" if args.command == "user" else args.command


if __name__ == "__main__":
    sys.exit(main())
