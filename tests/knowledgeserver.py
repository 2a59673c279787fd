"""A local HTTP server for Knowledge Refresh tests, on 127.0.0.1: a page that changes, one that does
not, one answering 304 to a conditional GET, a 404, a slow one, an oversized one, an image, a
redirect to a private (cloud metadata) address, compressed pages, a gzip bomb, and servers that
trickle their answer or say nothing. It counts the requests per path."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PARAGRAPH = ("The Monarch at Riverside has a rooftop pool open from May to September, a 24-hour gym, "
             "covered parking for residents and guests, and a dog park next to building C. ")


def page(title: str, paragraphs: list[str]) -> str:
    """An HTML page with navigation and a script around its content (which extraction must drop)."""
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (f"<html><head><title>{title}</title><script>var tracking = 'not content';</script></head>"
            f"<body><nav>Home | Floor plans | Contact</nav><main><h1>{title}</h1>{body}</main>"
            f"<footer>Copyright footer</footer></body></html>")


def _deflate(wbits: int) -> Callable[[bytes], bytes]:
    return lambda data: zlib.compress(data, wbits=wbits)


#: Path → (Content-Encoding, how /unchanged's page is compressed for it); "br" is one the refresh does not ask for.
COMPRESSED = {"/gzip": ("gzip", _deflate(zlib.MAX_WBITS | 16)), "/deflate": ("deflate", _deflate(zlib.MAX_WBITS)),
              "/raw-deflate": ("deflate", _deflate(-zlib.MAX_WBITS)), "/brotli": ("br", _deflate(zlib.MAX_WBITS)),
              "/corrupt-gzip": ("gzip", lambda data: b"not gzip at all")}
#: The pause between two bytes of a trickled answer.
TRICKLE_INTERVAL_S = 0.05


@cache
def gzip_bomb(inflated_mib: int) -> bytes:
    """A gzip body of ``inflated_mib`` MiB of zeros, about a thousandth of that on the wire. Built from one
    MiB compressed and flushed to a byte boundary with the window reset, so every next MiB is the same bytes
    (compressing a GiB would take seconds); the trailer (CRC and size) is left off: no reader gets that far."""
    block = bytes(1 << 20)
    gz = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    first = gz.compress(block) + gz.flush(zlib.Z_FULL_FLUSH)
    again = gz.compress(block) + gz.flush(zlib.Z_FULL_FLUSH)
    return first + again * (inflated_mib - 1)


class KnowledgeSite:
    """The server; ``pages`` may be changed while it runs (``site.pages["/changing"] = ...``)."""

    def __init__(self, *, slow_s: float = 2.0, huge_bytes: int = 300_000) -> None:
        self.slow_s, self.huge_bytes = slow_s, huge_bytes
        self.hits: Counter[str] = Counter()
        #: The Accept-Encoding of the last request per path.
        self.accept_encoding: dict[str, str | None] = {}
        self.not_modified: Counter[str] = Counter()
        self.pages: dict[str, str] = {
            "/changing": page("Amenities", [PARAGRAPH * 6, "Pets: two per apartment, no weight limit."]),
            "/unchanged": page("Parking", ["Parking is free for residents. " * 40]),
            "/conditional": page("Office hours", ["The leasing office is open 9 to 6 on weekdays. " * 30]),
        }
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                site.hits[self.path] += 1
                site.accept_encoding[self.path] = self.headers.get("Accept-Encoding")
                site.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # A short poll: shutdown() waits for it, and every test with a site stops one.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        """The full URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        """Answer one GET."""
        path = h.path
        if path == "/conditional":
            body = self.pages[path].encode()
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            if h.headers.get("If-None-Match") == etag:
                self.not_modified[path] += 1
                h.send_response(304)
                h.send_header("ETag", etag)
                h.end_headers()
                return
            return self._send(h, 200, body, "text/html; charset=utf-8", {"ETag": etag})
        if path in self.pages:
            return self._send(h, 200, self.pages[path].encode(), "text/html; charset=utf-8")
        if path == "/notes.txt":
            return self._send(h, 200, b"Quiet hours are 10 pm to 7 am.\nPackages go to the locker room.", "text/plain")
        if path == "/slow":
            time.sleep(self.slow_s)  # a page that answers too late, on purpose
            return self._send(h, 200, b"<p>too late</p>", "text/html")
        if path == "/huge":
            return self._send(h, 200, b"<p>" + b"x" * self.huge_bytes + b"</p>", "text/html")
        if path == "/image.png":
            return self._send(h, 200, b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png")
        if path == "/redirect-private":
            return self._send(h, 302, b"", "text/plain", {"Location": "http://169.254.169.254/latest/meta-data/"})
        if path == "/redirect-local":
            return self._send(h, 301, b"", "text/plain", {"Location": "/unchanged"})
        if path in COMPRESSED:
            encoding, compress = COMPRESSED[path]
            return self._send(h, 200, compress(self.pages["/unchanged"].encode()), "text/html",
                              {"Content-Encoding": encoding})
        if path == "/gzip-bomb":
            return self._send(h, 200, gzip_bomb(1024), "text/html", {"Content-Encoding": "gzip"})
        if path in ("/trickle-head", "/trickle-body", "/silent"):
            return self._trickle(h, path)
        self._send(h, 404, b"not found", "text/plain")

    @staticmethod
    def _trickle(h: BaseHTTPRequestHandler, path: str) -> None:
        """A whole answer a byte at a time (``/trickle-head``), its head at once and its body a byte at a time
        (``/trickle-body``), or nothing until the client goes away (``/silent``)."""
        body = b"<p>" + b"late " * 20 + b"</p>"
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(body)
        h.connection.settimeout(30)
        try:
            if path == "/silent":
                h.rfile.read(1)  # returns when the client closes the connection
                return
            answer = head + body
            if path == "/trickle-body":
                h.wfile.write(head)
                answer = body
            for i in range(len(answer)):
                h.wfile.write(answer[i:i + 1])
                time.sleep(TRICKLE_INTERVAL_S)
        except OSError:
            pass  # the client gave up: what the tests expect it to do

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
              ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        try:
            h.wfile.write(body)
        except OSError:
            pass  # the client stopped reading (a body over the size cap)

    def __enter__(self) -> KnowledgeSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()



def knowledge_spec(n: int, *, property_id: str = "crash-test-property", tag: str | None = None) -> dict[str, Any]:
    """A ``knowledge.submit`` spec over ``n`` text sources registered now, each short enough to be one chunk
    whose text is the source's own (so the stand-in's count of that text is the count of its embeddings);
    ``tag`` (random unless given) is in every text."""
    from sqlalchemy import select

    from dataengine.infra.db import session_scope
    from models.knowledge import KnowledgeSource
    from tasks.knowledge.spec import SourceIn, register_sources

    tag = tag or uuid.uuid4().hex[:8]
    texts = [SourceIn(title=f"note {tag} {i}", text=f"Note {tag} {i}: the laundry room on floor {i} opens at 7 am.")
             for i in range(n)]
    with session_scope() as session:
        register_sources(session, property_id=property_id, sources=texts)
        ids = dict(session.execute(select(KnowledgeSource.title, KnowledgeSource.id)
                                   .where(KnowledgeSource.property_id == property_id)).all())
    return {"property_id": property_id, "source_ids": [str(ids[t.title]) for t in texts]}


def knowledge_prompts(spec: dict[str, Any]) -> list[str]:
    """The text each step of a ``knowledge_spec`` run embeds, by step index."""
    from sqlalchemy import select

    from dataengine.infra.db import session_scope
    from models.knowledge import KnowledgeSource

    with session_scope() as session:
        texts = dict(session.execute(select(KnowledgeSource.id, KnowledgeSource.text)
                                     .where(KnowledgeSource.property_id == spec["property_id"])).all())
    return [texts[uuid.UUID(i)] for i in spec["source_ids"]]
