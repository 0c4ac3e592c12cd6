"""One live stack for a whole test module (``conveyor up`` in a subprocess, on free ports), with users of
each role, for the client's and the CLI's tests: started once, since every test there only adds jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shared.client import Client
from tests.e2e.conftest import _free_port_base

ADMIN_PASSWORD = "admin's secret 42"
#: username: (password, roles)
USERS = {"alice": ("alice's secret 42", ["user"]), "bob": ("bob's secret 42", ["user"]),
         "olga": ("olga's secret 42", ["operator"]), "uma": ("uma's secret 42", ["user", "operator"])}


@dataclass
class LiveStack:
    process: subprocess.Popen[bytes]
    data_dir: Path
    url: str
    log: Path

    def token(self, username: str) -> str:
        with Client(self.url) as client:
            return client.login(username, USERS[username][0])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def start(tmp: Path, *args: str, env: dict[str, str] | None = None) -> LiveStack:
    """``conveyor up`` at time scale 0.05 with one receptionist and one handler, and the users above."""
    base = _free_port_base()
    data_dir, log = tmp / "stack", tmp / "stack.out"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "up", "--data-dir", str(data_dir), "--port-base", str(base),
             "--receptionists", "1", "--handlers", "1", "--time-scale", "0.05", *args],
            env={**os.environ, "CONVEYOR_ADMIN_PASSWORD": ADMIN_PASSWORD, **(env or {})},
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    stack = LiveStack(process, data_dir, f"http://127.0.0.1:{base}", log)
    deadline = time.monotonic() + 90
    while b"Conveyor is up" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            stack.stop()
            raise AssertionError(f"the stack did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    with Client(stack.url) as admin:
        admin.login("admin", ADMIN_PASSWORD)
        for username, (password, roles) in USERS.items():
            admin.call("POST", "/users", json={"username": username, "password": password, "roles": roles})
    return stack
