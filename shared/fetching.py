"""Fetching a file from a URL a client named, without server-side request forgery.

A client's URL must never make the stack reach what only the stack can reach: loopback, private,
shared (CGNAT), link-local, multicast, unspecified, reserved and documentation ranges, and this machine's
own addresses, in IPv4 and IPv6, the IPv4 forms hidden in IPv6 (mapped, 6to4, Teredo, NAT64) included.
One :class:`FetchPolicy` says what may be fetched; both sides use it:

- the receptionist refuses a URL whose *literal* host is not allowed at submission (a 400 naming the
  field): ``127.1``, ``0x7f000001``, ``[::ffff:127.0.0.1]``, ``localhost`` ... (:func:`require_fetchable`);
- the handler fetches with :func:`fetch_to_file`: each hostname is resolved once by a
  :class:`GuardedResolver`, every address it has is checked, and the connection goes to exactly the
  addresses checked (a second DNS answer, rebinding, never counts); redirects are followed by hand, at
  most :data:`MAX_REDIRECTS`, each hop checked again.

A refusal is a :class:`FetchRefused`, a permanent failure: the job fails without a retry. Any other
failure is a :class:`FetchFailed` (retried: the remote may come back) with one message for every cause
(refused connection, closed or open port, a status other than 200, a protocol error): what the remote
answered (its status, body, reason) is never shown, so a fetch cannot be used to scan ports or read what
a host says. ``*_FETCH_ALLOW`` (comma-separated host names and CIDR networks, none by default) lets
named hosts or networks through, for on-premises use.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from shared.errors import ValidationFailed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Redirects followed at most, each checked like the first URL.
MAX_REDIRECTS = 5
#: The one message of every failed fetch: it names no cause the remote could have chosen.
FAILED = ("the file could not be fetched: no connection, or no 200 answer with a file (the remote's "
          "answer is not shown)")

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LEGACY_IPV4 = re.compile(r"^[0-9a-fx.]+$", re.IGNORECASE)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchRefused(ValueError):
    """The URL names (or its host resolves to, or a redirect leads to) an address that may not be fetched."""

    #: No retry can change the policy's answer: the job fails at once (:func:`shared.kinds.base.is_permanent`).
    retry = False


class FetchFailed(Exception):
    """The fetch did not give a file; the message says nothing of what the remote answered."""


class _AddressRefused(OSError):
    """Raised inside the connector by :class:`GuardedResolver`; unwrapped into :class:`FetchRefused`."""


def literal_address(host: str) -> IPAddress | None:
    """The address a URL's host spells, in any form a resolver would take (``127.1``, ``0x7f000001``,
    ``2130706433``, ``0177.0.0.1``, ``[::1]``), or None for a name."""
    host = host.strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):  # the BSD forms getaddrinfo (and browsers) still read as IPv4
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _embedded(address: IPAddress) -> list[IPAddress]:
    """The address and every IPv4 address an IPv6 one carries inside it."""
    found: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            found.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            found.append(address.sixtofour)
        if address.teredo is not None:
            found.extend(address.teredo)
        if address in _NAT64:
            found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _is_own(address: IPAddress) -> bool:
    """Whether this machine holds ``address`` (binding to it works only then)."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


def address_kind(address: IPAddress) -> str | None:
    """Why ``address`` may not be fetched from ("loopback", "private" ...), or None for a public one."""
    for each in _embedded(address):
        if each.is_unspecified:
            return "unspecified"
        if each.is_loopback:
            return "loopback"
        if each.is_link_local:
            return "link-local"
        if each.is_multicast:
            return "multicast"
        if each.is_private:
            return "private"
        if each.is_reserved or not each.is_global or getattr(each, "is_site_local", False):
            return "reserved"
    if _is_own(address):
        return "this machine's own"
    return None


