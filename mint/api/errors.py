"""One error shape for the HTTP API, OpenAI's: `{"error": {"message", "type", "param", "code"}}`.

Every route of mint/api answers a refusal through `HttpError`, so a client parses one shape and the type
follows from the status in one place (`error_type`). The Tinker routes keep Tinker's own shape
(mint/tinker/wire.py), which its SDKs expect.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from events.codec import field_of

T = TypeVar("T")

RETRY_AFTER_S = "1"


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


class HttpError(Exception):
    """A request refused: the status, what is wrong, the field at fault (None when the request as a
    whole is), extra headers (`Retry-After`, ...) and extra members of the error object."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = dict(headers or {})
        self.extra = extra

    def response(self) -> JSONResponse:
        body = {
            "error": {
                "message": self.message,
                "type": error_type(self.status),
                "param": self.param,
                "code": self.status,
                **self.extra,
            }
        }
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def retry_later(status: int, message: str) -> HttpError:
    """A refusal the client should retry (429, 503): with `Retry-After`."""
    return HttpError(status, message, headers={"Retry-After": RETRY_AFTER_S})


async def log_unavailable(request: Request, exc: Exception) -> Response:
    """Any route whose append the log did not take (events/log.py LogUnavailable): 503 with
    Retry-After. The write may or may not be on the log; sent again, its ids make a copy harmless."""
    return retry_later(503, f"the log did not take the write; send it again: {exc}").response()


def decoded(raw: bytes, kind: type[T]) -> T:
    """A JSON body decoded as `kind`, or a 400 naming the field at fault."""
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise HttpError(400, f"invalid request: {exc}", field_of(str(exc))) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise HttpError(400, f"the body is not JSON: {why}") from None
