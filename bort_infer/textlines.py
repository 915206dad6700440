"""The line rules of a text input (one text per line), shared by `bort-infer encode` and its Ray file job.

A line ends at ``\\n`` (a ``\\r\\n`` pair is one line ending; a UTF-8 byte-order mark at the start of the input
is dropped). Every line is one text, an empty line included, and a final ``\\n`` does not start another
text: ``"a\\n\\nb\\n"`` is three texts. Nothing else splits a line (not ``\\r`` alone, ``\\x0b``, ``\\x0c``,
``\\x1c``-``\\x1e``, ``\\x85`` or U+2028, which ``str.splitlines`` would split on), so text i is always line
i + 1 of the input. Text is UTF-8, decoded strictly: an error names the line.

A leaf module: the standard library only.
"""
from __future__ import annotations

import codecs
import io
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_BOM = codecs.BOM_UTF8
_SCAN_BLOCK = 1 << 24  # bytes per read when counting lines
_READ_BLOCK = 1 << 20  # bytes per read when reading lines


def count_lines(path: str | Path) -> int:
    """Texts in a file under these line rules, checking on the way that it is valid UTF-8 (an error names
    the line), so that a bad byte stops a run before any model work."""
    with open(path, "rb") as f:
        return scan_lines(f, str(path))[0]


def scan_lines(stream: BinaryIO, source: str, cut_bytes: int | None = None,
               block_size: int = _SCAN_BLOCK) -> tuple[int, list[tuple[int, int]]]:
    """(texts in the stream, cuts), checking that it is valid UTF-8 (an error names the line).

    With ``cut_bytes``, cuts are (byte offset, line index) of line starts about ``cut_bytes`` apart, the
    first at or after byte ``cut_bytes``: they split the input into pieces of whole lines (used to spread
    one large file over many Ray tasks). A cut is never at the very end of the input."""
    rows = 0
    last = b""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    consumed = 0
    cuts: list[tuple[int, int]] = []
    next_cut = cut_bytes
    while True:
        block = stream.read(block_size)
        if not block:
            break
        pending = len(decoder.getstate()[0])  # an unfinished sequence carried over from the last block
        try:
            decoder.decode(block)
        except UnicodeDecodeError as exc:
            at = max(exc.start - pending, 0)
            line = rows + block.count(b"\n", 0, at) + 1
            raise ValueError(f"{source}: line {line} is not valid UTF-8 (byte offset {consumed + at}): "
                             f"{exc.reason}") from None
        while next_cut is not None and next_cut < consumed + len(block):
            newline = block.find(b"\n", max(next_cut - consumed, 0))
            if newline < 0:
                break  # the line holding the cut goes on in the next block
            cuts.append((consumed + newline + 1, rows + block.count(b"\n", 0, newline + 1)))
            next_cut = cuts[-1][0] + cut_bytes
        rows += block.count(b"\n")
        last = block[-1:]
        consumed += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source}: line {rows + 1} is not valid UTF-8 (truncated sequence at the end of the "
                         f"input): {exc.reason}") from None
    if cuts and cuts[-1][0] == consumed:
        cuts.pop()
    return rows + (1 if last not in (b"", b"\n") else 0), cuts


def iter_raw_lines(stream: BinaryIO, limit: int | None = None, block_size: int = _READ_BLOCK) -> Iterator[bytes]:
    """The lines of a binary stream as raw bytes, each with its line ending (the last one may have none),
    reading at most ``limit`` bytes from the stream's position. A line is yielded as soon as it is complete
    (reads take what is available: a pipe is not waited on until a block fills)."""
    read = getattr(stream, "read1", None) or stream.read
    left = limit
    rest = b""
    while left is None or left > 0:
        block = read(block_size if left is None else min(block_size, left))
        if not block:
            break
        if left is not None:
            left -= len(block)
        buffer = rest + block if rest else block
        start = 0
        while True:
            newline = buffer.find(b"\n", start)
            if newline < 0:
                break
            yield buffer[start:newline + 1]
            start = newline + 1
        rest = buffer[start:]
    if rest:
        yield rest


def decode_line(raw: bytes, line_number: int, source: str, first: bool = False) -> str:
    """One raw line -> its text: line ending (``\\n`` or ``\\r\\n``) removed, UTF-8 decoded strictly. ``first``:
    the input's first line, whose byte-order mark is dropped."""
    if raw.endswith(b"\n"):
        raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
    if first and raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source}: line {line_number} is not valid UTF-8: {exc.reason}") from None


def iter_texts(stream: BinaryIO, source: str, first_line: int = 0, limit: int | None = None) -> Iterator[str]:
    """The texts of a stream read from the start of line ``first_line`` (0-based), at most ``limit`` bytes."""
    for i, raw in enumerate(iter_raw_lines(stream, limit)):
        line = first_line + i
        yield decode_line(raw, line + 1, source, first=(line == 0))


def split_lines(data: bytes, source: str = "input") -> list[str]:
    """All texts of an in-memory input."""
    return list(iter_texts(io.BytesIO(data), source))
