"""The restJson1 wire protocol of the ``medical-imaging`` service, driven by botocore's service model.

Routes, member locations (URI labels, query strings, headers, payloads) and types all come from
the model installed with botocore, so the local service speaks exactly the API that boto3 and the
AWS CLI send. Nothing here knows about image sets: :func:`parse_request` turns an HTTP request into
validated keyword arguments and :func:`serialize_response` turns a handler's result back into
HTTP, with timestamps as epoch seconds and blobs as base64, as restJson1 requires.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import botocore.session
from botocore.model import OperationModel, ServiceModel, Shape, StructureShape

from ..errors import SerializationException
from .validation import iter_violations, validate

SERVICE_NAME = "medical-imaging"


@functools.lru_cache(maxsize=1)
def service_model() -> ServiceModel:
    """The current ``medical-imaging`` model shipped with botocore (a superset of the 2023 Smithy file)."""
    return botocore.session.get_session().get_service_model(SERVICE_NAME)


@dataclass(frozen=True)
class Route:
    """One operation's HTTP binding: method plus a regex over the raw (still percent-encoded) path."""

    operation: OperationModel
    method: str
    pattern: re.Pattern[str]
    labels: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.operation.name


def _route(op: OperationModel) -> Route:
    uri = op.http["requestUri"].split("?", 1)[0]
    labels = tuple(label.rstrip("+") for label in re.findall(r"{([^}]+)}", uri))
    regex = re.sub(r"{([^}+]+)\+}", r"(?P<\1>.+)", re.escape(uri).replace(r"\{", "{").replace(r"\}", "}"))
    # Empty labels still route, so that validation (not a 404) reports them.
    regex = re.sub(r"{([^}]+)}", r"(?P<\1>[^/]*)", regex)
    return Route(op, op.http["method"], re.compile(regex), labels)


@functools.lru_cache(maxsize=1)
def routes() -> tuple[Route, ...]:
    """Every operation's route; a route without labels is tried before a templated one."""
    model = service_model()
    built = [_route(model.operation_model(name)) for name in model.operation_names]
    return tuple(sorted(built, key=lambda r: len(r.labels)))


def match(method: str, raw_path: str) -> tuple[Route, dict[str, str]] | None:
    """Find the operation for ``method`` and ``raw_path``; labels come back percent-decoded."""
    for route in routes():
        if route.method != method:
            continue
        found = route.pattern.fullmatch(raw_path)
        if found:
            return route, {k: unquote(v) for k, v in found.groupdict().items()}
    return None


def operation_names() -> list[str]:
    return list(service_model().operation_names)


# ---------------------------------------------------------------------------------------------
# Requests


def _from_text(text: str, shape: Shape, where: str) -> Any:
    """Convert a URI label, query value or header to the member's type."""
    kind = shape.type_name
    if kind == "string":
        return text
    if kind in ("integer", "long"):
        try:
            return int(text)
        except ValueError:
            raise SerializationException(f"Value at '{where}' must be an integer") from None
    if kind == "boolean":
        if text.lower() not in ("true", "false"):
            raise SerializationException(f"Value at '{where}' must be a boolean")
        return text.lower() == "true"
    if kind == "timestamp":
        return _timestamp(text, where)
    raise SerializationException(f"Unsupported binding for '{where}'")


