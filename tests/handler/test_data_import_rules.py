"""The data import's record rules and batching, against each backend of the data store: a real SQLite file
and a real PostgreSQL schema."""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from shared.datastore import DataStore, DataStoreError
from shared.kinds import data_records
from shared.kinds.data_import import (
    BATCH_SIZE,
    RULES,
    FileFormat,
    Importer,
    Resource,
    _Position,
    csv_records,
    format_of,
    ndjson_records,
)


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DataStore]:
    url = f"sqlite:///{tmp_path}/data.db" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    async with DataStore.from_url(url) as store:
        yield store


async def run_import(store: DataStore, resource: str, text: str | bytes, fmt: FileFormat = FileFormat.NDJSON) -> tuple[Importer, list[dict[str, Any]]]:
    report = io.BytesIO()
    reader = csv_records if fmt is FileFormat.CSV else ndjson_records
    data = text.encode() if isinstance(text, str) else text
    rules = RULES[Resource(resource)]
    importer = Importer(Resource(resource), store, reader(io.BytesIO(data), _Position(), rules.keys, rules.columns),
                        report)

    async def between() -> None:
        pass

    await importer.run(between)
    return importer, [orjson.loads(line) for line in report.getvalue().splitlines()]


def ndjson(*records: dict[str, Any]) -> str:
    return "".join(orjson.dumps(r).decode() + "\n" for r in records)


USER = {"id": "u1", "email": "ada@example.com", "name": "Ada", "role": "author", "active": True}


@pytest.mark.parametrize(("changes", "reason"), [
    ({"email": "not-an-email"}, "email 'not-an-email' is not a valid address"),
    ({"email": "a@b"}, "is not a valid address"),
    ({"email": ""}, "email is required"),
    ({"role": "owner"}, "role 'owner' is not one of admin, author, reader"),
    ({"active": "maybe"}, "active must be a boolean"),
    ({"id": "", "email": ""}, "id or email is required"),
    ({"id": " ", "email": " "}, "id or email is required"),
    ({"created_at": "yesterday"}, "created_at is not an ISO 8601 date-time"),
    ({"name": "A\u0000da"}, "name contains a NUL character"),  # PostgreSQL text cannot hold one
    ({"role": " reader"}, "role ' reader' is not one of admin, author, reader"),  # not stripped into one
    # A datetime holds microseconds: a finer fraction would be cut off.
    ({"created_at": "2024-01-02T03:04:05.1234567Z"}, "created_at has more than 6 digits after the seconds"),
    ({"updated_at": "2024-01-02T03:04:05,000000001+01:00"}, "updated_at has more than 6 digits after the seconds"),
    # A moment that has none in UTC: the exports' time filters could never find it.
    ({"created_at": "0001-01-01T00:00:00+01:00"}, "created_at is no moment once in UTC"),
    ({"updated_at": "9999-12-31T23:59:59-01:00"}, "updated_at is no moment once in UTC"),
    # An offset with seconds (Python reads one) is no ISO 8601 or RFC 3339 offset: it would be exported as
    # a time no RFC 3339 reader takes, the exports' own time filters included.
    ({"created_at": "2024-01-01T00:00:00+05:30:15"}, "created_at has an offset of seconds"),
    ({"updated_at": "2024-01-01T00:00:00-00:00:00.5"}, "updated_at has an offset of seconds"),
])
async def test_a_bad_user_is_rejected_with_its_reason(store: DataStore, changes: dict[str, Any], reason: str) -> None:
    importer, errors = await run_import(store, "users", ndjson({**USER, **changes}))
    assert (importer.read, importer.imported, importer.rejected) == (1, 0, 1)
    assert errors[0]["line"] == 1 and reason in errors[0]["reason"]
    assert await store.count("users") == 0


@pytest.mark.parametrize("changes", [{}, {"role": "admin", "active": "false"}, {"role": "READER", "active": "1"},
                                     {"email": "First.Last+tag@sub.example.co.uk"},
                                     {"created_at": "2024-01-02T03:04:05Z"}])