@dataclass(frozen=True)
class FetchPolicy:
    """What a URL may reach: public addresses, plus the host names and networks allowed explicitly."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, entries: Iterable[str]) -> FetchPolicy:
        """A policy from ``*_FETCH_ALLOW`` entries: host names and CIDR networks (an address alone is a
        network of one), written canonically. A malformed entry is a :class:`ValueError`."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in (e.strip() for e in entries):
            if not entry:
                continue
            if "/" in entry or ":" in entry or _LEGACY_IPV4.fullmatch(entry):
                try:
                    networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                except ValueError as exc:
                    raise ValueError(f"{entry!r} is neither a host name nor a network: {exc}") from None
            else:
                hosts.add(_host_name(entry))
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return _host_name(host) in self.hosts

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be reached, or None when it may."""
        if any(address in network for network in self.networks):
            return None
        for each in _embedded(address)[1:]:
            if any(each in network for network in self.networks):
                return None
        return address_kind(address)

    def check_url(self, url: str | URL) -> URL:
        """The URL parsed, when its scheme and literal host may be fetched; :class:`FetchRefused` otherwise.
        A host name is checked here only by name (``localhost``); its addresses when it is resolved."""
        try:
            parsed = url if isinstance(url, URL) else URL(url)
        except (ValueError, TypeError):
            raise FetchRefused("not a URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.raw_host:
            raise FetchRefused("must be an http or https URL with a host")
        host = parsed.raw_host
        if self.allows_host(host):
            return parsed
        address = literal_address(host)
        if address is not None:
            kind = self.refusal(address)
            if kind is not None:
                raise FetchRefused(f"{host} is a {kind} address; imports fetch only from public addresses")
            return parsed
        name = _host_name(host)
        if "%" in name or not name:
            raise FetchRefused(f"{host!r} is not a valid host name")
        if name == "localhost" or name.endswith(".localhost"):
            raise FetchRefused(f"{host} is a loopback name; imports fetch only from public addresses")
        return parsed


def _host_name(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


@functools.lru_cache(maxsize=8)
def policy_of(entries: tuple[str, ...]) -> FetchPolicy:
    """The policy of a setting's entries, parsed once."""
    return FetchPolicy.of(entries)


def require_fetchable(url: str, allow: Iterable[str], field: str = "url") -> None:
    """At submission: a 400 naming ``field`` when the URL's literal host may not be fetched."""
    try:
        policy_of(tuple(allow)).check_url(url)
    except FetchRefused as exc:
        raise ValidationFailed("invalid request", [{"field": field, "message": str(exc)}]) from None


class GuardedResolver(AbstractResolver):
    """Resolves a host name once and refuses it when any of its addresses may not be fetched; the
    connector then connects to the addresses returned, the very ones checked."""

    def __init__(self, policy: FetchPolicy, base: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._base = base or ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        results = await self._base.resolve(host, port, family)
        if self.policy.allows_host(host):
            return results
        for result in results:
            kind = self.policy.refusal(ipaddress.ip_address(result["host"].split("%", 1)[0]))
            if kind is not None:
                raise _AddressRefused(f"{host.rstrip('.')} resolves to a {kind} address; imports fetch only "
                                      "from public addresses")
        return results

    async def close(self) -> None:
        await self._base.close()


async def fetch_to_file(url: str, target: Path, *, policy: FetchPolicy, max_bytes: int,
                        resolver: AbstractResolver | None = None,
                        timeout: aiohttp.ClientTimeout | None = None) -> tuple[URL, str | None]:
    """Fetch ``url`` into ``target``, streamed, at most ``max_bytes``, following up to
    :data:`MAX_REDIRECTS` redirects, each hop checked: the URL it ended at and its content type.

    :class:`FetchRefused` when a hop may not be fetched; :class:`FetchFailed` otherwise."""
    timeout = timeout or aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy, resolver), use_dns_cache=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as session:
        current = policy.check_url(url)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                async with session.get(current, allow_redirects=False) as resp:
                    if resp.status in _REDIRECTS:
                        current = policy.check_url(_next_hop(current, resp.headers.get("Location")))
                        continue
                    if resp.status != 200:
                        raise FetchFailed(FAILED)
                    await _save(resp, target, max_bytes)
                    return current, resp.headers.get("Content-Type")
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, _AddressRefused):
                    raise FetchRefused(str(exc.os_error)) from None
                raise FetchFailed(FAILED) from None
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                if isinstance(exc, _AddressRefused):
                    raise FetchRefused(str(exc)) from None
                raise FetchFailed(FAILED) from None
        raise FetchFailed(f"the file could not be fetched: more than {MAX_REDIRECTS} redirects")


def _next_hop(current: URL, location: str | None) -> URL:
    if not location:
        raise FetchFailed(FAILED)
    try:
        return current.join(URL(location))
    except (ValueError, TypeError):
        raise FetchFailed(FAILED) from None


async def _save(resp: aiohttp.ClientResponse, target: Path, max_bytes: int) -> None:
    too_large = FetchFailed(f"the file is larger than {max_bytes} bytes")
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise too_large
    size = 0
    with open(target, "wb") as fh:
        async for chunk in resp.content.iter_chunked(256 * 1024):
            size += len(chunk)
            if size > max_bytes:
                raise too_large
            await asyncio.to_thread(fh.write, chunk)

