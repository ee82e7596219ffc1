"""The connection guard's view of request boundaries (:class:`accelgen.server.framing.HeadFramer`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from accelgen.server.framing import HeadFramer

GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\n{"prompt":"hi"}'
PARTIAL = b"GET /healthz HTTP/1.1\r\nHo"


def _fed(*chunks: bytes) -> HeadFramer:
    framer = HeadFramer()
    for chunk in chunks:
        framer.feed(chunk)
    return framer


@pytest.mark.parametrize(
    ("chunks", "pending"),
    [
        ((), False),
        ((GET,), False),
        ((POST,), False),
        ((GET + PARTIAL,), True),  # the stalled head behind a request, in one read
        ((POST + PARTIAL,), True),
        ((POST[:-5], POST[-5:] + PARTIAL), True),
        ((POST[:-5],), False),  # a body still arriving is no head
        ((GET, b"\r\n"), False),  # line breaks between requests are ignored, as by aiohttp
        ((GET + b"\r\n" + GET,), False),
        ((b"G",), True),
        ((GET + GET + PARTIAL,), True),
        ((b"POST / HTTP/1.1\r\nContent-length:   3\r\n\r\nabc" + PARTIAL,), True),
    ],
)
def test_pending_head(chunks: tuple[bytes, ...], pending: bool) -> None:
    framer = _fed(*chunks)
    assert framer.known and framer.pending is pending


def test_other_framings_end_the_bookkeeping() -> None:
    chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    framer = _fed(chunked + PARTIAL)
    assert not framer.known and not framer.pending
    assert _fed(b"GET / HTTP/1.1\r\nUpgrade-Insecure-Requests: 1\r\n\r\n" + PARTIAL).known


def test_an_endless_head_ends_the_bookkeeping() -> None:
    framer = HeadFramer(max_head_bytes=1000)
    framer.feed(b"GET / HTTP/1.1\r\nX: " + b"a" * 2000)
    assert not framer.known and not framer.pending


@given(st.lists(st.sampled_from([GET, POST]), min_size=1, max_size=6), st.data())
def test_any_split_of_whole_requests_leaves_nothing_pending(requests: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(requests) + PARTIAL
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    framer = _fed(*(stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)))
    assert framer.pending
    framer.feed(b"st: x\r\n\r\n")
    assert framer.known and not framer.pending
