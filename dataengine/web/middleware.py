"""What stands in front of every route: the key, checked before a byte of a body is read; the body's
size limit; and the headers every answer carries.

Pure ASGI middleware, so that nothing here reads a body by accident: FastAPI's dependencies run
only after the body was read and parsed, which let a client without a key make the API parse 32 MiB
of JSON before it answered 401.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dataengine.web.keys import check_key

#: Every route under this prefix needs an API key; the rest (health, metrics, the OpenAPI document
#: and its page, the runs page with its own session) decide for themselves.
KEYED_PREFIX = "/v1"
#: Set in the request's scope state once :class:`KeyGate` accepted the key, so the routes' own
#: dependency does not look the key up a second time.
KEY_ACCEPTED = "dataengine_key_accepted"
#: Headers on every answer: a browser never guesses another content type than the one declared.
EVERY_ANSWER = {"x-content-type-options": "nosniff"}


def key_from(*, authorization: str | None, x_api_key: str | None) -> str | None:
    """The key sent as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return x_api_key


def unauthorized() -> JSONResponse:
    """The one 401 of the API: the same for a missing and a wrong key."""
    return JSONResponse({"detail": "missing or invalid API key"}, status_code=401,
                        headers={"WWW-Authenticate": "Bearer", "Connection": "close"})


def _keyed(path: str) -> bool:
    return path == KEYED_PREFIX or path.startswith(KEYED_PREFIX + "/")


class KeyGate:
    """Answer 401 to a ``/v1`` request without an accepted key before its body is read (the
    connection is closed, so the unread body costs nothing either)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _keyed(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        key = key_from(authorization=headers.get("authorization"), x_api_key=headers.get("x-api-key"))
        # A named key is looked up in the database: off the event loop.
        if not key or not await run_in_threadpool(check_key, key):
            await unauthorized()(scope, receive, send)
            return
        scope.setdefault("state", {})[KEY_ACCEPTED] = True
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse a body over ``limit`` bytes with 413: from its declared length before reading it, or
    as soon as a body sent without one goes past the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, receive, send)
            return
        seen, refused = 0, False

        async def counted() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # answer now; the app sees the client gone and its answer goes nowhere
                refused = True
                await self._refuse(scope, receive, send)
                return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, guarded)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"the body is larger than {self.limit} bytes (DATAENGINE_API_MAX_BODY_BYTES)"
        await JSONResponse({"detail": detail}, status_code=413, headers={"Connection": "close"})(scope, receive, send)


class EveryAnswerHeaders:
    """Add :data:`EVERY_ANSWER` to every answer that does not set those headers itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in EVERY_ANSWER.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)
