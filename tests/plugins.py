"""Installing a distribution of kinds for a test, the way an installer does: its packages and a
``<name>-<version>.dist-info`` directory (``METADATA``, ``entry_points.txt``, ``RECORD``) side by side in a
directory of their own, which the test's processes get on their ``PYTHONPATH``. ``importlib.metadata`` finds
the distribution's entry points there as it finds those of anything pip installed into site-packages;
nothing is built or downloaded, and the test's own environment stays as it was."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

#: The distribution the plugin tests install: its ``pyproject.toml`` and its package ``acme_kinds``.
ACME = Path(__file__).parent / "plugin_kinds"


def install(target: Path, source: Path = ACME) -> dict[str, str]:
    """Install the distribution at ``source`` into ``target``; the environment a process needs to see it."""
    pyproject: dict[str, Any] = tomllib.loads((source / "pyproject.toml").read_text())
    project = pyproject["project"]
    target.mkdir(parents=True, exist_ok=True)
    for package in pyproject["tool"]["setuptools"]["packages"]:
        shutil.copytree(source / package, target / package, ignore=shutil.ignore_patterns("__pycache__"))
    name = re.sub(r"[-_.]+", "_", project["name"]).lower()
    dist_info = target / f"{name}-{project['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                        f"Version: {project['version']}\nSummary: {project['description']}\n")
    (dist_info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{ep} = {value}\n" for ep, value in entries.items()) + "\n"
        for group, entries in project.get("entry-points", {}).items()))
    (dist_info / "INSTALLER").write_text("tests/plugins.py\n")
    files = sorted(p for p in target.rglob("*") if p.is_file())
    (dist_info / "RECORD").write_text("".join(f"{_record(p, target)}\n" for p in files)
                                      + f"{dist_info.name}/RECORD,,\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}


def _record(path: Path, root: Path) -> str:
    data = path.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path.relative_to(root).as_posix()},sha256={digest},{len(data)}"
