"""Fetching one URL source: conditional GET, a size cap, time limits, and the SSRF guard.

The URLs are user input, so every hop (the first and each redirect, followed here by hand) is
checked after DNS resolution: only http and https, and only public addresses unless
``DATAENGINE_KNOWLEDGE_ALLOW_PRIVATE_URLS`` is on. The connection goes to the address that was
checked (the host name kept for the Host header and TLS), so a second DNS answer cannot swap it.
The servers are untrusted too: the whole fetch ends by its time limit and a compressed body is
inflated no further than the size cap (``wire.py``).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
import zlib
from dataclasses import dataclass
from functools import cache
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx2
from selectolax.lexbor import LexborHTMLParser

from tasks.knowledge import wire
from tasks.knowledge.config import KnowledgeLimits

USER_AGENT = "dataengine-knowledge-refresh/1"
REDIRECTS = (301, 302, 303, 307, 308)
HTML_TYPES = ("text/html", "application/xhtml+xml")
#: Elements whose text is not the page's content.
NOT_CONTENT = "script, style, noscript, template, svg, canvas, iframe, nav, header, footer, form, aside"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: NAT64 prefixes (RFC 6052's well-known one and RFC 8215's local-use one): the low 32 bits are an IPv4 address.
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
#: IPv4-compatible addresses (``::a.b.c.d``, deprecated but still parsed and routed by some stacks).
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class FetchError(Exception):
    """The source could not be fetched."""


class URLRefused(FetchError):
    """The URL is not one the refresh may fetch (scheme, or an address that is not public)."""


class HTTPError(FetchError):
    """The server answered with an error status."""


class TooLarge(FetchError):
    """The answer is larger than the size cap."""


class NotText(FetchError):
    """The answer is neither HTML nor text."""


class NotDecodable(FetchError):
    """The answer is compressed in a way the refresh does not read, or its compressed body is corrupt."""


class FetchTimedOut(FetchError):
    """The server did not answer within the time limits."""


class TooManyRedirects(FetchError):
    """The redirects went on past the limit."""


@dataclass(frozen=True)
class Fetched:
    """A source's answer: its readable text (``None`` when the server said 304 Not Modified) and validators."""

    text: str | None
    title: str | None
    etag: str | None
    last_modified: str | None
    url: str


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve {host}: {exc.strerror or exc}") from None
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))


def is_public(ip: IPAddress) -> bool:
    """Whether ``ip`` is a public unicast address: not loopback, private, link-local (cloud metadata's
    169.254.169.254), shared (100.64/10), multicast, reserved, unspecified or site-local, and not an IPv6
    address carrying an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) that is any of these."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public(ip.ipv4_mapped)  # the kernel connects to the IPv4 address itself
        if ip.is_site_local or not all(is_public(v4) for v4 in _embedded_ipv4(ip)):
            return False
    return ip.is_global and not ip.is_multicast


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses a gateway or tunnel would carry traffic for ``ip`` to."""
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    embedded = [low32] if ip in _IPV4_COMPATIBLE or any(ip in net for net in _NAT64) else []
    if ip.sixtofour is not None:
        embedded.append(ip.sixtofour)
    if ip.teredo is not None:
        embedded.extend(ip.teredo)  # the Teredo server and the client behind it
    return embedded


