"""The ASGI application that serves the AHI API over HTTP (uvicorn serves, Starlette parses
requests and writes responses).

Every request goes through one dispatcher: route by method and raw path (data-plane calls may
arrive with or without the ``runtime-`` host prefix; the host is not consulted), run the guards
(signature check, fault injection), bind and validate the input by the service model, call the
operation's handler, and serialise its result. Handlers that write run in a worker thread so a
transaction waiting for SQLite's write lock never stalls the event loop.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..context import HANDLERS, Context
from ..errors import InternalServerException, ServiceException, UnknownOperationException

# Importing the handler modules registers them in HANDLERS.
from ..responses import datastores, image_set_writes, image_sets, import_jobs, tags  # noqa: F401 - they register
from . import protocol

log = logging.getLogger(__name__)

READ_ONLY = frozenset(
    {
        "GetDatastore",
        "ListDatastores",
        "GetDICOMImportJob",
        "ListDICOMImportJobs",
        "SearchImageSets",
        "GetImageSet",
        "GetImageSetMetadata",
        "GetImageFrame",
        "ListImageSetVersions",
        "ListTagsForResource",
    }
)

#: A guard sees the request, its operation and body before the handler; it may raise a
#: ServiceException, return a Response to send instead (fault injection), or return None.
Guard = Callable[[Request, str, bytes], Awaitable[Response | None]]
#: A response filter may rewrite a successful response (fault injection of corrupt frames).
ResponseFilter = Callable[[str, protocol.HttpResponse], protocol.HttpResponse]


def _send(http: protocol.HttpResponse) -> Response:
    if http.drop_after is not None:
        return _dropping(http)
    return Response(content=http.body, status_code=http.status, headers=http.headers)


class _DroppedConnection(Exception):
    """Raised inside a streaming body to make the server abort the connection (fault injection)."""


def _not_an_injected_drop(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], _DroppedConnection))


# uvicorn logs every aborted response with a traceback; the ones we abort on purpose are noise.
logging.getLogger("uvicorn.error").addFilter(_not_an_injected_drop)


def _dropping(http: protocol.HttpResponse) -> Response:
    """A response that announces the full Content-Length, sends part of the body, then aborts."""
    cut = http.drop_after or 0

    async def body() -> AsyncIterator[bytes]:
        yield http.body[:cut]
        raise _DroppedConnection

    headers = {**http.headers, "Content-Length": str(len(http.body))}
    return StreamingResponse(body(), status_code=http.status, headers=headers)


def _frame_id(body: bytes) -> str | None:
    """The imageFrameId of a GetImageFrame body, for per-frame request counts (None if unreadable)."""
    try:
        value = json.loads(body).get("imageFrameId")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def build_app(
    ctx: Context,
    guards: Sequence[Guard] = (),
    response_filters: Sequence[ResponseFilter] = (),
) -> ASGIApp:
    """The Starlette app serving all 18 operations for ``ctx``."""

    async def dispatch(request: Request) -> Response:
        request_id = str(uuid.uuid4())
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        path = raw_path.decode("latin-1").split("?", 1)[0]
        found = protocol.match(request.method, path)
        try:
            if found is None:
                raise UnknownOperationException(f"No operation matches {request.method} {path}")
            route, labels = found
            body = await request.body()
            ctx.count_request(route.name, _frame_id(body) if route.name == "GetImageFrame" else None)
            for guard in guards:
                replacement = await guard(request, route.name, body)
                if replacement is not None:
                    return replacement
            params = protocol.parse_request(route, labels, request.query_params.multi_items(), request.headers, body)
            handler = HANDLERS[route.name]
            if route.name in READ_ONLY:
                result = handler(ctx, params)
            else:
                result = await run_in_threadpool(handler, ctx, params)
            http = _serialize(ctx, route, result)
            for response_filter in response_filters:
                http = response_filter(route.name, http)
        except ServiceException as error:
            http = protocol.error_response(error.code, error.status, error.message, request_id)
        except Exception:
            log.exception("internal error in %s (request %s)", found[0].name if found else "?", request_id)
            http = protocol.error_response(
                "InternalServerException", 500, f"Internal error, request {request_id}", request_id
            )
        http.headers.setdefault("x-amzn-RequestId", request_id)
        return _send(http)

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        # One dispatcher for every path: Starlette's routing regexes stop at a newline, and
        # an encoded one in an ID must reach validation, not fall through as a bare 404.
        if scope["type"] != "http":
            return
        response = await dispatch(Request(scope, receive))
        await response(scope, receive, send)

    return application


def _serialize(ctx: Context, route: protocol.Route, result: dict[str, Any]) -> protocol.HttpResponse:
    if ctx.settings.check_responses:
        problems = protocol.output_problems(route.operation, result)
        if problems:
            raise InternalServerException(f"response of {route.name} breaks the model: " + "; ".join(problems))
    return protocol.serialize_response(route.operation, result)
