"""The client commands of ``conveyor`` (login, submit, jobs, job, cancel, logs, status, queues, dlq) run as
processes against a live stack: remote (``--url`` and a token: stored by ``login``, given with ``--token``
or in ``CONVEYOR_TOKEN``), and local (the data dir's stack, as an internal operator). Exit codes, one-line
failures and the ``--json`` output are checked."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.client import Client
from tests.e2e import live

CONVEYOR = str(Path(sys.executable).parent / "conveyor")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[live.LiveStack]:
    stack = live.start(tmp_path_factory.mktemp("cli"))
    yield stack
    stack.stop()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return tmp_path / "config"


def conveyor(*args: str, config: Path, env: dict[str, str] | None = None, stdin: str | None = None,
             ok: bool | None = True) -> tuple[int, str, str]:
    """``conveyor <args>`` with no terminal, its config under ``config`` and no CONVEYOR_* of the caller's."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    done = subprocess.run([CONVEYOR, *args], input=stdin or "", capture_output=True, text=True, timeout=120,
                          env={**base, "XDG_CONFIG_HOME": str(config), **(env or {})})
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    if ok is True:
        assert done.returncode == 0, done.stderr
    elif ok is False:
        assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1, (done.returncode, done.stderr)
    return done.returncode, done.stdout, done.stderr


def as_json(out: str) -> Any:
    return json.loads(out)


def test_login_keeps_a_token_only_its_owner_reads(stack: live.LiveStack, config: Path) -> None:
    code, _, err = conveyor("login", "alice", "--url", stack.url, config=config, ok=False)
    assert code == 2 and "no terminal to ask the password on" in err
    code, _, err = conveyor("--url", stack.url, "login", "alice", "--password-stdin", stdin="wrong\n",
                            config=config, ok=False)
    assert code == 1 and err.startswith("conveyor login: 401: ")
    assert not (config / "conveyor" / "token").exists()
    _, out, _ = conveyor("--url", stack.url, "login", "alice", "--password-stdin", "--json",
                         stdin=live.USERS["alice"][0] + "\n", config=config)
    path = config / "conveyor" / "token"
    assert as_json(out)["token_file"] == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # The stored token is alice's: her job is listed as hers.
    _, out, _ = conveyor("submit", "export", "bookId=stored", "type=epub", "--url", stack.url, "--json",
                         config=config)
    job = as_json(out)
    with Client(stack.url, token=stack.token("alice")) as client:
        assert client.get(job["id"]).owner == job["owner"] != "anonymous"


def test_submit_wait_list_show_and_cancel(stack: live.LiveStack, config: Path) -> None:
    remote = {"CONVEYOR_URL": stack.url, "CONVEYOR_TOKEN": stack.token("alice")}
    _, out, err = conveyor("submit", "export", '{"bookId": "cli", "type": "epub"}', "--priority", "4", "--wait",
                           "--json", config=config, env=remote)
    job = as_json(out)
    assert (job["state"], job["priority"], job["progress"]) == ("finished", 4, 1.0)
    assert err == ""  # no progress bar without a terminal
    _, out, _ = conveyor("jobs", "--kind", "export", "--state", "finished", "--json", config=config, env=remote)
    assert job["id"] in [j["id"] for j in as_json(out)]
    _, out, _ = conveyor("jobs", "--limit", "1", config=config, env=remote)
    assert out.splitlines()[0].split()[:3] == ["id", "kind", "state"] and out.strip().endswith("1 jobs")
    _, out, _ = conveyor("job", job["id"], "--json", config=config, env=remote)
    shown = as_json(out)
    assert shown["job"]["id"] == job["id"]
    assert [c["state"] for c in shown["history"]] == ["pending", "processing", "finished"]
    _, out, _ = conveyor("job", job["id"], config=config, env=remote)
    assert "state     finished" in out and "history:" in out
    code, _, err = conveyor("cancel", job["id"], config=config, env=remote, ok=False)
    assert code == 1 and err.startswith("conveyor cancel: 409: ")

    # key=text and key:=JSON; held back by --delay, then cancelled at once
    code, _, err = conveyor("submit", "export", "bookId=later", "type=pdf", "extra:=1", "--delay", "600",
                            config=config, env=remote, ok=False)
    assert code == 1 and "payload.extra" in err  # the kind's model refuses an unknown field, by name
    _, out, _ = conveyor("submit", "export", "bookId=later", "type=pdf", "--delay", "600", "--json",
                         config=config, env=remote)
    later = as_json(out)
    assert later["state"] == "pending" and later["run_at"] is not None
    _, out, _ = conveyor("cancel", later["id"], config=config, env=remote)
    assert out.strip() == f"{later['id']}: cancelled"

    code, _, err = conveyor("submit", "export", "bookId=1", "type=mobi", config=config, env=remote, ok=False)
    assert code == 1 and "400: invalid request (payload.type:" in err
    code, _, err = conveyor("submit", "export", "bookId", config=config, env=remote, ok=False)
    assert code == 2 and "neither key=text nor key:=JSON" in err
    code, _, err = conveyor("job", str(uuid.uuid4()), config=config, env=remote, ok=False)
    assert code == 1 and "404: no job" in err
    code, _, err = conveyor("jobs", "--token", "not.a.token", config=config, env=remote, ok=False)
    assert code == 1 and err.startswith("conveyor jobs: 401: ")  # --token wins over CONVEYOR_TOKEN


