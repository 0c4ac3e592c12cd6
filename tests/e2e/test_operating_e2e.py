"""Operating edges with real processes: ``conveyor up`` refuses a data dir whose stack runs and a port
that something else holds, touching nothing; every ``conveyor`` command that fails says why on stderr and
exits non-zero."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Stack, _free_port_base, alive
from tests.support import wait_until


async def run_conveyor(*args: str, timeout_s: float = 60, env: dict[str, str] | None = None
                       ) -> tuple[int, str, str]:
    """``conveyor <args>`` in a subprocess with no terminal (stdin is /dev/null): its exit code, stdout
    and stderr. One that is still running at ``timeout_s`` is stopped, and the test fails."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shared.cli", *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
    except TimeoutError:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        raise AssertionError(f"conveyor {' '.join(args)} was still running after {timeout_s}s:\n"
                             f"{out.decode()[-2000:]}{err.decode()[-2000:]}") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def files_of(stack: Stack) -> dict[str, bytes]:
    """``stack.json`` and every log file of a stack, by name."""
    logs = sorted((stack.data_dir / "logs").glob("*.log"))
    return {"stack.json": (stack.data_dir / "stack.json").read_bytes(),
            **{path.name: path.read_bytes() for path in logs}}


def untouched(before: dict[str, bytes], after: dict[str, bytes]) -> None:
    """The refused launcher wrote nothing: ``stack.json`` is the same, and each log file is what it was,
    or that and more (the running stack's own services go on logging: a heartbeat retried, say)."""
    assert after.keys() == before.keys()
    assert after["stack.json"] == before["stack.json"]
    for name, content in before.items():
        assert after[name].startswith(content), name


async def all_healthy(stack: Stack) -> list[str]:
    """The services of ``stack`` that do not answer ``/health`` with 200."""
    sick = []
    for service in stack.state()["services"]:
        async with stack.session.get(service["url"] + "/health") as resp:
            if resp.status != 200:
                sick.append(service["name"])
    return sick


async def test_a_second_up_on_a_running_stacks_data_dir_is_refused(start_stack: Any) -> None:
    stack = await start_stack("--handlers", "1", "--receptionists", "1", "--time-scale", "0")
    before = files_of(stack)
    pids = stack.pids()
    for port_base in (stack.port_base, _free_port_base()):  # its own ports, and ports that are free
        code, out, err = await run_conveyor("up", "--data-dir", str(stack.data_dir), "--port-base", str(port_base),
                                            "--handlers", "1", "--receptionists", "1")
        assert code == 1, out + err
        assert "Conveyor is up" not in out
        launcher_pid = stack.process.pid
        assert f"already running (launcher pid {launcher_pid})" in err and str(stack.data_dir) in err, err
        assert "Traceback" not in out + err
        untouched(before, files_of(stack))
        assert stack.pids() == pids
        assert await all_healthy(stack) == []
    assert (stack.data_dir / "conveyor.lock").read_text().strip() == str(stack.process.pid)
    status, _, _ = await stack.request("POST", "/exports", json={"bookId": "b", "type": "epub"})
    assert status == 201


async def test_a_killed_stack_leaves_no_stale_lock(start_stack: Any) -> None:
    stack = await start_stack("--handlers", "1", "--receptionists", "1", "--time-scale", "0")
    pids = stack.pids()
    stack.process.kill()  # SIGKILL: no cleanup of its own; the kernel drops the flock
    await stack.process.wait()

    async def services_gone() -> bool:  # they get SIGTERM from the kernel as their parent dies
        return not any(alive(pid) for pid in pids)

    await wait_until(services_gone, timeout_s=60, what="the killed stack's services to stop")
    again = await start_stack("--handlers", "1", "--receptionists", "1", "--time-scale", "0",
                              "--data-dir", str(stack.data_dir))
    # It got up (start_stack waits for "Conveyor is up"), and holds the lock now.
    assert (stack.data_dir / "conveyor.lock").read_text().strip() == str(again.process.pid)


