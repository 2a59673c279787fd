"""How a fetch's bytes come off the wire: every socket operation held to the fetch's deadline.

httpx's timeouts are per operation (a read timeout restarts with every byte, so a server that sends
a byte a second is never cut off): the refresh uses httpcore's network backend API to shorten each
operation's timeout to what is left of the whole fetch's.
"""

from __future__ import annotations

import ssl
import time
import typing

import httpcore
import httpx


class _Deadline:
    """The end of a whole fetch, and each operation's timeout shortened to fit before it."""

    def __init__(self, at: float) -> None:
        self.at = at

    def timeout(self, timeout: float | None, error: type[httpcore.TimeoutException]) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise error("the fetch's deadline has passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads, writes and TLS handshake each end by the deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._stream, self._deadline = stream, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Read at most ``max_bytes``, waiting no longer than the deadline allows."""
        return self._stream.read(max_bytes, self._deadline.timeout(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Write ``buffer``, waiting no longer than the deadline allows."""
        self._stream.write(buffer, self._deadline.timeout(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        """Close the connection."""
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        """The TLS handshake, ending by the deadline; the TLS stream keeps to it too."""
        stream = self._stream.start_tls(ssl_context, server_hostname,
                                        self._deadline.timeout(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(stream, self._deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        """What the underlying connection says (its socket, addresses, TLS object)."""
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own sockets, each connection and every operation on it ending by the deadline."""

    def __init__(self, deadline: _Deadline) -> None:
        self._backend, self._deadline = httpcore.SyncBackend(), deadline

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None) -> httpcore.NetworkStream:
        """Connect, waiting no longer than the deadline allows."""
        stream = self._backend.connect_tcp(host, port, self._deadline.timeout(timeout, httpcore.ConnectTimeout),
                                           local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        """Sleep (httpcore's connection retries; the refresh makes none)."""
        self._backend.sleep(seconds)


def deadline_client(*, deadline: float, timeout: httpx.Timeout, verify: ssl.SSLContext) -> httpx.Client:
    """An httpx client (no redirects followed, no proxy from the environment) whose connections end every
    operation by ``deadline`` (``time.monotonic()``): past it, a read, write or connect raises an httpx
    timeout, however the server spaces its bytes."""
    transport = httpx.HTTPTransport(verify=verify, trust_env=False)
    # httpx takes no network backend (encode/httpx#3749 proposes one); its transport keeps its pool here.
    # Checked, so that an httpx that moved it fails loudly instead of fetching without the deadline.
    if not isinstance(getattr(transport, "_pool", None), httpcore.ConnectionPool):
        raise RuntimeError("httpx.HTTPTransport no longer keeps an httpcore.ConnectionPool in _pool")
    transport._pool = httpcore.ConnectionPool(ssl_context=verify, network_backend=_DeadlineBackend(_Deadline(deadline)))
    return httpx.Client(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False)

