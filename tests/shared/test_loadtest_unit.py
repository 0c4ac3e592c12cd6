"""``conveyor loadtest``'s parts that need no stack: the mix, payloads, percentiles and the command line
(a live run: tests/e2e/test_loadtest_e2e.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from shared.cli import main
from shared.cli_client import store_token
from shared.loadtest import LoadOptions, LoadTest, LoadTestError, parse_mix, parse_payload, percentiles


def test_a_mix_is_kinds_by_weight() -> None:
    assert parse_mix("export=3, acme.resize=1.5,import") == {"export": 3.0, "acme.resize": 1.5, "import": 1.0}
    for bad in ("", "export=0", "export=-1", "export=lots", "=2"):
        with pytest.raises(ValueError):
            parse_mix(bad)


def test_a_payload_is_a_kind_and_a_json_object() -> None:
    assert parse_payload('acme.resize={"width": 100}') == ("acme.resize", {"width": 100})
    for bad in ("acme.resize", "acme.resize=[1]", "acme.resize={nope", '={"a": 1}'):
        with pytest.raises(ValueError):
            parse_payload(bad)


def test_percentiles_are_nearest_rank_in_milliseconds() -> None:
    values = [n / 1000 for n in range(1, 101)]  # 1..100 ms
    assert percentiles(values) == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert percentiles([0.25]) == {"p50": 250.0, "p90": 250.0, "p99": 250.0, "max": 250.0}
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None, "max": None}


def test_a_kind_without_a_payload_or_a_rate_of_zero_is_refused() -> None:
    with pytest.raises(LoadTestError, match=r"acme\.resize"):
        LoadTest(LoadOptions(url="http://127.0.0.1:9", rate=1, duration_s=1, mix={"acme.resize": 1.0}))
    with pytest.raises(LoadTestError, match="rate"):
        LoadTest(LoadOptions(url="http://127.0.0.1:9", rate=0, duration_s=1))


@pytest.mark.parametrize("args", [["--rate", "5"], ["--rate", "5", "--duration", "1", "--mix", "export=x"],
                                  ["--rate", "5", "--duration", "1", "--payload", "x"]])
def test_a_command_line_it_cannot_use_exits_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["loadtest", "--url", "http://127.0.0.1:9", *args])
    assert exc.value.code == 2


def test_a_stack_that_cannot_be_reached_fails_with_one_line(capsys: pytest.CaptureFixture[str],
                                                            unused_tcp_port: int) -> None:
    assert main(["loadtest", "--url", f"http://127.0.0.1:{unused_tcp_port}", "--rate", "5", "--duration", "1"]) == 1
    assert "cannot reach" in capsys.readouterr().err


async def test_it_takes_the_client_commands_url_token_and_json_before_or_after_it(
        aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``conveyor --url U --json loadtest ...`` as for every client command, and the token ``conveyor login``
    stored when no other is given."""
    seen: list[str | None] = []

    async def refuse(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"error": "unauthorized", "detail": "no"}, status=401)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    server = await aiohttp_server(app)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("CONVEYOR_TOKEN", raising=False)
    monkeypatch.delenv("CONVEYOR_URL", raising=False)
    store_token("stored-token")
    argv = ["--url", str(server.make_url("")), "--json", "loadtest", "--rate", "5", "--duration", "0.2",
            "--drain", "0"]
    assert await asyncio.to_thread(main, argv) == 1  # every submission refused
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == {"401": report["planned"]}
    assert seen and set(seen) == {"Bearer stored-token"}