def test_logs_of_a_job_for_its_owner(stack: live.LiveStack, config: Path) -> None:
    remote = ("--url", stack.url, "--token", stack.token("alice"))
    _, out, _ = conveyor("submit", "export", "bookId=logged", "type=epub", "--wait", "--json", *remote,
                         config=config)
    job_id = as_json(out)["id"]
    _, out, _ = conveyor("logs", "--job", job_id, "--json", *remote, config=config)
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines and all(line["meta"]["job_id"] == job_id for line in lines)
    assert "job accepted" in [line["message"] for line in lines]
    assert lines == sorted(lines, key=lambda line: line["timestamp"])  # oldest first
    code, _, err = conveyor("logs", *remote, config=config, ok=False)  # everyone's: operators only
    assert code == 1 and "403" in err


def test_logs_follow_prints_the_grepped_lines_as_they_come(stack: live.LiveStack, config: Path,
                                                           tmp_path: Path) -> None:
    # A new operator, whose name is in no line yet: an operator cancelling another's job logs
    # "cancel requested by operator NAME".
    word = f"op{uuid.uuid4().hex[:12]}"
    with Client(stack.url) as admin:
        admin.login("admin", live.ADMIN_PASSWORD)
        admin.call("POST", "/users", json={"username": word, "password": "op's secret 42", "roles": ["operator"]})
    with Client(stack.url, token=stack.token("alice")) as alice:
        first, second = (alice.submit("export", {"bookId": f"follow-{n}", "type": "epub"}, delay_s=600)
                         for n in (1, 2))
    operator = Client(stack.url)
    operator.login(word, "op's secret 42")

    def cancelled_by_operator(job_id: str) -> Callable[[dict[str, Any]], bool]:
        return lambda line: line["meta"].get("job_id") == job_id and line["message"].endswith(word)

    # The first cancel is in the logging service before `logs -f` starts: it is the newest line shown,
    # and the stream goes on from there, so nothing logged after it is missed.
    with operator:
        operator.cancel(first.id)
        deadline = time.monotonic() + 60
        while not any(map(cancelled_by_operator(first.id), operator.logs(q=word))):
            assert time.monotonic() < deadline, "the operator's cancel was never logged"
            time.sleep(0.2)

        base = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        with (tmp_path / "stderr").open("w") as stderr, subprocess.Popen(
                [CONVEYOR, "logs", "-f", "--json", "--url", stack.url, "--token", stack.token("olga"), "--grep", word],
                stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, text=True,
                env={**base, "XDG_CONFIG_HOME": str(config)}) as follow:
            lines: queue.Queue[str | None] = queue.Queue()

            def read() -> None:
                assert follow.stdout is not None
                for raw in follow.stdout:
                    lines.put(raw)
                lines.put(None)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            printed: list[dict[str, Any]] = []

            def until(arrived: Callable[[dict[str, Any]], bool]) -> None:
                deadline = time.monotonic() + 60
                while not any(map(arrived, printed)):
                    try:
                        raw = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        raise AssertionError(f"no such line within 60s; printed: {printed}") from None
                    assert raw is not None, f"`conveyor logs -f` ended: {(tmp_path / 'stderr').read_text()}"
                    printed.append(json.loads(raw))

            try:
                until(cancelled_by_operator(first.id))  # the lines there already
                operator.cancel(second.id)
                until(cancelled_by_operator(second.id))  # a new one, from the stream
                assert follow.poll() is None  # still following
                # --grep is the server's: every line printed holds the word (any case).
                assert all(word in line["message"].lower() for line in printed), printed
            finally:
                follow.send_signal(signal.SIGINT)
                code = follow.wait(timeout=30)
                reader.join(timeout=30)
    said = (tmp_path / "stderr").read_text()
    assert code == 130 and said.strip() == "conveyor logs: interrupted", (code, said)
    # Following is for operators: a plain user gets a one-line 403.
    code, _, err = conveyor("logs", "-f", "--url", stack.url, "--token", stack.token("alice"), config=config,
                            ok=False)
    assert code == 1 and "403" in err


