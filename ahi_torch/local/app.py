"""The ASGI application (Starlette) that serves the AHI API over HTTP.

Every request goes through one dispatcher: route by method and raw path (data-plane calls may
arrive with or without the ``runtime-`` host prefix; the host is not consulted), run the guards
(signature check, fault injection), bind and validate the input by the service model, call the
operation's handler, and serialise its result. Handlers that write run in a worker thread so a
transaction waiting for SQLite's write lock never stalls the event loop.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# Importing the handler modules registers them in HANDLERS.
from . import datastores, imagesets, jobs, protocol, tags, writes  # noqa: F401
from .context import HANDLERS, Context
from .errors import InternalServerException, ServiceError, UnknownOperationException

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
#: ServiceError, return a Response to send instead (fault injection), or return None.
Guard = Callable[[Request, str, bytes], Awaitable[Response | None]]
#: A response filter may rewrite a successful response (fault injection of corrupt frames).
ResponseFilter = Callable[[str, protocol.HttpResponse], protocol.HttpResponse]


def _send(http: protocol.HttpResponse) -> Response:
    return Response(content=http.body, status_code=http.status, headers=http.headers)


def build_app(
    ctx: Context,
    guards: Sequence[Guard] = (),
    response_filters: Sequence[ResponseFilter] = (),
) -> Starlette:
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
        except ServiceError as error:
            http = protocol.error_response(error.code, error.status, error.message, request_id)
        except Exception:
            log.exception("internal error in %s (request %s)", found[0].name if found else "?", request_id)
            http = protocol.error_response(
                "InternalServerException", 500, f"Internal error, request {request_id}", request_id
            )
        http.headers.setdefault("x-amzn-RequestId", request_id)
        return _send(http)

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]
    return Starlette(routes=[Route("/{path:path}", dispatch, methods=methods)])


def _serialize(ctx: Context, route: protocol.Route, result: dict[str, Any]) -> protocol.HttpResponse:
    if ctx.settings.check_responses:
        problems = protocol.output_problems(route.operation, result)
        if problems:
            raise InternalServerException(f"response of {route.name} breaks the model: " + "; ".join(problems))
    return protocol.serialize_response(route.operation, result)
