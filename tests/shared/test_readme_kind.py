"""The README's "Write your own kind" example is the test distribution's module, the one the plugin tests
install and run (``tests/e2e/test_plugin_kinds_e2e.py``): the two cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

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
