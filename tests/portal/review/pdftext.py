"""Enough of a PDF reader to test our reports: the file's structure and its text.

reportlab writes each line of text as a string operand of Tj/TJ inside Flate-compressed
content streams; this inflates the streams and collects those strings.
"""

from __future__ import annotations

import base64
import re
import zlib

# An object's dictionary (no nested dictionaries in reportlab's stream headers) then
# "stream"; the body is sliced by /Length, so image bytes are never scanned.
_STREAM_HEAD = re.compile(rb"\d+ 0 obj\s*<<((?:[^<>]|<(?!<)|>(?!>))*)>>\s*stream\r?\n")
_LENGTH = re.compile(rb"/Length (\d+)")
_STRING = re.compile(rb"\(((?:[^()\\]|\\.)*)\)\s*Tj|\[([^\]]*)\]\s*TJ", re.DOTALL)
_TJ_PART = re.compile(rb"\(((?:[^()\\]|\\.)*)\)", re.DOTALL)


def _streams(content: bytes) -> list[tuple[bytes, bytes]]:
    """(header, decoded body) of each stream that is not an image."""
    found = []
    for match in _STREAM_HEAD.finditer(content):
        header = match.group(1)
        length = _LENGTH.search(header)
        if length is None or b"/Subtype /Image" in header:
            continue
        body = content[match.end() : match.end() + int(length.group(1))]
        if b"/ASCII85Decode" in header:
            body = base64.a85decode(body.strip(), adobe=True)
        if b"/FlateDecode" in header:
            try:
                body = zlib.decompress(body)
            except zlib.error:
                continue
        found.append((header, body))
    return found


def _unescape(raw: bytes) -> str:
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == 0x5C and i + 1 < len(raw):  # backslash
            nxt = raw[i + 1 : i + 2]
            if nxt.isdigit():
                octal = re.match(rb"[0-7]{1,3}", raw[i + 1 : i + 4]).group()
                out.append(int(octal, 8))
                i += 1 + len(octal)
                continue
            out += {b"n": b"\n", b"r": b"\r", b"t": b"\t"}.get(nxt, nxt)
            i += 2
            continue
        out.append(c)
        i += 1
    return out.decode("latin-1")


def pdf_text(content: bytes) -> str:
    assert content.startswith(b"%PDF-"), "not a PDF"
    assert content.rstrip().endswith(b"%%EOF"), "PDF is truncated"
    assert b"xref" in content and b"/Root" in content
    texts = []
    for _header, body in _streams(content):
        for single, array in _STRING.findall(body):
            if array:
                texts.append("".join(_unescape(p) for p in _TJ_PART.findall(array)))
            else:
                texts.append(_unescape(single))
    return re.sub(r"\s+", " ", " ".join(texts))


def page_count(content: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page[^s]", content))


def image_draws(content: bytes) -> int:
    """How many times an image is painted (identical images share one object)."""
    return sum(
        len(re.findall(rb"/[^\s/]+ Do\b", body)) for _header, body in _streams(content)
    )