async def test_a_good_user_is_imported(store: DataStore, changes: dict[str, Any]) -> None:
    importer, errors = await run_import(store, "users", ndjson({**USER, **changes}))
    assert (importer.imported, importer.rejected, errors) == (1, 0, [])
    row = await store.get("users", "u1")
    assert row is not None and row["email"] == changes.get("email", USER["email"])  # as sent


async def test_values_are_kept_as_sent(store: DataStore) -> None:
    """Nothing is stripped: white space around a name, a title, a body or an id is the sender's. A blank
    value is still no value where one is required."""
    importer, errors = await run_import(store, "users", ndjson(
        {**USER, "id": " u1 ", "name": "  Ada  ", "created_at": "2024-01-02T03:04:05.123456+01:00"},
        {**USER, "id": "u2", "email": "b@example.com", "name": "   "}))
    assert (importer.imported, errors) == (2, [])
    ada = await store.get("users", " u1 ")
    assert ada is not None and ada["name"] == "  Ada  " and ada["created_at"] == "2024-01-02T03:04:05.123456+01:00"
    assert (await store.get("users", "u2"))["name"] == "   "  # type: ignore[index]
    importer, errors = await run_import(store, "articles", ndjson(
        {"id": "a1", "slug": "s", "title": " Hello ", "body": "\tHi\n", "author_id": " u1 ", "status": "draft"},
        {"id": "a2", "slug": "t", "title": " \t", "author_id": " u1 ", "status": "draft"}))
    assert (importer.imported, errors) == (1, [{"line": 2, "reason": "title is required"}])
    article = await store.get("articles", "a1")
    assert article is not None and (article["title"], article["body"]) == (" Hello ", "\tHi\n")


async def test_emails_are_unique_in_the_file_and_the_store_and_upserts_go_by_id(store: DataStore) -> None:
    importer, errors = await run_import(store, "users", ndjson(
        USER, {**USER, "id": "u2"}, {**USER, "name": "Ada L."}, {**USER, "id": "u3", "email": "ADA@example.com"}))
    assert (importer.read, importer.imported, importer.rejected) == (4, 2, 2)
    assert [e["line"] for e in errors] == [2, 4]
    assert all("is already used by id 'u1'" in e["reason"] for e in errors)
    assert (await store.get("users", "u1"))["name"] == "Ada L."  # type: ignore[index]
    # Another file, the same email on another id: refused against the store.
    importer, errors = await run_import(store, "users", ndjson({**USER, "id": "u9"}))
    assert importer.rejected == 1 and "already used by id 'u1'" in errors[0]["reason"]
    assert await store.count("users") == 1


async def test_articles_rules(store: DataStore) -> None:
    await run_import(store, "users", ndjson(USER))
    good = {"id": "a1", "slug": "hello-world-2", "title": "Hello", "body": "Hi", "author_id": "u1",
            "tags": ["x", "y"], "status": "published", "published_at": "2024-05-01T10:00:00+00:00"}
    importer, errors = await run_import(store, "articles", ndjson(
        good,
        {**good, "id": "a2", "slug": "Hello_World"},
        {**good, "id": "a3", "slug": "draft-one", "status": "draft"},
        {**good, "id": "a4", "slug": "draft-two"} | {"status": "draft"},
        {**good, "id": "a5", "slug": "no-title", "title": ""},
        {**good, "id": "a6", "slug": "ghost", "author_id": "nobody"},
        {**good, "id": "a7"},
        {**good, "id": "a8", "slug": "bad-status", "status": "archived"},
        {**good, "id": "a9", "slug": "draft-ok", "status": "draft", "published_at": None},
    ))
    reasons = {e["line"]: e["reason"] for e in errors}
    assert importer.imported == 2 and importer.rejected == 7
    assert "is not kebab-case" in reasons[2]
    assert reasons[3] == reasons[4] == "a draft has no published_at"
    assert reasons[5] == "title is required"
    assert reasons[6] == "author 'nobody' does not exist"
    assert "slug 'hello-world-2' is already used by id 'a1'" in reasons[7]
    assert "status 'archived'" in reasons[8]
    assert orjson.loads((await store.get("articles", "a1"))["tags"]) == ["x", "y"]  # type: ignore[index]
    assert (await store.get("articles", "a9"))["published_at"] is None  # type: ignore[index]


