"""The local store's small artifacts: rows of one SQLite file, written by several processes, committed in
groups, never a file per job; large ones stay files (the contract suite covers what both backends share)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from shared.artifacts import LocalArtifactStore
from shared.artifacts.small import SMALL_BYTES

ROOT = Path(__file__).resolve().parents[2]


def files_under(root: Path) -> list[str]:
    """The artifact files there are, leaving out the small artifacts' database."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and not p.name.startswith(".small.db"))


async def test_a_small_result_is_a_row_and_a_large_one_a_file(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    small, large = b"%PDF-1.4 a book", os.urandom(SMALL_BYTES + 1)
    assert await store.write("export/0a/0a-1-book.pdf", small) == len(small)
    assert await store.write("export/0b/0b-1-book.pdf", large) == len(large)
    assert files_under(tmp_path) == ["export/0b/0b-1-book.pdf"]
    assert store.local_path("export/0a/0a-1-book.pdf") is None  # no file: downloads stream the row
    assert store.local_path("export/0b/0b-1-book.pdf") == tmp_path / "export/0b/0b-1-book.pdf"
    assert await store.read("export/0a/0a-1-book.pdf") == small
    assert b"".join([c async for c in store.stream("export/0a/0a-1-book.pdf", 2, 7, chunk_bytes=2)]) == small[2:7]
    info = await store.stat("export/0a/0a-1-book.pdf")
    assert info is not None and info.size == len(small) and abs(info.modified - time.time()) < 60
    async with store.local_file("export/0a/0a-1-book.pdf") as path:  # a temporary copy, for code that reads files
        assert path.read_bytes() == small
    assert not path.exists()
    await store.close()


async def test_the_writes_of_one_moment_are_one_commit(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    keys = [f"export/{i:02x}/{i:02x}-1-book.pdf" for i in range(50)]
    await asyncio.gather(*(store.write(key, key.encode()) for key in keys))
    assert (store.small.commits, store.small.rows_written) == (1, 50)
    await store.write("task/00/00-1-result.json", b"{}")
    assert store.small.commits == 2
    assert [await store.read(key) for key in keys] == [key.encode() for key in keys]
    await store.close()


async def test_a_key_is_a_row_or_a_file_never_both(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    key, large = "data_import/1c/1c-0-upload.csv", os.urandom(SMALL_BYTES * 2)
    await store.write(key, b"small first")
    await store.write(key, large)  # replaced by a file: the row goes
    assert await store.read(key) == large and store.small.stat(key) is None
    await store.write(key, b"small again")  # and back: the file goes
    assert await store.read(key) == b"small again" and files_under(tmp_path) == []
    await store.delete([key])
    assert not await store.exists(key)
    await store.close()


async def test_expiry_sees_rows_and_files_and_removes_both(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    await store.write("export/aa/aa-1-a.pdf", b"a")
    await store.write("export/bb/bb-1-b.pdf", os.urandom(SMALL_BYTES + 10))
    old = sorted([info.key async for info in store.list_older(time.time() + 60)])
    assert old == ["export/aa/aa-1-a.pdf", "export/bb/bb-1-b.pdf"]
    assert [info async for info in store.list_older(time.time() - 60)] == []
    await store.delete(old)
    assert [info async for info in store.list_older(time.time() + 60)] == [] and files_under(tmp_path) == []
    await store.close()


WRITER = """
import asyncio, sys
from shared.artifacts import LocalArtifactStore

async def main():
    store = LocalArtifactStore(sys.argv[1])
    for batch in range(20):
        await asyncio.gather(*(store.write(f"task/{i:02x}/other-{batch}-{i}", b"from the other process")
                               for i in range(10)))
    await store.close()

asyncio.run(main())
"""


async def test_two_processes_write_one_store_and_each_reads_the_other(tmp_path: Path) -> None:
    """A handler and a receptionist (or two handlers) are processes sharing the directory."""
    other = await asyncio.create_subprocess_exec(sys.executable, "-c", WRITER, str(tmp_path), cwd=ROOT,
                                                 stderr=subprocess.PIPE)
    store = LocalArtifactStore(tmp_path)
    deadline = time.monotonic() + 30
    while store.small.stat("task/00/other-0-0") is None:  # the other one is writing: write at the same time
        assert time.monotonic() < deadline, "the other process wrote nothing"
        await asyncio.sleep(0.01)
    for batch in range(20):
        await asyncio.gather(*(store.write(f"task/{i:02x}/this-{batch}-{i}", b"from this process")
                               for i in range(10)))
    _, stderr = await asyncio.wait_for(other.communicate(), 60)
    assert other.returncode == 0, stderr.decode()
    assert await store.read("task/03/other-19-3") == b"from the other process"
    assert len([info async for info in store.list_older(time.time() + 60)]) == 400
    await store.close()
