"""Reading a request body as a JSON API must: refused as early as its headers allow, bounded in size and time."""

from __future__ import annotations

import asyncio

from fastapi import Request
from starlette.requests import ClientDisconnect

from fslm.serve.config import ServeSettings
from fslm.serve.schemas import APIError, shorten


async def read_body(request: Request, settings: ServeSettings) -> bytes:
    """The body of a JSON request, refused as early as its headers allow: a declared size over the limit (413) or a
    media type other than JSON (415) before a byte is read; then the size is counted while reading (a chunked body
    declares none) and the whole body must arrive within body_timeout_s (408), so a slow client cannot hold a
    connection slot for ever. A client that hangs up mid-body is a 400 for the log, not an unhandled error."""
    limit = settings.max_body_bytes
    _check_declared_length(request.headers.get("content-length"), limit)
    _require_json(request.headers.get("content-type"))
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            return await _read_limited(request, limit)
    except TimeoutError:
        raise APIError(
            408,
            f"the request body did not arrive within {settings.body_timeout_s:g} s",
            code="request_timeout",
            headers={"Connection": "close"},
        ) from None
    except ClientDisconnect:
        raise APIError(
            400, "the client closed the connection before the body was complete", code="incomplete_body"
        ) from None


async def _read_limited(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"request body exceeds {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_declared_length(declared: str | None, limit: int) -> None:
    """413 on a Content-Length over the limit, 400 on one that is not a number. Only ASCII digits count ("²".isdigit()
    is true, and int() refuses it), and the length is compared as text first (int() refuses over 4300 digits)."""
    if declared is None:
        return
    if not (declared.isascii() and declared.isdigit()):
        raise APIError(400, f"Content-Length {shorten(declared)} is not a byte count", code="invalid_header")
    digits = declared.lstrip("0") or "0"
    if len(digits) > len(str(limit)) or int(digits) > limit:
        size = digits if len(digits) <= 20 else f"a {len(digits)}-digit number of"
        raise APIError(
            413, f"request body has {size} bytes; this server accepts at most {limit}", code="request_too_large"
        )


def _require_json(content_type: str | None) -> None:
    """415 unless the body is declared as application/json (charset, if given, UTF-8). Besides naming the mistake
    (a form post, text/plain), this is what makes a browser ask first (a CORS preflight, which this server does not
    grant) before another site's page can post here: text/plain, form and no-type bodies are sent without asking."""
    media, params = _media_type(content_type or "")
    if media != "application/json" or params.get("charset", "utf-8") not in ("utf-8", "utf8"):
        got = shorten(content_type) if content_type else "none"
        raise APIError(
            415,
            f"Content-Type must be application/json (UTF-8), got {got}",
            code="unsupported_media_type",
        )


def _media_type(value: str) -> tuple[str, dict[str, str]]:
    """'Application/JSON; charset="UTF-8"' -> ('application/json', {'charset': 'utf-8'})."""
    media, *params = value.split(";")
    pairs = (p.partition("=") for p in params)
    return media.strip().lower(), {k.strip().lower(): v.strip().strip('"').lower() for k, _, v in pairs}
