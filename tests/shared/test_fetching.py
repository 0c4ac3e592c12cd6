"""The fetch policy (:mod:`shared.fetching`): literal addresses in every spelling, names resolved to
forbidden addresses, redirects, and failures that never tell what the remote answered. Files are served
by real servers on loopback; a stand-in resolver plays DNS (the only thing not real here: a test cannot
make the machine's resolver answer what it wants)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from pydantic import ValidationError

from handler.settings import Settings as HandlerSettings
from receptionist.settings import Settings as ReceptionistSettings
from shared.fetching import FAILED, FetchFailed, FetchPolicy, FetchRefused, fetch_to_file

STRICT = FetchPolicy()
LOOPBACK_ALLOWED = FetchPolicy.of(["127.0.0.1"])


class StandInDns(AbstractResolver):
    """Answers names from a table, as a DNS server would."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        self.asked.append(host)
        return [ResolveResult(hostname=host, host=address, port=port,
                              family=socket.AF_INET6 if ":" in address else socket.AF_INET, proto=0, flags=0)
                for address in self.table[host]]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/health#.csv", "http://127.1/x.csv", "http://0x7f000001/x.csv", "http://2130706433/x.csv",
    "http://0177.0.0.1/x.csv", "http://127.0.0.1./x.csv", "http://[::1]/x.csv", "http://[::ffff:127.0.0.1]/x.csv",
    "http://[::ffff:7f00:1]/x.csv", "http://[::127.0.0.1]/x.csv", "http://[64:ff9b::7f00:1]/x.csv",
    "http://[2002:7f00:1::]/x.csv", "http://169.254.169.254/latest/meta-data", "http://[fe80::1%25eth0]/x.csv",
    "http://10.1.2.3/x.csv", "http://172.16.0.1/x.csv", "http://192.168.1.1/x.csv", "http://100.64.0.1/x.csv",
    "http://[fc00::1]/x.csv", "http://0.0.0.0/x.csv", "http://0/x.csv", "http://[::]/x.csv",
    "http://224.0.0.1/x.csv", "http://[ff02::1]/x.csv", "http://240.0.0.1/x.csv", "http://255.255.255.255/x.csv",
    "http://localhost/x.csv", "http://LOCALHOST./x.csv", "http://api.localhost/x.csv", "https://%6c%6fcalhost/x.csv",
])
def test_literal_addresses_that_are_not_public_are_refused(url: str) -> None:
    with pytest.raises(FetchRefused):
        STRICT.check_url(url)


@pytest.mark.parametrize("url", ["http://93.184.215.14/users.csv", "https://example.com/users.csv?sig=1",
                                 "http://[2606:4700:4700::1111]/x.csv", "https://files.example.org:8443/u.ndjson"])
def test_public_addresses_and_names_pass_the_literal_check(url: str) -> None:
    assert str(STRICT.check_url(url)) == url


def test_the_allow_list_names_hosts_and_networks() -> None:
    policy = FetchPolicy.of(["files.corp", "10.2.0.0/16", "127.0.0.1", ""])
    for url in ("http://files.corp/x.csv", "http://FILES.CORP./x.csv", "http://10.2.3.4/x.csv",
                "http://127.0.0.1:8091/x.csv"):
        policy.check_url(url)
    for url in ("http://10.3.0.1/x.csv", "http://127.0.0.2/x.csv", "http://localhost/x.csv"):
        with pytest.raises(FetchRefused):
            policy.check_url(url)
    for bad in ("10.0.0.0/99", "1.2.3/8"):
        with pytest.raises(ValueError):
            FetchPolicy.of([bad])
    assert HandlerSettings(fetch_allow="files.corp, 10.2.0.0/16").fetch_allow == ["files.corp", "10.2.0.0/16"]
    with pytest.raises(ValidationError):
        ReceptionistSettings(fetch_allow="10.0.0.0/99")
    assert ReceptionistSettings().fetch_allow == [] and HandlerSettings().fetch_allow == []  # off by default


@pytest.fixture
async def files(aiohttp_server: Any) -> Any:
    """A loopback file server: ``/users.csv``, ``/secret`` (a 500 with a body nobody may read),
    ``/missing`` (404), ``/to?url=`` (a redirect), ``/loop`` (redirects to itself); ``hits`` counts requests."""
    hits: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        if request.path == "/users.csv":
            return web.Response(text="id,email,role\nu1,a@example.com,admin\n", content_type="text/csv")
        if request.path == "/secret":
            return web.Response(status=500, reason="Top Secret Reason", text="the secret body")
        if request.path == "/to":
            raise web.HTTPFound(request.query["url"])
        if request.path == "/loop":
            raise web.HTTPFound("/loop")
        return web.Response(status=404, text="no such file, says the secret server")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    server.hits = hits
    return server


