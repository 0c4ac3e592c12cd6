"""What every PostgreSQL backend (the registry's jobs, the logging service's logs, the bulk data store)
does the same way: import asyncpg lazily with a clear error, and read the ``schema`` query parameter of a
``postgresql://…?schema=NAME`` URL, which is ours; the rest of the URL goes to asyncpg."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: A schema name we put in SQL (quoted): letters, digits and ``_``, at most PostgreSQL's 63 bytes.
SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def import_asyncpg(what: str, error: type[Exception] = RuntimeError) -> Any:
    """The asyncpg module; ``error`` saying that ``what`` needs it when it is not installed."""
    try:
        import asyncpg
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise error(f"{what} needs asyncpg: pip install 'conveyor[postgres]'") from exc
    return asyncpg


def check_schema(schema: str | None, error: type[Exception] = ValueError) -> str | None:
    """``schema`` when it is a name we may put in SQL (or None); ``error`` otherwise."""
    if schema is not None and not SCHEMA_NAME.fullmatch(schema):
        raise error(f"invalid schema name {schema!r}: letters, digits and _ only")
    return schema


def split_schema(url: str) -> tuple[str, str | None]:
    """``(dsn, schema)`` of ``url``: its ``schema`` query parameter (None when absent or empty), and the URL
    without it, for asyncpg."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((value for key, value in query if key == "schema"), None) or None
    rest = urlencode([(key, value) for key, value in query if key != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def unreachable_errors(asyncpg: Any) -> tuple[type[BaseException], ...]:
    """What "the database cannot be reached right now" looks like from asyncpg: a backend answers these
    with its own "unavailable" error (503), and lets anything else surface as the bug it is."""
    return (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError,
            asyncpg.TooManyConnectionsError, asyncpg.InterfaceError)


def session_settings(schema: str | None, **settings: str) -> dict[str, str]:
    """The server settings of a pool's sessions: ``settings``, and the schema first on the search path."""
    return {**settings, **({"search_path": f'"{schema}"'} if schema else {})}


async def create_tables(conn: Any, schema: str | None, ddl: str, lock: str) -> None:
    """Create ``schema`` (when given) and run ``ddl`` in one transaction. Services of one kind starting at
    once would race on ``CREATE … IF NOT EXISTS``: they take turns on the advisory lock named ``lock``."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", lock)
        if schema:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(ddl)
