"""The gate in front of every route (a plain ASGI middleware): the API key, compared in constant time, and
the request body size, refused from Content-Length or while the body streams in."""
from __future__ import annotations

import hmac

from .errors import ApiError

OPEN_PATHS = frozenset({"/health"})  # load balancers probe it without credentials


def bearer_token(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (the scheme is case-insensitive), else None."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
    return None


class GuardMiddleware:
    """401 without the bearer key (when one is set), 413 for a body over ``max_body_bytes``."""

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int):
        self.app = app
        self._key = api_key.encode() if api_key else None
        self._max = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        if self._key is not None and scope["path"] not in OPEN_PATHS:
            token = bearer_token(headers)
            # compare_digest's time does not depend on where the first difference lies
            if token is None or not hmac.compare_digest(token, self._key):
                error = ApiError(401, "a valid API key is required: send the header 'Authorization: Bearer KEY'",
                                 code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                await error.response(scope["path"])(scope, receive, send)
                return
        declared = next((v for k, v in headers if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self._max:
            await self._too_large().response(scope["path"])(scope, receive, send)
            return
        await self.app(scope, self._counting(receive), send)

    def _too_large(self) -> ApiError:
        return ApiError(413, f"the request body is larger than this server's limit of {self._max} bytes "
                        "(see --max-body-bytes)", code="request_too_large")

    def _counting(self, receive):
        """receive() that fails with 413 once a streamed (chunked) body passes the limit."""
        seen = 0

        async def guarded():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self._max:
                    raise self._too_large()
            return message
        return guarded