async def test_a_name_that_resolves_to_loopback_is_refused_before_connecting(files: Any, tmp_path: Path) -> None:
    for table in ({"files.example": ["127.0.0.1"]}, {"files.example": ["93.184.215.14", "127.0.0.1"]},
                  {"files.example": ["::ffff:127.0.0.1"]}, {"files.example": ["10.0.0.7"]}):
        dns = StandInDns(table)
        with pytest.raises(FetchRefused, match=r"files\.example resolves to a (loopback|private) address"):
            await fetch_to_file(f"http://files.example:{files.port}/users.csv", tmp_path / "f", policy=STRICT,
                                max_bytes=1000, resolver=dns)
        assert dns.asked == ["files.example"]
    assert files.hits == []


async def test_an_allowed_name_or_network_is_fetched(files: Any, tmp_path: Path) -> None:
    dns = StandInDns({"files.corp": ["127.0.0.1"]})
    for policy, url in ((FetchPolicy.of(["files.corp"]), f"http://files.corp:{files.port}/users.csv"),
                        (FetchPolicy.of(["127.0.0.0/8"]), f"http://files.corp:{files.port}/users.csv"),
                        (LOOPBACK_ALLOWED, f"http://127.0.0.1:{files.port}/users.csv")):
        final, content_type = await fetch_to_file(url, tmp_path / "f", policy=policy, max_bytes=1000, resolver=dns)
        assert final.path == "/users.csv" and content_type is not None and content_type.startswith("text/csv")
        assert (tmp_path / "f").read_text().startswith("id,email,role\n")


async def test_every_redirect_is_checked_again(files: Any, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{files.port}"
    dns = StandInDns({"inside.example": ["10.0.0.7"]})
    for target in ("http://127.0.0.2:80/x.csv", "http://[::1]/x.csv", "http://localhost/x.csv",
                   "http://169.254.169.254/latest/meta-data", f"http://inside.example:{files.port}/users.csv",
                   "file:///etc/passwd"):
        with pytest.raises(FetchRefused):
            await fetch_to_file(f"{base}/to?url={target}", tmp_path / "f", policy=LOOPBACK_ALLOWED, max_bytes=1000,
                                resolver=dns)
    # A redirect to where it may go is followed; more than five are not.
    final, _ = await fetch_to_file(f"{base}/to?url={base}/users.csv", tmp_path / "f", policy=LOOPBACK_ALLOWED,
                                   max_bytes=1000)
    assert str(final) == f"{base}/users.csv"
    with pytest.raises(FetchFailed, match="more than 5 redirects"):
        await fetch_to_file(f"{base}/loop", tmp_path / "f", policy=LOOPBACK_ALLOWED, max_bytes=1000)
    assert files.hits.count("/loop") == 6


async def test_failures_say_the_same_and_nothing_of_the_remote(files: Any, tmp_path: Path,
                                                                unused_tcp_port: int) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6 secret banner\r\n")
        await writer.drain()
        writer.close()

    not_http = await asyncio.start_server(garbage, "127.0.0.1", 0)
    async with not_http:
        not_http_port = not_http.sockets[0].getsockname()[1]
        messages = set()
        for url in (f"http://127.0.0.1:{unused_tcp_port}/users.csv",  # a closed port
                    f"http://127.0.0.1:{not_http_port}/users.csv",  # an open one, not HTTP
                    f"http://127.0.0.1:{files.port}/secret", f"http://127.0.0.1:{files.port}/missing"):
            with pytest.raises(FetchFailed) as failed:
                await fetch_to_file(url, tmp_path / "f", policy=LOOPBACK_ALLOWED, max_bytes=1000)
            messages.add(str(failed.value))
            assert failed.value.__cause__ is None  # no chained error carries the remote's words either
    assert messages == {FAILED}
    for secret in ("secret", "Secret", "500", "404", "SSH"):
        assert secret not in FAILED


async def test_a_file_over_the_limit_is_refused(files: Any, tmp_path: Path) -> None:
    with pytest.raises(FetchFailed, match="larger than 10 bytes"):
        await fetch_to_file(f"http://127.0.0.1:{files.port}/users.csv", tmp_path / "f", policy=LOOPBACK_ALLOWED,
                            max_bytes=10)
