"""Errors as the routes return them: HTTP status + OpenAI's error body
``{"error": {"message", "type", "param", "code"}}``, which OpenAI's clients parse into their exceptions, except
on TEI's /predict and /rerank, whose clients read TEI's ``{"error": message, "error_type": kind}`` (with our
``param`` and ``code`` beside them)."""
from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 503: "server_error"}
TEI_ERROR_ROUTES = frozenset({"/predict", "/rerank"})  # routes answering errors in TEI's shape


def tei_error_type(status: int, code: str | None) -> str:
    """TEI's error_type for a status: overloaded (429), unhealthy (503), backend (the model: 424, 5xx),
    tokenizer (a text over the limit), else validation."""
    if status == 429:
        return "overloaded"
    if status == 503:
        return "unhealthy"
    if status == 424 or status >= 500:
        return "backend"
    return "tokenizer" if code == "context_length_exceeded" else "validation"


class ApiError(Exception):
    """A request the server answers with ``status`` and ``message`` (param: the offending field, e.g.
    ``input[3]``; code: a stable machine-readable name; headers: e.g. Retry-After)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def tei_body(self) -> dict[str, Any]:
        return {"error": self.message, "error_type": tei_error_type(self.status, self.code), "param": self.param,
                "code": self.code}

    def response(self, path: str | None = None) -> Response:
        """The error as a response, in TEI's shape on a TEI_ERROR_ROUTES path, else OpenAI's."""
        body = self.tei_body() if path in TEI_ERROR_ROUTES else self.body()
        return Response(orjson.dumps(body), status_code=self.status, headers=self.headers,
                        media_type="application/json")