def test_operators_remote_with_a_token_and_local_through_the_data_dir(stack: live.LiveStack, config: Path) -> None:
    with Client(stack.url, token=stack.token("alice")) as alice:
        task = alice.call("POST", "/tasks", json={"description": "doomed", "duration_s": 0, "fail_probability": 1})
        alice.wait(task["id"], timeout=60)
    remote = {"CONVEYOR_URL": stack.url, "CONVEYOR_TOKEN": stack.token("olga")}
    _, out, _ = conveyor("status", "--json", config=config, env=remote)
    status = as_json(out)
    assert status["url"] == stack.url and status["health"]["status"] == "ok"
    assert {"gateway", "handler", "receptionist", "registry", "scheduler"} <= {i["kind"] for i in status["instances"]}
    assert "task" in [q["queue"] for q in status["queues"]]
    _, out, _ = conveyor("status", "--data-dir", str(stack.data_dir), config=config)  # local, no token
    assert "services:" in out and "queues:" in out and "instances (" in out
    _, out, _ = conveyor("queues", "--json", config=config, env=remote)
    assert next(q for q in as_json(out) if q["queue"] == "task")["dead"] >= 1
    _, out, _ = conveyor("dlq", "list", "--queue", "task", "--json", config=config, env=remote)
    assert task["id"] in [d["job_id"] for d in as_json(out)]
    _, out, _ = conveyor("dlq", "list", "--data-dir", str(stack.data_dir), config=config)
    assert task["id"] in out
    _, out, _ = conveyor("dlq", "requeue", task["id"], config=config, env=remote)
    assert out.strip() == "requeued 1"
    code, out, err = conveyor("dlq", "requeue", task["id"], str(uuid.uuid4()), "--data-dir", str(stack.data_dir),
                              config=config, ok=False)
    assert code == 1 and "could not requeue" in err
    code, _, err = conveyor("dlq", "requeue", config=config, env=remote, ok=False)
    assert code == 2 and "name job ids, or --all" in err
    code, _, err = conveyor("dlq", "requeue", "--all", "--queue", "nosuch", config=config, env=remote, ok=False)
    assert code == 1 and "no queue 'nosuch'" in err
    with Client(stack.url, token=stack.token("olga")) as olga:  # it fails again, and is dead again
        assert olga.wait(task["id"], timeout=60).state == "failed"
        assert task["id"] in [d["job_id"] for d in olga.dead(queue="task")]
    code, _, err = conveyor("dlq", "discard", "--all", config=config, env=remote, ok=False)
    assert code == 2 and "--yes" in err
    _, out, _ = conveyor("dlq", "discard", task["id"], config=config, env=remote)
    assert out.strip() == "discarded 1"
    code, out, err = conveyor("dlq", "discard", task["id"], "--json", config=config, env=remote, ok=False)
    assert code == 1 and as_json(out) == {"discarded": []} and f"could not discard 1: {task['id']}" in err
    _, out, _ = conveyor("queues", "pause", "task", config=config, env=remote)
    assert out.strip() == "task: paused"
    _, out, _ = conveyor("queues", "--json", config=config, env=remote)
    assert next(q for q in as_json(out) if q["queue"] == "task")["paused"] is True
    _, out, _ = conveyor("queues", "resume", "task", "--data-dir", str(stack.data_dir), "--json", config=config)
    assert as_json(out)["paused"] is False
    code, _, err = conveyor("queues", "pause", "no-such-queue", config=config, env=remote, ok=False)
    assert code == 1 and "404: no queue 'no-such-queue'" in err
    code, _, err = conveyor("status", config=config, env={**remote, "CONVEYOR_TOKEN": stack.token("alice")},
                            ok=False)
    assert code == 1 and "403" in err
    _, out, _ = conveyor("logs", "--service", "gateway", "--limit", "5", config=config, env=remote)
    assert out and all(" gateway " in line for line in out.splitlines())


