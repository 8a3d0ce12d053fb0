"""A customer file as PostgreSQL's COPY will read it: readable, its encoding (a byte-order
mark wins), its delimiter and header checked up front with one line saying what is wrong,
then its bytes in blocks, re-encoded as UTF-8 where PostgreSQL cannot decode them itself."""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from pathlib import Path

from segmentation.errors import IngestError

BLOCK = 1 << 20
SNIFF_BYTES = 1 << 16
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
# Python codec name -> PostgreSQL's: COPY decodes these itself; any other codec Python knows
# is decoded here and streamed to COPY as UTF-8.
PG_ENCODINGS = {"utf-8": "UTF8", "utf-8-sig": "UTF8", "iso8859-1": "LATIN1",
                "cp1252": "WIN1252", "iso8859-15": "LATIN9"}
# A byte-order mark names the encoding whatever --encoding says (longest first: UTF-32 LE
# starts like UTF-16 LE).
BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"))


def check_csv_options(delimiter: str, encoding: str) -> str:
    """The codec's canonical name, or one line saying what is wrong with the options."""
    if len(delimiter) != 1 or delimiter in "\r\n\"":
        raise IngestError(f"--delimiter must be a single character other than a quote or a "
                          f"line break, got {delimiter!r}")
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise IngestError(f"unknown encoding {encoding!r}: use a name Python's codecs know "
                          "(utf-8, utf-16, latin1, cp1252, ...)") from None


def detect_encoding(head: bytes, encoding: str) -> str:
    """The file's codec: the one its byte-order mark names, else the one given."""
    for bom, name in BOMS:
        if head.startswith(bom):
            return name
    return check_csv_options(",", encoding)


def read_head(path: Path) -> bytes:
    """The first bytes of a file, or one line saying why it cannot be read."""
    if not path.exists():
        raise IngestError(f"{path}: no such file")
    if path.is_dir():
        raise IngestError(f"{path}: is a directory, expected a CSV file")
    try:
        with path.open("rb") as fh:
            return fh.read(SNIFF_BYTES)
    except OSError as exc:
        raise IngestError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def read_csv_header(path: Path, delimiter: str = ",", encoding: str = "utf-8"
                    ) -> tuple[list[str], str]:
    """Check that `path` is a readable CSV; return its header (as written) and codec."""
    check_csv_options(delimiter, encoding)
    head = read_head(path)
    if not head.strip():
        raise IngestError(f"{path}: the file is empty (no header, no rows)")
    encoding = detect_encoding(head, encoding)
    if b"\x00" in head and not encoding.startswith(("utf-16", "utf-32")):
        raise IngestError(f"{path}: not a CSV file (binary content: NUL bytes); if it is "
                          "UTF-16 without a byte-order mark, pass --encoding utf-16")
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        text = decoder.decode(head, final=False)
    except UnicodeDecodeError as exc:
        raise IngestError(
            f"{path}: not valid {encoding} (byte 0x{head[exc.start]:02x} at offset {exc.start}); "
            "pass --encoding latin1 (or cp1252) if that is how the file was saved"
        ) from None
    text = text.lstrip("\ufeff")
    first_line = text.splitlines()[0] if text.splitlines() else ""
    header = next(csv.reader([first_line], delimiter=delimiter), [])
    if len(header) <= 1:
        for other, label in DELIMITERS.items():
            if other != delimiter and other in first_line:
                raise IngestError(
                    f"{path}: the header has one column but contains '{other}': the file looks "
                    f"{label}-separated; pass --delimiter {other!r}"
                )
        raise IngestError(f"{path}: not a CSV file with the customer columns (header: "
                          f"{first_line[:80]!r})")
    return header, encoding


def file_blocks(path: Path, encoding: str) -> Iterator[bytes]:
    """The file in 1 MiB blocks: as stored when PostgreSQL decodes the encoding itself,
    else decoded here and re-encoded as UTF-8."""
    with path.open("rb") as fh:
        if encoding in PG_ENCODINGS:
            while block := fh.read(BLOCK):
                yield block
            return
        decoder = codecs.getincrementaldecoder(encoding)()
        offset = 0
        while True:
            block = fh.read(BLOCK)
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                raise IngestError(f"{path}: not valid {encoding} (at byte offset "
                                  f"{offset + exc.start})") from None
            offset += len(block)
            if text:  # the UTF-16/32 codecs consume the byte-order mark themselves
                yield text.encode("utf-8")
            if not block:
                return


def split_points(path: Path, parts: int, quote: bytes = b'"') -> list[int]:
    """Byte offsets cutting the file into about `parts` slices, each starting a record: at a
    line start with an even number of quotes before it (a line break inside a quoted field
    is not a record's end). Returns [0, cut, ..., size]; fewer slices for a small file."""
    size = path.stat().st_size
    targets = [size * i // parts for i in range(1, parts)]
    cuts, quotes, offset = [0], 0, 0
    with path.open("rb") as fh:
        while targets and (block := fh.read(BLOCK)):
            position = block.find(b"\n", max(0, targets[0] - offset))
            while targets and position != -1:
                if offset + position >= targets[0] and \
                        (quotes + block.count(quote, 0, position)) % 2 == 0:
                    cut = offset + position + 1
                    if cut < size and cut > cuts[-1]:
                        cuts.append(cut)
                    targets.pop(0)
                    continue
                position = block.find(b"\n", position + 1)
            quotes += block.count(quote)
            offset += len(block)
    return [*cuts, size]


def file_slice(path: Path, start: int, end: int) -> Iterator[bytes]:
    """The bytes [start, end) of a file in blocks."""
    with path.open("rb") as fh:
        fh.seek(start)
        left = end - start
        while left > 0 and (block := fh.read(min(BLOCK, left))):
            left -= len(block)
            yield block
