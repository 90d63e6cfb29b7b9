"""Range and If-Range decisions (RFC 9110 section 14) for the relay's downloads."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medulla_appliance.relay.ranges import Part, Unsatisfiable, Whole, select

ETAG = b'"abc"'


def pick(size, header, if_range=None):
    return select(size, header, if_range, ETAG)


@pytest.mark.parametrize("header, expected", [
    (b"bytes=0-0", Part(0, 0, 100)),               # first byte
    (b"bytes=99-99", Part(99, 99, 100)),           # last byte
    (b"bytes=99-", Part(99, 99, 100)),
    (b"bytes=-1", Part(99, 99, 100)),              # suffix: last byte
    (b"bytes=10-19", Part(10, 19, 100)),
    (b"bytes=50-", Part(50, 99, 100)),
    (b"bytes=0-", Part(0, 99, 100)),
    (b"bytes=90-500", Part(90, 99, 100)),          # end past the end: clipped
    (b"bytes=-500", Part(0, 99, 100)),             # suffix larger than the file: all of it
    (b"BYTES = 1 - 2 ", Part(1, 2, 100)),          # unit is case-insensitive, spaces allowed
    (b"bytes=100-", Unsatisfiable(100)),           # starts at the end
    (b"bytes=100-200", Unsatisfiable(100)),        # beyond the end
    (b"bytes=-0", Unsatisfiable(100)),             # an empty suffix
    (b"bytes=0-1,5-6", Whole(100)),                # several ranges: served whole
    (b"bytes=5-1", Whole(100)),                    # last < first: the header is ignored
    (b"items=0-1", Whole(100)),                    # another unit
    (b"bytes=", Whole(100)), (b"bytes=a-b", Whole(100)), (b"bytes=-", Whole(100)),
    (b"bytes=1" + b"0" * 25 + b"-", Whole(100)),   # absurd position: ignored
    (None, Whole(100)),
])
def test_range_header(header, expected):
    assert pick(100, header) == expected


def test_an_empty_file_has_no_satisfiable_range():
    assert pick(0, b"bytes=0-") == Unsatisfiable(0)
    assert pick(0, b"bytes=-5") == Unsatisfiable(0)
    assert pick(0, None) == Whole(0)


def test_if_range_with_the_current_etag_honours_the_range():
    assert pick(100, b"bytes=10-", ETAG) == Part(10, 99, 100)


@pytest.mark.parametrize("if_range", [b'"other"', b'W/"abc"', b"Wed, 21 Oct 2015 07:28:00 GMT"])
def test_if_range_that_does_not_match_sends_the_whole_file(if_range):
    assert pick(100, b"bytes=10-", if_range) == Whole(100)


def test_content_range_values():
    assert Part(0, 0, 100).content_range() == b"bytes 0-0/100"
    assert Part(0, 0, 100).length == 1
    assert Unsatisfiable(7).content_range() == b"bytes */7"


@given(st.integers(min_value=0, max_value=2**40), st.binary(max_size=60))
def test_any_header_gives_a_decision_within_the_file(size, header):
    choice = pick(size, header)
    if isinstance(choice, Part):
        assert 0 <= choice.first <= choice.last < size
    assert isinstance(choice, (Part, Whole, Unsatisfiable))


@given(st.integers(min_value=1, max_value=10**9), st.integers(min_value=0, max_value=10**10),
       st.integers(min_value=0, max_value=10**10))
def test_first_last_ranges_match_the_rfc(size, first, last):
    choice = pick(size, b"bytes=%d-%d" % (first, last))
    if last < first:
        assert choice == Whole(size)
    elif first >= size:
        assert choice == Unsatisfiable(size)
    else:
        assert choice == Part(first, min(last, size - 1), size)
