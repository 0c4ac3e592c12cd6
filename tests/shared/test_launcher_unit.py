"""The launcher's pieces that need no running stack."""

from __future__ import annotations

from pathlib import Path

from shared.launcher import Options, new_password, plan, service_ports


def test_a_made_password_can_be_given_on_a_command_line() -> None:
    # One in 64 random tokens starts with "-", which argparse would take for an option (--password -x…).
    passwords = [new_password() for _ in range(2000)]
    assert not [p for p in passwords if p.startswith("-")]
    assert len(set(passwords)) == 2000 and all(len(p) == 16 for p in passwords)


def test_the_ports_checked_are_the_ports_planned(tmp_path: Path) -> None:
    opts = Options(receptionists=3, handlers=2, data_dir=tmp_path, port_base=41000)
    assert {name: port for name, _, port in service_ports(opts)} == {svc.name: svc.port for svc in plan(opts)}