def _timestamp(value: Any, where: str) -> dt.datetime:
    if isinstance(value, bool):
        raise SerializationException(f"Value at '{where}' must be a timestamp")
    if isinstance(value, (int, float)):
        try:
            return dt.datetime.fromtimestamp(float(value), tz=dt.timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise SerializationException(f"Value at '{where}' is out of range for a timestamp") from None
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise SerializationException(f"Value at '{where}' must be a timestamp") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
    raise SerializationException(f"Value at '{where}' must be a timestamp")


def _from_json(value: Any, shape: Shape, where: str) -> Any:  # noqa: PLR0912 - one branch per shape type of the model
    """Convert a JSON value to Python by shape: timestamps to datetimes, blobs from base64."""
    if value is None:
        return None
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            raise SerializationException(f"Value at '{where}' must be an object")
        assert isinstance(shape, StructureShape)
        # Unknown members are ignored, as Smithy servers do for forward compatibility.
        return {
            name: _from_json(value[name], member, f"{where}.{name}" if where else name)
            for name, member in shape.members.items()
            if name in value
        }
    if kind == "list":
        if not isinstance(value, list):
            raise SerializationException(f"Value at '{where}' must be an array")
        return [_from_json(item, shape.member, f"{where}.{i + 1}") for i, item in enumerate(value)]
    if kind == "map":
        if not isinstance(value, dict):
            raise SerializationException(f"Value at '{where}' must be an object")
        return {str(k): _from_json(v, shape.value, f"{where}.{k}") for k, v in value.items()}
    if kind == "string":
        if not isinstance(value, str):
            raise SerializationException(f"Value at '{where}' must be a string")
        return value
    if kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SerializationException(f"Value at '{where}' must be an integer")
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise SerializationException(f"Value at '{where}' must be a boolean")
        return value
    if kind == "timestamp":
        return _timestamp(value, where)
    if kind == "blob":
        if not isinstance(value, str):
            raise SerializationException(f"Value at '{where}' must be base64 text")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise SerializationException(f"Value at '{where}' is not valid base64") from None
    return value


def parse_request(  # noqa: PLR0912 - one branch per member location
    route: Route,
    labels: Mapping[str, str],
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
) -> dict[str, Any]:
    """Bind an HTTP request to the operation's input members and validate them against the model."""
    shape = route.operation.input_shape
    if shape is None:
        return {}
    params: dict[str, Any] = {}
    payload_name = shape.serialization.get("payload")
    body_members: dict[str, Shape] = {}
    for name, member in shape.members.items():
        location = member.serialization.get("location")
        wire_name = member.serialization.get("name", name)
        if location == "uri":
            if wire_name in labels:
                params[name] = _from_text(labels[wire_name], member, name)
        elif location == "querystring":
            values = [v for k, v in query if k == wire_name]
            if values and member.type_name == "list":
                params[name] = [_from_text(v, member.member, name) for v in values]
            elif values:
                params[name] = _from_text(values[-1], member, name)
        elif location == "header":
            if wire_name.lower() in headers:
                params[name] = _from_text(headers[wire_name.lower()], member, name)
        elif name == payload_name:
            if member.type_name == "blob":
                params[name] = body
            elif body.strip():
                params[name] = _from_json(_load_json(body), member, name)
        else:
            body_members[name] = member
    if body_members and body.strip():
        document = _load_json(body)
        if not isinstance(document, dict):
            raise SerializationException("The request body must be a JSON object")
        for name, member in body_members.items():
            if name in document:
                params[name] = _from_json(document[name], member, name)
    validate({k: v for k, v in params.items() if v is not None}, shape)
    return {k: v for k, v in params.items() if v is not None}


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SerializationException("The request body is not valid JSON") from None


# ---------------------------------------------------------------------------------------------
# Responses


@dataclass(frozen=True)
class HttpResponse:
    """What the HTTP layer sends: status, headers and body bytes."""

    status: int
    headers: dict[str, str]
    body: bytes
    #: Fault injection only: close the connection after this many body bytes.
    drop_after: int | None = None


def _to_json(value: Any, shape: Shape) -> Any:
    kind = shape.type_name
    if kind == "structure":
        assert isinstance(shape, StructureShape)
        return {
            name: _to_json(value[name], member) for name, member in shape.members.items() if value.get(name) is not None
        }
    if kind == "list":
        return [_to_json(item, shape.member) for item in value]
    if kind == "map":
        return {k: _to_json(v, shape.value) for k, v in value.items()}
    if kind == "timestamp":
        if isinstance(value, dt.datetime):
            return round(value.timestamp(), 3)
        return round(float(value), 3)
    if kind == "blob":
        return base64.b64encode(value).decode("ascii")
    return value


def output_problems(operation: OperationModel, result: Mapping[str, Any]) -> list[str]:
    """Constraint violations in a handler's result (used by strict mode to keep the emulator honest)."""
    shape = operation.output_shape
    if shape is None:
        return []
    as_python = {k: v for k, v in result.items() if v is not None}
    return list(iter_violations(_timestamps_to_datetimes(as_python, shape), shape, ""))


def _timestamps_to_datetimes(value: Any, shape: Shape) -> Any:
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        assert isinstance(shape, StructureShape)
        return {k: _timestamps_to_datetimes(v, shape.members[k]) if k in shape.members else v for k, v in value.items()}
    if kind == "list" and isinstance(value, list):
        return [_timestamps_to_datetimes(v, shape.member) for v in value]
    if kind == "timestamp" and isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, tz=dt.timezone.utc)
    return value


def serialize_response(operation: OperationModel, result: Mapping[str, Any]) -> HttpResponse:
    """Render a handler's result: header members to headers, a blob payload raw, the rest as JSON."""
    shape = operation.output_shape
    headers: dict[str, str] = {}
    if shape is None:
        return HttpResponse(200, {"Content-Type": "application/json"}, b"{}")
    payload_name = shape.serialization.get("payload")
    document: dict[str, Any] = {}
    body: bytes | None = None
    for name, member in shape.members.items():
        value = result.get(name)
        if value is None:
            continue
        location = member.serialization.get("location")
        if location == "header":
            headers[member.serialization.get("name", name)] = str(value)
        elif name == payload_name and member.type_name == "blob":
            body = bytes(value)
        else:
            document[name] = value
    if body is None:
        body = json.dumps(_to_json(document, shape), separators=(",", ":")).encode()
        headers.setdefault("Content-Type", "application/json")
    status = int(operation.http.get("responseCode", 200))
    return HttpResponse(status, headers, body)


def error_response(code: str, status: int, message: str, request_id: str) -> HttpResponse:
    """The restJson1 error shape botocore parses into ``client.exceptions.<code>``."""
    body = json.dumps({"message": message}).encode()
    headers = {
        "Content-Type": "application/json",
        "x-amzn-ErrorType": code,
        "x-amzn-RequestId": request_id,
    }
    return HttpResponse(status, headers, body)