def _checked(url: str, *, allow_private: bool) -> tuple[str, str | None]:
    """The URL to connect to (pinned to a checked address) and the Host to send, or ``URLRefused``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise URLRefused(f"refused {url}: only http and https URLs are fetched")
    host = parts.hostname
    if not host:
        raise URLRefused(f"refused {url}: no host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = resolve(host, port)
    if not addresses:
        raise FetchError(f"cannot resolve {host}")
    if allow_private:
        return url, None
    for ip in addresses:
        if not is_public(ip):
            raise URLRefused(f"refused {url}: {host} resolves to {ip}, which is not a public address")
    ip = min(addresses, key=lambda a: a.version)  # IPv4 first: a host without IPv6 routes still connects
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    return urlunsplit(parts._replace(netloc=netloc)), parts.netloc.rpartition("@")[2]


@cache
def _tls() -> ssl.SSLContext:
    # Built once: loading the CA bundle costs about 25 ms, which a client per fetch paid every time
    # (most of an unchanged source's refresh, measured by bench/knowledge_refresh.py).
    return httpx2.create_ssl_context()


def fetch(url: str, *, etag: str | None, last_modified: str | None, limits: KnowledgeLimits,
          allow_private: bool) -> Fetched:
    """GET ``url`` (conditionally, when validators are known) and return its readable text."""
    timeout = httpx2.Timeout(connect=limits.connect_timeout_s, read=limits.read_timeout_s,
                            write=limits.read_timeout_s, pool=limits.connect_timeout_s)
    deadline = time.monotonic() + limits.fetch_timeout_s
    conditional = {"If-None-Match": etag, "If-Modified-Since": last_modified}
    # The client keeps no proxy from the environment: nothing sits between the check and the connection.
    with wire.deadline_client(deadline=deadline, timeout=timeout, verify=_tls()) as client:
        for _ in range(limits.max_redirects + 1):
            target, host = _checked(url, allow_private=allow_private)
            headers = {"User-Agent": USER_AGENT, "Accept": "text/html, application/xhtml+xml, text/*;q=0.8",
                       "Accept-Encoding": wire.ACCEPT_ENCODING}
            headers |= {k: v for k, v in conditional.items() if v}
            extensions = {}
            if host is not None:
                headers["Host"] = host
                extensions["sni_hostname"] = urlsplit(url).hostname
            try:
                with client.stream("GET", target, headers=headers, extensions=extensions) as response:
                    if response.status_code in REDIRECTS and response.headers.get("location"):
                        url = urljoin(url, response.headers["location"])
                        continue
                    return _read(response, url=url, limits=limits)
            except httpx2.TimeoutException as exc:
                if time.monotonic() >= deadline:
                    raise FetchTimedOut(f"{url}: not fetched within {limits.fetch_timeout_s:g} s, the limit for a "
                                        "whole fetch with its redirects") from None
                raise FetchTimedOut(f"{url}: no answer in time ({type(exc).__name__})") from None
            except httpx2.TransportError as exc:
                raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from None
    raise TooManyRedirects(f"{url}: more than {limits.max_redirects} redirects")


def _read(response: httpx2.Response, *, url: str, limits: KnowledgeLimits) -> Fetched:
    etag, last_modified = response.headers.get("etag"), response.headers.get("last-modified")
    if response.status_code == 304:
        return Fetched(None, None, etag, last_modified, url)
    if response.status_code >= 400:
        raise HTTPError(f"{url}: HTTP {response.status_code} {response.reason_phrase}".rstrip())
    if response.status_code != 200:
        raise HTTPError(f"{url}: unexpected HTTP {response.status_code}")
    mime = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (mime.startswith("text/") or mime in HTML_TYPES):
        raise NotText(f"{url}: content type {mime or 'missing'} is not HTML or text")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise TooLarge(f"{url}: {declared} bytes, the limit is {limits.max_bytes}")
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if not wire.decodable(encoding):
        raise NotDecodable(f"{url}: content encoding {encoding} is not one the refresh reads "
                           f"(it asks for {wire.ACCEPT_ENCODING})")
    body = bytearray()
    try:
        for piece in wire.inflated(response.iter_raw(), encoding):
            body += piece
            if len(body) > limits.max_bytes:
                raise TooLarge(f"{url}: more than {limits.max_bytes} bytes")
    except zlib.error as exc:
        raise NotDecodable(f"{url}: the {encoding} body is corrupt ({exc})") from None
    decoded = body.decode(response.encoding or "utf-8", errors="replace")
    if mime in HTML_TYPES:
        title, text = html_text(decoded)
    else:
        title, text = None, decoded
    return Fetched(clean(text), title, etag, last_modified, url)


def html_text(html: str) -> tuple[str | None, str]:
    """The title and the readable text of an HTML page (scripts, navigation, headers and footers left out)."""
    tree = LexborHTMLParser(html)
    title_node = tree.css_first("title")
    title = title_node.text(strip=True) if title_node is not None else None
    for node in tree.css(NOT_CONTENT):
        node.decompose()
    root = tree.body or tree.root
    text = root.text(separator="\n", strip=True) if root is not None else ""
    return title or None, text


def clean(text: str) -> str:
    """Text as stored: no NUL characters (PostgreSQL refuses them), lines stripped, runs of blank lines cut to one."""
    lines = [line.strip() for line in text.replace("\x00", "").splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()