def test_the_default_url_and_a_stack_that_cannot_be_reached(tmp_path: Path, config: Path) -> None:
    with socket.socket() as probe:
        free = probe.connect_ex(("127.0.0.1", 8080)) != 0
    if free:  # nothing on the default port: the commands say they tried it
        code, _, err = conveyor("jobs", config=config, ok=False)
        assert code == 1 and "cannot reach http://127.0.0.1:8080" in err
    code, _, err = conveyor("status", "--data-dir", str(tmp_path), config=config, ok=False)
    assert code == 1 and "no running stack found" in err


def test_options_json_cannot_carry_or_wait_cannot_use_are_usage_errors(stack: live.LiveStack, config: Path) -> None:
    """``--delay inf`` (or nan) once went as null, and the job ran at once; ``--timeout -1`` was refused by
    the wait, after the job was made. Both are usage errors now, before anything is sent: the key they
    carried then makes a job of its own."""
    remote = {"CONVEYOR_URL": stack.url, "CONVEYOR_TOKEN": stack.token("alice")}
    key = f"cli-finite-{uuid.uuid4()}"
    for option in (["--delay", "inf"], ["--delay", "nan"], ["--delay", "-inf"], ["--delay", "soon"],
                   ["--wait", "--timeout", "-1"], ["--wait", "--timeout", "nan"], ["--wait", "--timeout", "inf"]):
        code, out, err = conveyor("submit", "task", "description=x", *option, "--idempotency-key", key, "--json",
                                  config=config, env=remote, ok=None)
        assert (code, out) == (2, ""), (option, err)
        assert f"argument {option[-2]}: " in err, err
    code, _, err = conveyor("submit", "task", "description=x", "fail_probability:=1e999", config=config,
                            env=remote, ok=False)
    assert code == 2 and "the value of fail_probability is not JSON" in err
    _, out, _ = conveyor("submit", "task", "description=x", "--delay", "600", "--idempotency-key", key, "--json",
                         config=config, env=remote)
    job = as_json(out)
    assert job["run_at"] is not None and job["idempotency_key"] == key
    code, _, err = conveyor("submit", "task", "description=x", "--idempotency-key", key, "--delay", "600",
                            "--wait", "--timeout", "0", config=config, env=remote, ok=False)
    assert code == 1 and "has not ended after 0s" in err  # 0 is a timeout, if a short one: the same job
    conveyor("cancel", job["id"], config=config, env=remote)


def test_an_empty_idempotency_key_goes_as_given(stack: live.LiveStack, config: Path) -> None:
    """As ``--priority 1000`` does, it goes to the server, which says what is wrong with it; it was swapped
    for a key of the client's own, which no repeat could ever find."""
    remote = {"CONVEYOR_URL": stack.url, "CONVEYOR_TOKEN": stack.token("alice")}
    code, _, err = conveyor("submit", "task", "description=x", "--idempotency-key", "", config=config, env=remote,
                            ok=False)
    assert code == 1 and "400: invalid request (Idempotency-Key: " in err