async def test_a_port_taken_by_anything_else_is_refused_before_anything_starts(tmp_path: Path) -> None:
    base = _free_port_base()
    data_dir = tmp_path / "stack"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base + 10))  # the scheduler's
        squatter.listen()
        code, out, err = await run_conveyor("up", "--data-dir", str(data_dir), "--port-base", str(base),
                                            "--handlers", "1")
    assert code == 1, out + err
    assert f"port {base + 10} on 127.0.0.1, which scheduler needs, is already in use" in err, err
    assert "Traceback" not in out + err and "Conveyor is up" not in out
    assert not data_dir.exists()  # nothing written: no stack.json, no logs, no secrets

    # The same in a data dir that a stopped stack left: nothing in it changes.
    data_dir.mkdir()
    (data_dir / "stack.json").write_text("{}")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base))  # the gateway's
        squatter.listen()
        code, out, err = await run_conveyor("up", "--data-dir", str(data_dir), "--port-base", str(base))
    assert code == 1 and f"port {base} on 127.0.0.1, which gateway needs, is already in use" in err, err
    assert (data_dir / "stack.json").read_text() == "{}"
    assert [path.name for path in data_dir.iterdir()] == ["stack.json"]


async def test_every_failing_command_says_why_and_exits_non_zero(start_stack: Any, tmp_path: Path) -> None:
    stack = await start_stack("--handlers", "1", "--receptionists", "1", "--time-scale", "0",
                              env={"CONVEYOR_ADMIN_PASSWORD": "admin's secret"})
    data = ("--data-dir", str(stack.data_dir))
    no_password = {"CONVEYOR_PASSWORD": ""}
    stopped = tmp_path / "stopped"  # what a stack that is gone left behind
    stopped.mkdir()
    (stopped / "stack.json").write_bytes((stack.data_dir / "stack.json").read_bytes().replace(
        f":{stack.port_base + 1}".encode(), f":{_free_port_base()}".encode()))
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "stack.json").write_text('{"services": []}')
    unknown = "5f0f6d43-5a0d-4a3c-9d0c-3f0c8c1c2a11"

    failures = [
        # (command line, exit code, what stderr says)
        (("token", "admin", *data), 2, "no terminal to ask the password on"),
        (("token", "admin", "--password", "wrong", *data), 1, "401"),
        (("dlq", "requeue", unknown, *data), 1, f"could not requeue 1: {unknown}"),
        (("dlq", "requeue", "not-a-job-id", *data), 1, "400: invalid request (job_ids.0:"),
        (("dlq", "requeue", *data), 2, "name job ids, or --all"),
        (("dlq", "list", "--data-dir", str(stopped)), 1, "cannot reach http://127.0.0.1:"),
        (("dlq", "list", "--data-dir", str(garbled)), 1, "does not describe a stack with a receptionist"),
        (("dlq", "list", "--data-dir", str(tmp_path / "nowhere")), 1, "no running stack found"),
        (("user", "remove", "nobody", *data), 1, "404"),
        (("user", "passwd", "nobody", "--password", "x" * 12, *data), 1, "404"),
        (("user", "add", "admin", "--password", "x" * 12, *data), 1, "409"),
        (("user", "list", "--data-dir", str(garbled)), 1, "does not describe a stack with a registry"),
        (("user", "add", "bob", "--role", "king", *data), 2, "invalid choice"),
    ]
    for args, expected, reason in failures:
        code, out, err = await run_conveyor(*args, env=no_password)
        assert (code, reason in err) == (expected, True), (args, code, out, err)
        assert "Traceback" not in out + err, (args, err)
        if expected == 1:
            assert len(err.strip().splitlines()) == 1, (args, err)  # one line, the reason
            assert err.startswith(f"conveyor {args[0]}"), (args, err)

    # The same commands succeed, exit 0, when there is nothing wrong.
    code, out, err = await run_conveyor("token", "admin", *data, env={"CONVEYOR_PASSWORD": "admin's secret"})
    assert code == 0 and out.strip() and not err, err
    code, out, _ = await run_conveyor("dlq", "list", *data)
    assert code == 0 and "no dead letters" in out