ARTICLE = {"id": "a1", "slug": "tagged", "title": "Tagged", "author_id": "u1", "status": "draft"}


@pytest.mark.parametrize(("tags", "reason"), [
    (["a\u0000"], "tags contains a NUL character"),  # PostgreSQL text cannot hold one
    (["a", ""], "tags has an empty or blank tag"),
    ([" "], "tags has an empty or blank tag"),
    ("a;;b", "tags has an empty or blank tag"),  # a CSV cell's
    ("a,\u0000b", "tags contains a NUL character"),
])
async def test_a_bad_tag_rejects_its_article(store: DataStore, tags: Any, reason: str) -> None:
    await run_import(store, "users", ndjson(USER))
    importer, errors = await run_import(store, "articles", ndjson({**ARTICLE, "tags": tags}))
    assert (importer.imported, errors) == (0, [{"line": 1, "reason": reason}])


@pytest.mark.parametrize(("tags", "stored"), [
    ([" x ", "y"], [" x ", "y"]),
    ("x, y|z ", ["x", " y", "z "]),  # a CSV cell's, split at commas, semicolons and bars only
    ('[" x", "y"]', [" x", "y"]),
])
async def test_tags_are_kept_as_sent(store: DataStore, tags: Any, stored: list[str]) -> None:
    await run_import(store, "users", ndjson(USER))
    importer, errors = await run_import(store, "articles", ndjson({**ARTICLE, "tags": tags}))
    assert (importer.imported, errors) == (1, [])
    assert orjson.loads((await store.get("articles", "a1"))["tags"]) == stored  # type: ignore[index]


async def test_comments_rules(store: DataStore) -> None:
    await run_import(store, "users", ndjson(USER))
    await run_import(store, "articles", ndjson({"id": "a1", "slug": "s", "title": "T", "author_id": "u1",
                                          "status": "draft"}))
    good = {"id": "c1", "article_id": "a1", "user_id": "u1", "body": "word " * 500}
    importer, errors = await run_import(store, "comments", ndjson(
        good,
        {**good, "id": "c2", "body": "word " * 501},
        {**good, "id": "c3", "article_id": "a404"},
        {**good, "id": "c4", "user_id": "u404"},
        {**good, "id": "c5", "body": "  "},
    ))
    assert importer.imported == 1
    assert [(e["line"], e["reason"]) for e in errors] == [
        (2, "body has 501 words, at most 500"), (3, "article 'a404' does not exist"),
        (4, "user 'u404' does not exist"), (5, "body is required")]


async def test_csv_records_report_the_line_they_start_on(store: DataStore) -> None:
    text = ("id,email,name,role,active\n"
            "u1,ada@example.com,Ada,author,true\n"
            "\n"
            'u2,bob@example.com,"Bob\nSmith",reader,false\n'
            "u3,not-an-email,C,reader,true\n"
            "u4,d@example.com,D,reader\n"
            "u5,e@example.com,E,superuser,true\n")
    importer, errors = await run_import(store, "users", text, FileFormat.CSV)
    assert (importer.read, importer.imported, importer.rejected) == (5, 2, 3)
    assert [e["line"] for e in errors] == [6, 7, 8]
    assert errors[1]["reason"] == "has 4 fields, the header 5"
    assert (await store.get("users", "u2"))["name"] == "Bob\nSmith"  # type: ignore[index]
    assert (await store.get("users", "u2"))["active"] == 0  # type: ignore[index]


async def test_malformed_ndjson_lines_are_rejected_and_the_rest_imported(store: DataStore) -> None:
    text = ndjson(USER) + "{not json\n\n[1, 2]\n" + ndjson({**USER, "id": "u2", "email": "b@example.com"})
    importer, errors = await run_import(store, "users", text)
    assert (importer.read, importer.imported, importer.rejected) == (4, 2, 2)
    assert errors[0]["line"] == 2 and errors[0]["reason"].startswith("malformed JSON")
    assert errors[1] == {"line": 4, "reason": "is not a JSON object"}


