"""Book exports and imports, the seed system's two kinds.

``POST /exports {bookId, type: epub|pdf}`` converts a book; ``POST /imports {bookId, type, url}`` imports
one from a document at a URL. The work is simulated (epub 10 s, pdf 25 s, any import 60 s, times the
handler's time scale) and ends in a real, small artifact: a valid EPUB or PDF standing for the converted
book, or a JSON report of the import.
"""

from __future__ import annotations

import io
import re
import zipfile
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, AnyUrl, BaseModel, Field, StrictStr, field_validator

from shared.contract import STRICT, JobKind, NotBlank, RetryPolicy
from shared.kinds.base import InvalidInput, JobContext
from shared.kinds.registry import kind

EXPORT_SECONDS = {"epub": 10.0, "pdf": 25.0}
IMPORT_SECONDS = 60.0
PROGRESS_STEPS = 10

#: What a book's id may not hold: the C0 and C1 control characters (line breaks among them), U+FFFE and
#: U+FFFF. The id is written into the book's files, and XML 1.0 (an EPUB's) cannot carry most of them at
#: all, not even escaped: taken, such an id made an EPUB no reader opens.
_CONTROL = "\\x00-\\x1f\\x7f-\\x9f\\ufffe\\uffff"
_CONTROL_CHAR = re.compile(f"[{_CONTROL}]")
#: Both rules of an id as the OpenAPI document says them (one pattern, which a fuzzer can generate from):
#: something besides white space (:data:`~shared.contract.NotBlank`'s blanks) and no control character.
BOOK_ID_PATTERN = (f"^[^{_CONTROL}]*"
                   f"[^{_CONTROL}\\x20\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
                   f"[^{_CONTROL}]*$")


def control_character(text: str) -> str | None:
    """The first character of ``text`` a book's id may not hold, as ``U+XXXX``; None when there is none."""
    found = _CONTROL_CHAR.search(text)
    return None if found is None else f"U+{ord(found.group()):04X}"


def _no_control(value: str) -> str:
    if (found := control_character(value)) is not None:
        raise ValueError(f"must not contain control characters (U+0000 to U+001F, U+007F to U+009F) "
                         f"nor U+FFFE or U+FFFF; found {found}")
    return value


BookId = Annotated[StrictStr, NotBlank, AfterValidator(_no_control)]


class _Payload(BaseModel):
    model_config = STRICT

    bookId: BookId = Field(min_length=1, max_length=200, description="The book's id")


class ExportPayload(_Payload):
    """``POST /exports``"""

    type: Literal["epub", "pdf"]


class ImportPayload(_Payload):
    """``POST /imports``"""

    type: Literal["word", "pdf", "wattpad", "evernote"]
    url: StrictStr = Field(max_length=2048, description="Where the document to import is (http or https)")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            parsed = AnyUrl(value)
        except ValueError:
            raise ValueError("must be an http or https URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("must be an http or https URL")
        return value


async def simulate(ctx: JobContext, seconds: float, steps: int = PROGRESS_STEPS) -> None:
    """``seconds`` of simulated work in ``steps``, reporting progress after each."""
    if ctx.scaled(seconds) <= 0:
        return
    for step in range(1, steps + 1):
        await ctx.sleep(seconds / steps)
        await ctx.progress(step / steps)


def make_epub(book_id: str) -> bytes:
    """A minimal valid EPUB 3 (the mimetype entry first and stored, as the format requires). An id its XML
    cannot carry (a job accepted before ids were checked for it) fails the job for good."""
    if (found := control_character(book_id)) is not None:
        raise InvalidInput(f"the bookId holds {found}, which an EPUB's XML cannot carry")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo("mimetype"), "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        zf.writestr("META-INF/container.xml",
                    '<?xml version="1.0"?><container version="1.0" '
                    'xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles>'
                    '<rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>'
                    "</rootfiles></container>")
        zf.writestr("OEBPS/content.opf",
                    '<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="3.0" '
                    'unique-identifier="id"><metadata xmlns:dc="http://purl.org/dc/elements/1.1/">'
                    f'<dc:identifier id="id">{_xml(book_id)}</dc:identifier><dc:title>Book {_xml(book_id)}'
                    '</dc:title><dc:language>en</dc:language></metadata><manifest>'
                    '<item id="c1" href="chapter1.xhtml" media-type="application/xhtml+xml"/></manifest>'
                    '<spine><itemref idref="c1"/></spine></package>')
        zf.writestr("OEBPS/chapter1.xhtml",
                    '<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><head><title>'
                    f"Book {_xml(book_id)}</title></head><body><h1>Book {_xml(book_id)}</h1>"
                    "<p>Converted by Conveyor.</p></body></html>")
    return buf.getvalue()


def make_pdf(book_id: str) -> bytes:
    """A minimal valid one-page PDF, with a correct cross-reference table. The page shows the id in
    Helvetica, which has Latin-1's characters only (any other shows as ``?``); the document's title (its
    ``/Info``) holds the id exactly."""
    text = f"Book {book_id}".replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    stream = f"BT /F1 24 Tf 72 720 Td ({text}) Tj ET".encode("latin-1", "replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        # WinAnsi: the bytes 0xA0 to 0xFF are Latin-1's letters (the font's own encoding has others there).
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        # A text string in UTF-16BE after its byte order mark, written in hex: any id, exactly.
        b"<< /Title <FEFF%s> >>" % f"Book {book_id}".encode("utf-16-be").hex().upper().encode(),
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n"
              % (len(objects) + 1, len(objects), xref))
    return out.getvalue()


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


@kind(JobKind.EXPORT, payload=ExportPayload, timeout_s=300.0, timeout_scaled=True,
      retries=RetryPolicy(max_attempts=3, backoff_base_s=1.0, backoff_cap_s=60.0))
async def run_export(ctx: JobContext) -> dict[str, Any]:
    payload = ctx.job.payload
    book_type = payload["type"]
    ctx.log("export started", book_id=payload["bookId"], type=book_type)
    await simulate(ctx, EXPORT_SECONDS[book_type])
    if book_type == "epub":
        return await ctx.write_artifact(f"{payload['bookId']}.epub", make_epub(payload["bookId"]),
                                        "application/epub+zip")
    return await ctx.write_artifact(f"{payload['bookId']}.pdf", make_pdf(payload["bookId"]), "application/pdf")


@kind(JobKind.IMPORT, payload=ImportPayload, timeout_s=600.0, timeout_scaled=True, fetch_urls=("url",),
      retries=RetryPolicy(max_attempts=3, backoff_base_s=1.0, backoff_cap_s=60.0))
async def run_import(ctx: JobContext) -> dict[str, Any]:
    payload = ctx.job.payload
    ctx.log("import started", book_id=payload["bookId"], type=payload["type"])
    await simulate(ctx, IMPORT_SECONDS)
    report = {
        "bookId": payload["bookId"],
        "type": payload["type"],
        "source": payload["url"],
        "imported_at": datetime.now(timezone.utc).isoformat(),
    }
    return await ctx.write_artifact("import.json", orjson.dumps(report), "application/json")

