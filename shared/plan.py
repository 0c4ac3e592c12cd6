"""What one host of a stack runs: the services ``conveyor up`` starts here (all, or ``--only`` some), the
address each binds, its port (from the port base), and its environment, in which every URL of another
service is either that of one started here or one the operator gave (``--registry-url``,
``CONVEYOR_REGISTRY_URL`` ...): nothing is assumed to be on 127.0.0.1. Also the stack's kept secrets.

The registry and the scheduler may run as several instances (``--registries``, ``--schedulers``) on a store
they share (PostgreSQL, Redis); every client of theirs gets the list of them, each starting at another.

:mod:`shared.launcher` runs what :func:`plan` returns.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

#: The services ``--only`` may name, in start order.
SERVICES = ("logging", "registry", "scheduler", "receptionist", "handler", "gateway")
#: The services each one calls, so needs the URL of when another host runs it.
NEEDS = {"logging": (), "registry": ("logging",), "scheduler": ("logging",),
         "receptionist": ("logging", "registry", "scheduler"), "handler": ("logging", "registry", "scheduler"),
         "gateway": ("logging", "registry", "receptionist")}
#: Where the URL of a service run elsewhere is read from, when no flag gives it.
URL_ENV = {"logging": "CONVEYOR_LOGGING_URL", "registry": "CONVEYOR_REGISTRY_URL",
           "scheduler": "CONVEYOR_SCHEDULER_URL", "receptionist": "CONVEYOR_RECEPTIONIST_URLS"}
#: Settings an operator's environment sets for the launcher to keep (the backends), by setting name.
OPERATORS_CHOICE = ("store_url", "data_store_url", "artifacts_dir", "artifacts_url")
#: The services that may run as several instances on one host (``--registries``, ``--schedulers``): the store
#: they must then share (its env variable, the URL schemes that name it, and its name), and where the ports
#: of their instances start, counted from the port base (one instance keeps the port it always had).
SHARED_STORES = {"registry": ("REGISTRY_STORE_URL", ("postgresql", "postgres"), "PostgreSQL"),
                 "scheduler": ("SCHEDULER_STORE_URL", ("redis", "rediss"), "Redis")}
SINGLE_PORT = {"scheduler": 10, "registry": 11}
MANY_PORTS = {"scheduler": 60, "registry": 70}


@dataclass
class Options:
    receptionists: int = 2
    handlers: int = 2
    #: Autoscaled handlers: between ``handlers`` and this many (None: a fixed ``handlers``).
    max_handlers: int | None = None
    #: How long the handlers must be quiet before the autoscaler stops one (real seconds).
    scale_quiet_s: float = 30.0
    #: Instances of the registry and of the scheduler; more than one needs a store they share
    #: (:data:`SHARED_STORES`), and every client gets the list of them.
    registries: int = 1
    schedulers: int = 1
    time_scale: float = 1.0
    data_dir: Path = Path("var")
    port_base: int = 8080
    #: The address every service started here binds; None: each its own ``<PREFIX>_HOST``, else 127.0.0.1.
    host: str | None = None
    rate_limit_per_s: float | None = None
    rate_limit_burst: int | None = None
    health_timeout_s: float = 60.0
    #: The services this host runs (:data:`SERVICES`); the others run elsewhere, at the URLs below.
    only: frozenset[str] = frozenset(SERVICES)
    #: Base URLs of the services run elsewhere (None: from ``URL_ENV``); a comma-separated list for receptionists.
    registry_url: str | None = None
    scheduler_url: str | None = None
    logging_url: str | None = None
    receptionist_urls: str | None = None
    #: The bulk data store of handlers and receptionists (None: ``sqlite:///<data dir>/data.db``, unless the
    #: environment names one: ``HANDLER_DATA_STORE_URL``, ``RECEPTIONIST_DATA_STORE_URL``).
    data_store_url: str | None = None

    @property
    def handler_slots(self) -> int:
        """Handler processes planned: the most that may run."""
        return max(self.handlers, self.max_handlers or 0)

    def remote_url(self, service: str) -> str | None:
        """The URL given for ``service`` (a flag, else its ``URL_ENV`` variable), or None."""
        given = getattr(self, "receptionist_urls" if service == "receptionist" else f"{service}_url")
        return given or os.environ.get(URL_ENV[service]) or None


def missing_urls(opts: Options) -> list[str]:
    """What stops ``opts`` from being planned, one line each: a service the started ones call that is neither
    started here nor given a URL, a given URL that is no ``http(s)://host[:port]``, or a URL given for a
    service this host starts itself (which of the two was meant is not ours to guess)."""
    problems = []
    for service in sorted({need for started in opts.only for need in NEEDS[started]} - opts.only):
        flag = "--receptionist-url" if service == "receptionist" else f"--{service}-url"
        given = opts.remote_url(service)
        if given is None:
            users = " and ".join(s for s in SERVICES if s in opts.only and service in NEEDS[s])
            problems.append(f"{users} need the {service} service, which this host does not start (--only): "
                            f"give {flag} or set {URL_ENV[service]}")
        for url in (given or "").split(","):
            parts = urlsplit(url.strip())
            if given is not None and (parts.scheme not in ("http", "https") or not parts.hostname):
                problems.append(f"{flag} ({URL_ENV[service]}): not an http(s)://host:port URL: {url.strip()!r}")
    for service in sorted(opts.only & URL_ENV.keys()):
        if opts.remote_url(service) is not None:
            problems.append(f"a {service} URL is given ({URL_ENV[service]} or its flag), but this host starts "
                            f"the {service} itself: drop one")
    return problems


def instance_problems(opts: Options) -> list[str]:
    """What stops ``opts`` from running several registries or schedulers, one line each: a store of one
    process (SQLite, memory) where several instances need a shared one, instances of a service this host
    does not start, or ports of two services that clash (many handlers reach the instances' ports)."""
    problems = []
    for service, count in (("registry", opts.registries), ("scheduler", opts.schedulers)):
        flag = "--registries" if service == "registry" else "--schedulers"
        if count <= 1:
            continue
        if service not in opts.only:
            problems.append(f"{flag} {count}: this host does not start the {service} (--only)")
            continue
        env, schemes, backend = SHARED_STORES[service]
        url = os.environ.get(env, "")
        scheme = url.split(":", 1)[0].lower() if url else "sqlite"
        if scheme not in schemes:
            problems.append(f"{flag} {count} needs a {service} store every instance shares: set {env} to a "
                            f"{schemes[0]}:// URL ({backend}); a {scheme} store belongs to one process")
    seen: dict[int, str] = {}
    for name, _, port in service_ports(opts):
        if port in seen:
            problems.append(f"{name} and {seen[port]} would both listen on port {port}: run fewer handlers here")
            break
        seen[port] = name
    return problems


def reachable(host: str) -> str:
    """The address a client on this host reaches a server bound to ``host`` at (any address: loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@dataclass
class Service:
    name: str  # instance name: "receptionist-1"
    module: str  # python -m <module>
    port: int
    env: dict[str, str]
    group: int  # start order; stopped in reverse
    host: str = "127.0.0.1"  # the address it binds
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    #: Planned but not running: an autoscaled handler above the current count (not restarted either).
    standby: bool = False
    log_path: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return f"http://{reachable(self.host)}:{self.port}"


def kept_secret(data_dir: Path, name: str, env: str) -> str:
    """The secret in ``env``, else the one kept in ``<data dir>/<name>`` (made once, owner-only)."""
    if value := os.environ.get(env):
        return value
    path = data_dir / name
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value


def new_password() -> str:
    """A password made for a user: 16 URL-safe characters, never starting with ``-`` (which a command line
    would take for an option: ``--password -x…``)."""
    while (password := secrets.token_urlsafe(12)).startswith("-"):
        pass
    return password


def service_token(data_dir: Path) -> str:
    """The internal service token: ``CONVEYOR_SERVICE_TOKEN``, else ``<data dir>/service_token``."""
    return kept_secret(data_dir, "service_token", "CONVEYOR_SERVICE_TOKEN")


def missing_token(opts: Options) -> str | None:
    """Why this host cannot have the service token, or None: a host that calls services run elsewhere must
    be given theirs (a token made here would be refused there)."""
    remote = {need for started in opts.only for need in NEEDS[started]} - opts.only
    if not remote or os.environ.get("CONVEYOR_SERVICE_TOKEN") or (opts.data_dir / "service_token").exists():
        return None
    return (f"this host calls the {', '.join(sorted(remote))} service(s) of another host: set "
            "CONVEYOR_SERVICE_TOKEN to that deployment's token (the other host's <data dir>/service_token)")


class StackRefused(RuntimeError):
    """The stack cannot start here: its data dir is in use by a running stack, or a port is taken."""


#: Each service's env prefix, and the instance names and port offsets (from the port base) of its processes.
PREFIXES = {"logging": "LOGGING_", "registry": "REGISTRY_", "scheduler": "SCHEDULER_",
            "receptionist": "RECEPTIONIST_", "handler": "HANDLER_", "gateway": "GATEWAY_"}


def bind_host(opts: Options, service: str) -> str:
    """The address ``service`` binds: ``--host``, else its own ``<PREFIX>_HOST``, else 127.0.0.1."""
    return opts.host or os.environ.get(f"{PREFIXES[service]}HOST") or "127.0.0.1"


def several(opts: Options, service: str) -> list[tuple[str, int]]:
    """The instances of the registry or the scheduler, ``(name, port)``: one keeps its name and port (the
    registry at base + 11, the scheduler at base + 10); several are ``registry-1``.. on base + 70.. and
    ``scheduler-1``.. on base + 60..."""
    count = opts.registries if service == "registry" else opts.schedulers
    if count <= 1:
        return [(service, opts.port_base + SINGLE_PORT[service])]
    return [(f"{service}-{i}", opts.port_base + MANY_PORTS[service] + i - 1) for i in range(1, count + 1)]


def service_ports(opts: Options) -> list[tuple[str, str, int]]:
    """``(service, host, port)`` of every service this host starts, gateway first."""
    base = opts.port_base
    instances = {"gateway": [("gateway", base)],
                 "receptionist": [(f"receptionist-{i}", base + i) for i in range(1, opts.receptionists + 1)],
                 "scheduler": several(opts, "scheduler"), "registry": several(opts, "registry"),
                 "logging": [("logging_service", base + 12)],
                 "handler": [(f"handler-{i}", base + 19 + i) for i in range(1, opts.handler_slots + 1)]}
    return [(name, bind_host(opts, service), port)
            for service in ("gateway", "receptionist", "scheduler", "registry", "logging", "handler")
            if service in opts.only for name, port in instances[service]]


def taken_port(opts: Options) -> tuple[str, str, int] | None:
    """The first service whose port cannot be bound now (something listens there), else None. Bound the
    way the services bind (``SO_REUSEADDR``), so a port that only lingers in TIME_WAIT counts as free."""
    for name, host, port in service_ports(opts):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    return name, host, port
                raise StackRefused(f"cannot listen on {host}:{port} for {name}: {exc.strerror}") from exc
    return None


def advertise_url(opts: Options, service: str, port: int) -> str | None:
    """The URL an instance started here registers (``<P>_ADVERTISE_URL``): the one the others are told, when
    it binds one address, or binds every address and this host runs the whole stack (every caller is here,
    on loopback). None for a host's part bound to every address: which address the other hosts reach is not
    known here (the instance then does not register, unless the environment gives it one)."""
    host = bind_host(opts, service)
    if host in ("", "0.0.0.0", "::") and opts.only != frozenset(SERVICES):
        return None
    return f"http://{reachable(host)}:{port}"


def plan(opts: Options) -> list[Service]:
    """The services this host starts, with their ports and environments. Every URL a service is given is
    one of a service started here or one given in ``opts`` (see :func:`missing_urls`, checked first)."""
    if problems := missing_urls(opts) + instance_problems(opts):
        raise StackRefused("; ".join(problems))
    data = opts.data_dir.resolve()
    ports = {name: port for name, _, port in service_ports(opts)}
    token = service_token(data)
    only = opts.only

    def url(service: str, name: str) -> str:
        if service in only:
            return f"http://{reachable(bind_host(opts, service))}:{ports[name]}"
        given = opts.remote_url(service)
        assert given is not None  # missing_urls said so
        return ",".join(part.strip().rstrip("/") for part in given.split(",") if part.strip())

    def urls(service: str) -> list[str]:
        """The instances of the registry or the scheduler, started here or given (a comma-separated list)."""
        if service not in only:
            return url(service, service).split(",")
        return [url(service, name) for name, _ in several(opts, service)]

    def turn(instances: list[str], k: int) -> str:
        """The list as the ``k``-th client gets it: each starts at another instance, so that clients spread
        over the instances (a client keeps to the one that answers: :mod:`shared.http`)."""
        k %= max(1, len(instances))
        return ",".join(instances[k:] + instances[:k])

    log_url = url("logging", "logging_service")
    registries = urls("registry") if only & {"receptionist", "handler", "gateway"} else []
    schedulers = urls("scheduler") if only & {"receptionist", "handler"} else []
    registry_url = turn(registries, 0)
    # Every instance registers with the registry (shared.heartbeat): the scheduler and the logging service
    # too, when the registry is started here or its URL is given; nothing refuses to start without it.
    beat_url = ",".join(urls("registry")) if "registry" in only or opts.remote_url("registry") else ""
    artifacts = str(data / "artifacts")
    data_store = opts.data_store_url or f"sqlite:///{data}/data.db"
    inherited = dict(os.environ)
    # Each host of a deployment numbers its instances from 1: the host name tells apart, in the shared logs
    # and /status, the handler-1 of one host from that of another.
    suffix = "" if only == frozenset(SERVICES) else f"@{socket.gethostname()}"

    def env(service: str, instance: str, port: int, **values: str) -> dict[str, str]:
        prefix = PREFIXES[service]
        out = dict(inherited)
        out.update({f"{prefix}PORT": str(port), f"{prefix}HOST": bind_host(opts, service),
                    f"{prefix}INSTANCE": instance + suffix, f"{prefix}SERVICE_TOKEN": token, f"{prefix}LOG_URL": log_url,
                    "PYTHONUNBUFFERED": "1"})
        if service != "registry" and beat_url:
            out[f"{prefix}REGISTRY_URL"] = beat_url
        if (advertised := advertise_url(opts, service, port)) is not None:
            out[f"{prefix}ADVERTISE_URL"] = advertised
        for key, value in values.items():
            name = f"{prefix}{key.upper()}"
            if key in OPERATORS_CHOICE and name in inherited:
                continue  # an operator's choice of backend wins over the embedded default
            out[name] = value
        return out

    def service(kind: str, name: str, module: str, group: int, **values: str) -> Service:
        return Service(name, module, ports[name], env(kind, name, ports[name], **values), group=group,
                       host=bind_host(opts, kind))

    services = []
    if "logging" in only:
        services.append(service("logging", "logging_service", "logging_service", 0,
                                store_url=f"sqlite:///{data}/logs.db"))
    for kind in ("registry", "scheduler"):
        if kind in only:  # several instances share the operator's store (instance_problems checked it)
            services += [service(kind, name, kind, 1, store_url=f"sqlite:///{data}/{kind}.db")
                         for name, _ in several(opts, kind)]
    receptionist_urls = []
    if "receptionist" in only:
        for i in range(1, opts.receptionists + 1):
            name = f"receptionist-{i}"
            receptionist_urls.append(url("receptionist", name))
            services.append(service(
                "receptionist", name, "receptionist", 2, registry_url=turn(registries, i - 1),
                scheduler_url=turn(schedulers, i - 1),
                logging_url=log_url, artifacts_dir=artifacts, data_store_url=data_store,
                time_scale=str(opts.time_scale)))
    elif "gateway" in only:
        receptionist_urls = [u.strip().rstrip("/") for u in (opts.remote_url("receptionist") or "").split(",")
                             if u.strip()]
    if "handler" in only:
        for i in range(1, opts.handler_slots + 1):
            services.append(service(
                "handler", f"handler-{i}", "handler", 3, registry_url=turn(registries, i - 1),
                scheduler_url=turn(schedulers, i - 1),
                artifacts_dir=artifacts, data_store_url=data_store, time_scale=str(opts.time_scale)))
            services[-1].standby = i > opts.handlers  # started by the autoscaler when needed
    if "gateway" in only:
        gateway_values = {"receptionists": ",".join(receptionist_urls), "registry_url": registry_url,
                          "jwt_secret": kept_secret(data, "jwt_secret", "CONVEYOR_JWT_SECRET")}
        if opts.rate_limit_per_s is not None:
            gateway_values["rate_limit_per_s"] = str(opts.rate_limit_per_s)
        if opts.rate_limit_burst is not None:
            gateway_values["rate_limit_burst"] = str(opts.rate_limit_burst)
        services.append(service("gateway", "gateway", "gateway", 4, **gateway_values))
    return services
