"""A loopback TCP proxy that can cut every connection and refuse new ones: an outage on demand.

``cut()`` keeps listening and closes each new connection at once (a server restarting, a pooler
with no backend); ``refuse()`` stops listening, so a connect is refused by the kernel (a host up
with nothing on the port: a provider down).
"""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; ``cut()`` drops all connections until ``restore()``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.refusing = False
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._down = threading.Event()
        self._closed = False
        threading.Thread(target=self._accept, name="tcpproxy", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._down.is_set():
                client.close()  # the server is away: the driver sees the connection closed at once
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Drop every connection and refuse new ones (a restarted or unreachable server)."""
        self._down.set()
        with self._lock:
            conns, self._open = self._open, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def refuse(self) -> None:
        """Drop every connection and stop listening: connecting is refused until ``restore()``."""
        self.cut()
        self.refusing = True
        self._listener.close()

    def restore(self) -> None:
        """Accept and forward connections again (listening again on the same port after ``refuse()``)."""
        if self.refusing:
            self._listener = socket.create_server(("127.0.0.1", self.port))
            self.refusing = False
            threading.Thread(target=self._accept, name="tcpproxy", daemon=True).start()
        self._down.clear()

    def close(self) -> None:
        """Stop listening and drop everything."""
        self._closed = True
        self.cut()
        if not self.refusing:
            self._listener.close()
