"""Plain-text tables for the ``conveyor`` commands."""

from __future__ import annotations


def table(rows: list[tuple[str, ...]]) -> str:
    """The first row is the header, underlined; columns are as wide as their widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])
