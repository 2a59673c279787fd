"""How a fetch's bytes come off the wire: every socket operation held to the fetch's deadline, and
compressed bodies inflated a bounded piece at a time.

httpx's timeouts are per operation (a read timeout restarts with every byte), and its decoders
inflate a whole network chunk at once (64 KiB of a gzip bomb is 64 MB): neither holds against a
hostile server, so the refresh uses httpcore's network backend API for the first and zlib for the
second. It uses the openai SDK's own fork of both (``httpx2``, ``httpcore2``, the same API): a worker
loads one HTTP stack, and no step imports one on its thread while another step's SDK call looks
for it (an import half done on one thread is a module without its names on another).
"""

from __future__ import annotations

import itertools
import ssl
import time
import typing
import zlib
from collections.abc import Iterable, Iterator

import httpcore2
import httpx2

#: The encodings the refresh asks for, and the only ones it reads (no brotli or zstd: their
#: decoders in httpx inflate without a bound, like its gzip one).
ACCEPT_ENCODING = "gzip, deflate"
#: The most a body grows by in one step of inflating: what a fetch may hold beyond its size cap.
PIECE_BYTES = 65_536
_GZIP_WBITS = zlib.MAX_WBITS | 16
_WBITS = {"gzip": _GZIP_WBITS, "x-gzip": _GZIP_WBITS, "deflate": zlib.MAX_WBITS}


class _Deadline:
    """The end of a whole fetch, and each operation's timeout shortened to fit before it."""

    def __init__(self, at: float) -> None:
        self.at = at

    def timeout(self, timeout: float | None, error: type[httpcore2.TimeoutException]) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise error("the fetch's deadline has passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore2.NetworkStream):
    """A connection whose reads, writes and TLS handshake each end by the deadline."""

    def __init__(self, stream: httpcore2.NetworkStream, deadline: _Deadline) -> None:
        self._stream, self._deadline = stream, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Read at most ``max_bytes``, waiting no longer than the deadline allows."""
        return self._stream.read(max_bytes, self._deadline.timeout(timeout, httpcore2.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Write ``buffer``, waiting no longer than the deadline allows."""
        self._stream.write(buffer, self._deadline.timeout(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        """Close the connection."""
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore2.NetworkStream:
        """The TLS handshake, ending by the deadline; the TLS stream keeps to it too."""
        stream = self._stream.start_tls(ssl_context, server_hostname,
                                        self._deadline.timeout(timeout, httpcore2.ConnectTimeout))
        return _DeadlineStream(stream, self._deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        """What the underlying connection says (its socket, addresses, TLS object)."""
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore2.NetworkBackend):
    """httpcore's own sockets, each connection and every operation on it ending by the deadline."""

    def __init__(self, deadline: _Deadline) -> None:
        self._backend, self._deadline = httpcore2.SyncBackend(), deadline

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: typing.Iterable[httpcore2.SOCKET_OPTION] | None = None) -> httpcore2.NetworkStream:
        """Connect, waiting no longer than the deadline allows."""
        stream = self._backend.connect_tcp(host, port, self._deadline.timeout(timeout, httpcore2.ConnectTimeout),
                                           local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        """Sleep (httpcore's connection retries; the refresh makes none)."""
        self._backend.sleep(seconds)


def deadline_client(*, deadline: float, timeout: httpx2.Timeout, verify: ssl.SSLContext) -> httpx2.Client:
    """An httpx client (no redirects followed, no proxy from the environment) whose connections end every
    operation by ``deadline`` (``time.monotonic()``): past it, a read, write or connect raises an httpx
    timeout, however the server spaces its bytes."""
    transport = httpx2.HTTPTransport(verify=verify, trust_env=False)
    # httpx takes no network backend (encode/httpx#3749 proposes one); its transport keeps its pool here.
    # Checked, so that an httpx that moved it fails loudly instead of fetching without the deadline.
    if not isinstance(getattr(transport, "_pool", None), httpcore2.ConnectionPool):
        raise RuntimeError("httpx2.HTTPTransport no longer keeps an httpcore2.ConnectionPool in _pool")
    transport._pool = httpcore2.ConnectionPool(ssl_context=verify, network_backend=_DeadlineBackend(_Deadline(deadline)))
    return httpx2.Client(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False)


def decodable(encoding: str) -> bool:
    """Whether a body in this ``Content-Encoding`` (lower case, stripped) can be read."""
    return encoding in ("", "identity") or encoding in _WBITS


def inflated(raw: Iterable[bytes], encoding: str) -> Iterator[bytes]:
    """The body of ``raw`` (as it came, in the ``decodable`` ``encoding``) decoded, in pieces of at most
    ``PIECE_BYTES``: a reader that stops at its size cap holds no more than the cap and one piece, whatever
    the compression ratio. A corrupt body raises ``zlib.error``."""
    if encoding not in _WBITS:
        yield from raw  # pieces of at most httpcore's read size, 64 KiB
        return
    chunks, head, wbits = iter(raw), b"", _WBITS[encoding]
    if encoding == "deflate":
        # zlib data by the RFC, but sent raw often enough that httpx and browsers read both: the header tells.
        for data in chunks:
            head += data
            if len(head) >= 2:
                break
        if not (len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0):
            wbits = -zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    for data in itertools.chain([head], chunks):
        while True:
            piece = inflater.decompress(data, PIECE_BYTES)
            if piece:
                yield piece
            if inflater.eof:
                return  # what follows the compressed stream is not the page (httpx ignores it too)
            data = inflater.unconsumed_tail
            # A full piece may leave output inside zlib with all its input taken: ask until one is not full.
            if not data and len(piece) < PIECE_BYTES:
                break
