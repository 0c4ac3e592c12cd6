"""The book kinds' artifacts: an EPUB and a PDF that a reader opens, whatever the book's id."""

from __future__ import annotations

import io
import re
import zipfile
from xml.dom import minidom

import pytest
from pydantic import ValidationError

from shared.kinds import InvalidInput, is_permanent
from shared.kinds.books import ExportPayload, make_epub, make_pdf


def test_a_book_id_with_a_control_character_is_refused_and_never_made_into_an_epub() -> None:
    """A book's id is written into its EPUB's XML, which cannot carry a NUL, a line break or the other
    control characters: such an id is refused by name, and a job that holds one anyway (accepted before ids
    were checked for them) fails for good instead of ending with an EPUB no reader opens."""
    for book_id, found in (("a\x00", "U+0000"), ("two\nlines", "U+000A"), ("\x85b", "U+0085"), ("b\uffff", "U+FFFF")):
        with pytest.raises(ValidationError) as refused:
            ExportPayload.model_validate({"bookId": book_id, "type": "epub"})
        (error,) = refused.value.errors()
        assert error["loc"] == ("bookId",) and error["msg"].endswith(f"found {found}"), error
        with pytest.raises(InvalidInput) as failed:
            make_epub(book_id)
        assert is_permanent(failed.value) and found in str(failed.value)
    # Any other text is taken as sent and makes well-formed XML, escaped where it must be.
    book_id = ' <&"é日本\u2028> '
    assert ExportPayload.model_validate({"bookId": book_id, "type": "epub"}).bookId == book_id
    epub = zipfile.ZipFile(io.BytesIO(make_epub(book_id)))
    for name in ("META-INF/container.xml", "OEBPS/content.opf", "OEBPS/chapter1.xhtml"):
        document = minidom.parseString(epub.read(name))
    assert document.getElementsByTagName("h1")[0].firstChild.data == f"Book {book_id}"


def test_a_pdf_s_cross_references_point_at_its_objects_and_its_title_holds_the_id_exactly() -> None:
    """Each entry of the cross-reference table is the offset of its object, ``startxref`` that of the
    table; the page shows the id in Latin-1 (WinAnsi), and the title in ``/Info`` holds any id exactly."""
    book_id = "日本 (1) é\\"
    pdf = make_pdf(book_id)
    assert pdf.startswith(b"%PDF-1.4\n") and pdf.endswith(b"%%EOF\n")
    xref = int(re.search(rb"startxref\n(\d+)\n", pdf).group(1))
    assert pdf[xref:].startswith(b"xref\n0 7\n")
    offsets = [int(line[:10]) for line in pdf[xref:].split(b"\n")[3:9]]
    for number, offset in enumerate(offsets, start=1):
        assert pdf[offset:].startswith(b"%d 0 obj\n" % number), number
    assert b"/Root 1 0 R /Info 6 0 R" in pdf and b"/Encoding /WinAnsiEncoding" in pdf
    assert b"(Book ?? \\(1\\) \xe9\\\\) Tj" in pdf  # escaped as a PDF string; what Helvetica lacks is a ?
    title = re.search(rb"/Title <FEFF([0-9A-F]+)>", pdf).group(1)
    assert bytes.fromhex(title.decode()).decode("utf-16-be") == f"Book {book_id}"
    length = int(re.search(rb"/Length (\d+) >>\nstream\n", pdf).group(1))
    stream = pdf[pdf.index(b"stream\n") + 7:]
    assert stream[length:].startswith(b"\nendstream")