@pytest.mark.parametrize(("resource", "text", "message"), [
    ("users", "name,role\nAda,reader\n", "must name an id or an email column"),
    ("articles", "title,status\nHi,draft\n", "must name an id or a slug column"),
    ("comments", "body,article_id,user_id\nHi,a1,u1\n", "must name an id column"),
])
async def test_a_csv_without_a_column_to_find_records_by_fails_the_import(
        store: DataStore, resource: str, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await run_import(store, resource, text, FileFormat.CSV)


# -- upserts by natural key: a user without an id by its email, an article by its slug ------------------

async def test_a_user_without_an_id_is_created_with_a_new_id_then_found_by_its_email(store: DataStore) -> None:
    importer, errors = await run_import(store, "users", "email,name,role\nAda@Example.com,Ada,author\n",
                                        FileFormat.CSV)
    assert (importer.imported, importer.rejected, errors) == (1, 0, [])
    [new_id] = await _ids(store)
    assert str(uuid.UUID(new_id)) == new_id  # a fresh UUID
    assert (await store.get("users", new_id))["email"] == "Ada@Example.com"  # type: ignore[index]
    # Another file, the same email (any case), no id: the same user is updated, none is created.
    importer, errors = await run_import(store, "users", ndjson({"email": "ada@example.com", "name": "Ada L.",
                                                                "role": "admin"}))
    assert (importer.imported, errors) == (1, [])
    assert await _ids(store) == [new_id]
    assert (await store.get("users", new_id))["name"] == "Ada L."  # type: ignore[index]
    assert (await store.get("users", new_id))["email"] == "ada@example.com"  # type: ignore[index]
    # A row that names that email and another id is a duplicate, as before.
    importer, errors = await run_import(store, "users", ndjson({**USER, "id": "u7"}))
    assert importer.rejected == 1 and f"is already used by id '{new_id}'" in errors[0]["reason"]


async def test_a_user_without_an_id_updates_the_user_that_has_its_email(store: DataStore) -> None:
    await run_import(store, "users", ndjson(USER))
    importer, errors = await run_import(store, "users", ndjson({"id": "", "email": USER["email"], "name": "Ada B.",
                                                                "role": "reader"}))
    assert (importer.imported, errors) == (1, [])
    assert await _ids(store) == ["u1"]
    assert (await store.get("users", "u1"))["role"] == "reader"  # type: ignore[index]


async def test_a_record_replaces_the_stored_one_whole(store: DataStore) -> None:
    """A record is the whole row (the README says so): a column it leaves out takes its default, it is not
    kept from the row before; an import of fewer columns is no patch."""
    await run_import(store, "users", ndjson({**USER, "active": False}))
    importer, errors = await run_import(store, "users", ndjson({"id": "u1", "email": USER["email"], "role": "reader"}))
    assert (importer.imported, errors) == (1, [])
    row = await store.get("users", "u1")
    assert row is not None and (row["name"], row["active"], row["role"]) == ("", 1, "reader")


async def test_the_same_email_twice_in_one_file_is_one_user(store: DataStore) -> None:
    """Without ids, the second row updates the user the first made; with the first row's id given
    later, that id is the same user; another id is a duplicate."""
    b = {"email": "bob@example.com", "role": "reader"}
    importer, errors = await run_import(store, "users", ndjson(
        {**b, "name": "one"}, {**b, "name": "two"}, USER, {"email": USER["email"], "role": "admin"},
        {**USER, "id": "u2"}))
    assert (importer.read, importer.imported, importer.rejected) == (5, 4, 1)
    assert errors == [{"line": 5, "reason": "email 'ada@example.com' is already used by id 'u1'"}]
    ids = await _ids(store)
    assert len(ids) == 2 and "u1" in ids
    [bob] = [i for i in ids if i != "u1"]
    assert (await store.get("users", bob))["name"] == "two"  # type: ignore[index]
    assert (await store.get("users", "u1"))["role"] == "admin"  # type: ignore[index]


async def test_a_new_email_then_another_id_for_it_in_one_file_is_a_duplicate(store: DataStore) -> None:
    importer, errors = await run_import(store, "users", ndjson({"email": "c@example.com", "role": "reader"},
                                                               {"id": "u3", "email": "c@example.com",
                                                                "role": "reader"}))
    assert (importer.imported, importer.rejected) == (1, 1)
    assert errors[0]["line"] == 2 and "is already used by id" in errors[0]["reason"]


async def test_natural_keys_hold_across_batches(store: DataStore) -> None:
    """The last record names, without an id, the email of the first, a batch earlier: one user."""
    rows = [{"email": f"user{i}@example.com", "role": "reader"} for i in range(BATCH_SIZE)]
    importer, errors = await run_import(store, "users", ndjson(*rows, {**rows[0], "name": "again"}))
    assert (importer.imported, errors) == (BATCH_SIZE + 1, [])
    assert await store.count("users") == BATCH_SIZE
    owners = await store.lookup("users", "email", ["user0@example.com"])
    assert (await store.get("users", owners["user0@example.com"]))["name"] == "again"  # type: ignore[index]


async def test_an_article_without_an_id_is_upserted_by_its_slug(store: DataStore) -> None:
    await run_import(store, "users", ndjson(USER))
    article = {"slug": "hello", "title": "Hello", "author_id": "u1", "status": "draft"}
    importer, errors = await run_import(store, "articles", ndjson(article, {**article, "id": "a1", "slug": "other"}))
    assert (importer.imported, errors) == (2, [])
    importer, errors = await run_import(store, "articles", ndjson({**article, "title": "Hello again"},
                                                                  {**article, "id": "a2"}))
    assert (importer.imported, importer.rejected) == (1, 1)
    assert "slug 'hello' is already used by id" in errors[0]["reason"]
    owners = await store.lookup("articles", "slug", ["hello"])
    assert (await store.get("articles", owners["hello"]))["title"] == "Hello again"  # type: ignore[index]
    assert await store.count("articles") == 2


async def test_a_comment_still_needs_its_id(store: DataStore) -> None:
    importer, errors = await run_import(store, "comments", ndjson({"body": "hi", "article_id": "a", "user_id": "u"}))
    assert importer.rejected == 1 and errors[0]["reason"] == "id is required"


HEADER = "id,email,name,role,active\n"


async def _ids(store: DataStore) -> list[str]:
    async with contextlib.aclosing(store.scan("users", ("id",))) as pages:
        return [row[0] async for page in pages for row in page]


async def test_an_unterminated_quote_costs_its_record_only(store: DataStore) -> None:
    text = (HEADER + 'u1,a@example.com,"Ada,author,true\n'
            "u2,b@example.com,Bob,reader,true\n"
            'u3,c@example.com,"Cy",reader,true\n'  # a quote that closes the one of line 2, were it lax
            'u4,d@example.com,Dee,"reader\n'  # one that runs to the end of the file
            "u5,e@example.com,Eve,reader,true\n")
    importer, errors = await run_import(store, "users", text, FileFormat.CSV)
    assert [e["line"] for e in errors] == [2, 5]
    assert all(e["reason"].startswith("malformed CSV") and "does not close" in e["reason"] for e in errors), errors
    assert (importer.read, importer.imported, importer.rejected) == (5, 3, 2)
    assert await _ids(store) == ["u2", "u3", "u5"] and (await store.get("users", "u3"))["name"] == "Cy"  # type: ignore[index]


async def test_a_quote_that_runs_past_the_field_limit_costs_its_record_only(store: DataStore) -> None:
    rows = "".join(f"u{i},user{i}@example.com,User {i},reader,true\n" for i in range(5000))  # ~200 KB
    importer, errors = await run_import(store, "users", HEADER + 'x1,x@example.com,"X,reader,true\n' + rows, FileFormat.CSV)
    assert [e["line"] for e in errors] == [2] and importer.imported == 5000 == await store.count("users")


async def test_text_after_a_closing_quote_is_an_error_for_its_record(store: DataStore) -> None:
    text = HEADER + 'u1,a@example.com,"Ada"Lovelace,author,true\nu2,b@example.com,Bob,reader,true\n'
    _, errors = await run_import(store, "users", text, FileFormat.CSV)
    assert [(e["line"], e["reason"]) for e in errors] == [(2, "malformed CSV: ',' expected after '\"'")]
    assert await _ids(store) == ["u2"]


async def test_a_bom_before_a_quoted_header_is_skipped(store: DataStore) -> None:
    text = '\ufeff"id","email","role"\r\n"u1","a@example.com","admin"\r\n'
    _, errors = await run_import(store, "users", text, FileFormat.CSV)
    assert errors == [] and await _ids(store) == ["u1"]
    _, errors = await run_import(store, "users", '\ufeff{"id": "u2", "email": "b@example.com", "role": "admin"}\n')
    assert errors == [] and await _ids(store) == ["u1", "u2"]


async def test_a_header_that_names_a_column_twice_fails_the_import(store: DataStore) -> None:
    with pytest.raises(ValueError, match="the CSV header names email more than once"):
        await run_import(store, "users", "id,email,role,email\nu1,a@example.com,admin,b@example.com\n", FileFormat.CSV)
    assert await store.count("users") == 0


USER_COLUMNS = "id, email, name, role, active, created_at, updated_at"


@pytest.mark.parametrize(("text", "unknown"), [
    ("ID,email,role,Name,nickname\nu1,a@example.com,admin,Ada,ada\n", "'ID', 'Name', 'nickname'"),
    ("\ufeff\ufeffid,email,role\nu1,a@example.com,admin\n", "'\\ufeffid'"),  # a BOM after the skipped one
])
async def test_a_header_that_names_a_column_the_resource_lacks_fails_the_import(
        store: DataStore, text: str, unknown: str) -> None:
    """Its cells would be dropped without a word (and ``ID`` is not ``id``: the user would get a new id)."""
    message = f"the CSV header names columns the resource does not have: {unknown} (its columns: {USER_COLUMNS})"
    with pytest.raises(ValueError) as refused:
        await run_import(store, "users", text, FileFormat.CSV)
    assert str(refused.value) == message
    assert await store.count("users") == 0


async def test_an_ndjson_record_with_a_key_the_resource_lacks_is_rejected(store: DataStore) -> None:
    importer, errors = await run_import(store, "users", ndjson(USER, {**USER, "id": "u2", "email": "b@example.com",
                                                                      "nickname": "b", "ID": "x"}))
    assert (importer.imported, importer.rejected) == (1, 1)
    assert errors == [{"line": 2, "reason": f"has keys the resource does not have: 'nickname', 'ID' "
                                            f"(its columns: {USER_COLUMNS})"}]


async def test_an_ndjson_record_that_gives_a_key_twice_is_rejected(store: DataStore) -> None:
    """JSON parsers keep one of the values of a key given twice (orjson the last): the other would be
    dropped without a word, as a CSV header's column named twice would (that fails the import). A key
    spelled with escapes (``"n\\u0061me"`` is ``name``) is the same key; a value that reads like a key is
    none."""
    lines = [
        '{"id":"u1","email":"a@example.com","role":"admin","name":"first","name":"second"}',
        '{"id":"u2","email":"b@example.com","role":"admin","name":"first","n\\u0061me":"second"}',
        '{"id":"u3","email":"c@example.com","role":"reader","name":"role","created_at":"2024-01-01T00:00:00Z"}',
        '{"id":"u4","email":"d@example.com","role":"reader","name":"a \\"name\\" \\u00e9"}',
        '{"id":"u5","email":"e@example.com","role":"reader","active":true,"active":false}',
    ]
    importer, errors = await run_import(store, "users", "\n".join(lines) + "\n")
    assert errors == [{"line": 1, "reason": "has the key 'name' more than once"},
                      {"line": 2, "reason": "has the key 'name' more than once"},
                      {"line": 5, "reason": "has the key 'active' more than once"}]
    assert (importer.imported, importer.rejected) == (2, 3)
    assert (await store.get("users", "u3"))["name"] == "role"
    assert (await store.get("users", "u4"))["name"] == 'a "name" \u00e9'
    assert await store.get("users", "u1") is None


async def test_cr_only_line_endings_are_lines(store: DataStore) -> None:
    text = HEADER + "u1,a@example.com,Ada,author,true\ru2,bad,Bob,reader,true\ru3,c@example.com,Cy,reader,true\r"
    _, errors = await run_import(store, "users", text.replace("\n", "\r"), FileFormat.CSV)
    assert [(e["line"], e["reason"]) for e in errors] == [(3, "email 'bad' is not a valid address")]
    assert await _ids(store) == ["u1", "u3"]


@pytest.mark.parametrize("chunk_bytes", [1, 2, 7, 1024 * 1024])  # a CR and its LF in two reads, too
@pytest.mark.parametrize("ends", [("\n", "\r", "\r\n", "\n", "\r"), ("\r", "\r", "\n", "\r\n", "\n"),
                                  ("\r\n", "\n", "\r", "\r", "\r\n")])
async def test_each_line_may_end_in_lf_crlf_or_cr(store: DataStore, monkeypatch: pytest.MonkeyPatch,
                                                   chunk_bytes: int, ends: tuple[str, ...]) -> None:
    """In one file, whatever the first lines end in; a line is counted at each end, so the report's
    lines are the file's; a quoted cell keeps the ends it holds."""
    monkeypatch.setattr(data_records, "_CHUNK_BYTES", chunk_bytes)
    lines = ["id,email,role,name", "u1,a@example.com,author,Ada", "u2,bad,reader,Bob",
             'u3,c@example.com,reader,"Cy\r\nDee"', "u4,d@example.com,reader,Dee"]
    text = "".join(line + end for line, end in zip(lines, ends, strict=True))
    importer, errors = await run_import(store, "users", text, FileFormat.CSV)
    assert errors == [{"line": 3, "reason": "email 'bad' is not a valid address"}]
    assert (importer.read, importer.imported) == (4, 3) and await _ids(store) == ["u1", "u3", "u4"]
    assert (await store.get("users", "u3"))["name"] == "Cy\r\nDee"  # type: ignore[index]


async def test_a_line_number_counts_every_line_end(store: DataStore) -> None:
    text = "id,email,role\ru1,a@example.com,author\r\n\ru2,bad,reader\nu3,c@example.com,x\r"
    _, errors = await run_import(store, "users", text, FileFormat.CSV)
    assert [e["line"] for e in errors] == [4, 5]


async def test_bytes_that_are_not_utf8_are_an_error_for_their_record(store: DataStore) -> None:
    data = (HEADER.encode() + b"u1,a@example.com,Ad\xe9,author,true\n"
            b'u2,b@example.com,"Bob\nSm\xffith",reader,true\n'
            b"u3,c@example.com,Cy\xc3\xa9,reader,true\n")
    _, errors = await run_import(store, "users", data, FileFormat.CSV)
    assert [(e["line"], e["reason"]) for e in errors] == [
        (2, "line 2 is not UTF-8 (an invalid byte at offset 19 of the line)"),
        (3, "line 4 is not UTF-8 (an invalid byte at offset 2 of the line)")]
    assert await _ids(store) == ["u3"] and (await store.get("users", "u3"))["name"] == "Cyé"  # type: ignore[index]
    with pytest.raises(ValueError, match="the CSV header cannot be read: line 1 is not UTF-8"):
        await run_import(store, "users", b"id,em\xe9il\nu1,x\n", FileFormat.CSV)


async def test_records_go_in_batches_and_only_ten_first_errors_are_kept(store: DataStore) -> None:
    n = BATCH_SIZE * 2 + 5
    lines = [{"id": f"u{i}", "email": f"user{i}@example.com", "role": "reader" if i % 100 else "nobody"}
             for i in range(n)]
    report = io.BytesIO()
    importer = Importer(Resource.USERS, store, ndjson_records(io.BytesIO(ndjson(*lines).encode()), _Position()),
                        report)
    batches = 0
    while not importer.done:
        await importer.batch()
        batches += 1
    assert batches == 3
    bad = len(range(0, n, 100))
    assert importer.rejected == bad and importer.imported == n - bad == await store.count("users")
    assert len(importer.first_errors) == 10 and len(report.getvalue().splitlines()) == bad


def test_formats_and_urls() -> None:
    assert format_of("users.CSV", None) is FileFormat.CSV
    assert format_of("x.jsonl", "text/csv") is FileFormat.NDJSON
    assert format_of("blob", "application/x-ndjson; charset=utf-8") is FileFormat.NDJSON
    assert format_of("https://h/x.csv?sig=1", None) is FileFormat.CSV
    assert format_of("x.txt", "text/plain") is None
    with pytest.raises(DataStoreError):
        DataStore.from_url("mysql://x/y")
