"""The README's "Write your own kind" example is the test distribution's module, the one the plugin tests
install and run (``tests/e2e/test_plugin_kinds_e2e.py``): the two cannot drift apart. Its class form is a
kind too."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from shared.kinds import KindRegistry
from tests.plugins import ACME

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_example_is_the_kind_the_tests_run() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Write your own kind\n", 1)[1].split("\n## ", 1)[0]
    example = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert example is not None, "no Python example in the section"
    assert "tests/plugin_kinds/acme_kinds/__init__.py" in section[:example.start()]
    assert example.group(1) == (ACME / "acme_kinds" / "__init__.py").read_text()
    entry_point = re.search(r"```toml\n(.*?)```", section, re.DOTALL)
    assert entry_point is not None and entry_point.group(1) in (ACME / "pyproject.toml").read_text()


async def test_the_readme_class_example_is_a_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The section's class form (``class ...(Kind)``) loads as a module of ``CONVEYOR_KINDS`` would, and runs."""
    section = (ROOT / "README.md").read_text().split("\n## Write your own kind\n", 1)[1].split("\n## ", 1)[0]
    example = next(block for block in re.findall(r"```python\n(.*?)```", section, re.DOTALL) if "(Kind):" in block)
    name = f"readme_kind_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(example)
    monkeypatch.syspath_prepend(str(tmp_path))
    kinds = KindRegistry()
    kinds.load([name])
    spec = kinds["acme.wordcount"]
    assert (spec.retry.max_attempts, spec.timeout_s, spec.queue) == (2, 60, "acme.wordcount")
    progress: list[float] = []

    async def report(fraction: float) -> None:
        progress.append(fraction)

    ctx = SimpleNamespace(job=SimpleNamespace(payload={"text": "one API for every kind"}), progress=report)
    assert await spec.run(ctx) == {"words": 5} and progress == [1.0]  # type: ignore[arg-type]
