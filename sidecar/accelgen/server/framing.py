"""Where one request ends and the next begins on a connection, from its bytes alone.

aiohttp's parser keeps a partly received request to itself, so the connection guard
(:mod:`accelgen.server.listen`) follows the framing beside it, just enough to know
whether the head of a next request has begun (:attr:`HeadFramer.pending`)::

    GET /a HTTP/1.1\\r\\n...\\r\\n\\r\\n POST /b HTTP/1.1\\r\\n...Content-Length: 9\\r\\n\\r\\n{"x": 1} GET /c HT
    └──────── head ─────────┘ └─────────────── head ──────────────────┘└ body ┘ └ pending ┘

A head ends at its blank line; its body is skipped by ``Content-Length``. A body of
another framing (``Transfer-Encoding``, an upgrade) ends the bookkeeping for the
connection (:attr:`HeadFramer.known` is then false). aiohttp refuses what is not valid
HTTP (two lengths, a length with a transfer coding, a negative one) and closes, so the
simple reading here only has to be right for the requests aiohttp accepts.
"""

from __future__ import annotations

import re

_CONTENT_LENGTH = re.compile(rb"\ncontent-length:[ \t]*(\d+)")
_OTHER_FRAMING = re.compile(rb"\n(?:transfer-encoding|upgrade):")


class HeadFramer:
    """The request boundaries of one connection; feed it every byte received, in order.

    Args:
        max_head_bytes: A head still unfinished beyond this many bytes is aiohttp's to
            refuse; the framer stops following the connection (``known`` false).
    """

    __slots__ = ("_head", "_max_head_bytes", "_skip_bytes", "known")

    def __init__(self, max_head_bytes: int = 1 << 20) -> None:
        self._head = bytearray()  # the unfinished head received so far
        self._skip_bytes = 0  # body bytes of the last complete head still to come
        self._max_head_bytes = max_head_bytes
        self.known = True

    def feed(self, data: bytes) -> None:
        """Follow ``data``, the next bytes received on the connection."""
        at = 0
        while self.known and at < len(data):
            if self._skip_bytes:
                step = min(self._skip_bytes, len(data) - at)
                self._skip_bytes -= step
                at += step
                continue
            search_from = max(0, len(self._head) - 3)  # a blank line split across two reads
            self._head += data[at:]
            end = self._head.find(b"\r\n\r\n", search_from)
            if end < 0:
                if len(self._head) > self._max_head_bytes:
                    self.known = False
                return
            head = bytes(self._head[: end + 4])
            at = len(data) - (len(self._head) - end - 4)
            self._head.clear()
            self._skip_bytes = self._body_bytes(head)

    def _body_bytes(self, head: bytes) -> int:
        lowered = head.lower()
        if _OTHER_FRAMING.search(lowered):
            self.known = False
            return 0
        match = _CONTENT_LENGTH.search(lowered)
        return int(match.group(1)) if match else 0

    @property
    def pending(self) -> bool:
        """Has a next request's head begun and not yet ended? (False once not ``known``.)

        Line breaks between requests, which HTTP lets a server ignore, are not a head.
        """
        return self.known and not self._skip_bytes and bool(self._head.lstrip(b"\r\n"))
