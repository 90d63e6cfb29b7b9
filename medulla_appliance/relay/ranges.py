"""``Range`` and ``If-Range`` (RFC 9110, section 14) for one representation of known size.

Pure functions: headers in, a decision out. One byte range is served as 206; anything a
server may ignore (another unit, bad syntax, several ranges) is served whole as 200, which
the RFC allows; a lone range that starts past the end is 416.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# 19 digits hold any file size (2**63); a longer number is not a sensible position.
_RANGE_RE = re.compile(rb"bytes[ \t]*=[ \t]*(?:([0-9]{1,19})[ \t]*-[ \t]*([0-9]{0,19})"
                       rb"|-[ \t]*([0-9]{1,19}))[ \t]*", re.I)


@dataclass(frozen=True)
class Whole:
    """Serve all ``size`` bytes with 200."""

    size: int


@dataclass(frozen=True)
class Part:
    """Serve bytes ``first``..``last`` (inclusive) of ``size`` with 206."""

    first: int
    last: int
    size: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self) -> bytes:
        return b"bytes %d-%d/%d" % (self.first, self.last, self.size)


@dataclass(frozen=True)
class Unsatisfiable:
    """Answer 416 with ``Content-Range: bytes */size``."""

    size: int

    def content_range(self) -> bytes:
        return b"bytes */%d" % self.size


def select(size: int, range_header: bytes | None, if_range: bytes | None,
           etag: bytes) -> Whole | Part | Unsatisfiable:
    """What to send of a ``size``-byte representation whose strong entity tag is ``etag``
    (quoted, as sent in ``ETag``), given the request's Range and If-Range values."""
    if range_header is None:
        return Whole(size)
    if if_range is not None and if_range.strip() != etag:
        # A different tag, a weak one or a date (we send no Last-Modified): the client's
        # copy is not this one, so it gets the whole new one.
        return Whole(size)
    match = _RANGE_RE.fullmatch(range_header)
    if match is None:
        return Whole(size)  # another unit, several ranges or bad syntax: ignored
    first, last, suffix = match.groups()
    if suffix is not None:
        length = int(suffix)
        if length == 0 or size == 0:
            return Unsatisfiable(size)
        return Part(max(0, size - length), size - 1, size)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return Whole(size)  # invalid range-spec: the header is ignored
    if start >= size:
        return Unsatisfiable(size)
    return Part(start, min(end, size - 1), size)
