"""Typed exceptions for everything ahi_torch raises.

AWS errors from botocore are wrapped in classes named after AHI's modelled exceptions, so callers
write ``except ResourceNotFound`` instead of inspecting ``ClientError.response``::

    >>> from ahi_torch.errors import ResourceNotFound
    >>> try:
    ...     client.get_datastore(datastore_id="0" * 32)
    ... except ResourceNotFound as err:
    ...     print(err.code, err.message)

The original botocore exception is kept as ``__cause__`` and its response as ``.response``.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError


class AHIError(Exception):
    """Base class of every error ahi_torch raises on purpose."""


class ServiceError(AHIError):
    """AHI answered with an error; ``code`` is the AWS error code, ``message`` its text."""

    def __init__(self, code: str, message: str, response: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.response = response or {}

    @property
    def status(self) -> int | None:
        """The HTTP status of the failed request, when known."""
        meta = self.response.get("ResponseMetadata", {})
        return meta.get("HTTPStatusCode")


class ValidationError(ServiceError):
    """ValidationException: a parameter broke the model's constraints."""


class ResourceNotFound(ServiceError):
    """ResourceNotFoundException: no such data store, image set, frame, job or version."""


class Conflict(ServiceError):
    """ConflictException: a state conflict (locked image set, stale version, non-empty data store)."""


class Throttled(ServiceError):
    """ThrottlingException: the request rate exceeded AHI's quota (retried before it reaches you)."""


class AccessDenied(ServiceError):
    """AccessDeniedException: the credentials may not perform this call."""


class QuotaExceeded(ServiceError):
    """ServiceQuotaExceededException: a service quota (data stores, copy size, payload) is exhausted."""


class InternalServerError(ServiceError):
    """InternalServerException or another 5xx that survived retries."""


class BadRequest(ServiceError):
    """BadRequestException (GetImageFrame only)."""


class NotAcceptable(ServiceError):
    """NotAcceptableException (GetImageFrame only)."""


_BY_CODE: dict[str, type[ServiceError]] = {
    "ValidationException": ValidationError,
    "SerializationException": ValidationError,
    "ResourceNotFoundException": ResourceNotFound,
    "ConflictException": Conflict,
    "ThrottlingException": Throttled,
    "AccessDeniedException": AccessDenied,
    "UnrecognizedClientException": AccessDenied,
    "InvalidSignatureException": AccessDenied,
    "ServiceQuotaExceededException": QuotaExceeded,
    "InternalServerException": InternalServerError,
    "ServiceUnavailableException": InternalServerError,
    "BadRequestException": BadRequest,
    "NotAcceptableException": NotAcceptable,
}


def from_client_error(error: ClientError) -> ServiceError:
    """Wrap a botocore ``ClientError`` in the matching :class:`ServiceError` subclass."""
    info = error.response.get("Error", {})
    code = str(info.get("Code", "Unknown"))
    message = str(info.get("Message", "")) or str(error)
    cls = _BY_CODE.get(code, ServiceError)
    if cls is ServiceError and code.isdigit() and int(code) >= 500:
        cls = InternalServerError
    return cls(code, message, error.response)


class EndpointUnreachable(AHIError):
    """The AHI endpoint could not be reached (connection refused, DNS, timeout after retries)."""


class EndpointDown(EndpointUnreachable):
    """The endpoint has answered no request for ``ClientConfig.endpoint_timeout`` seconds.

    An endpoint that is down is not a property of a frame: this is never retried, and error
    policies never try other samples after it.
    """


class NoCredentials(AHIError):
    """No AWS credentials were found for signing requests; never retried."""

    def __init__(self) -> None:
        super().__init__("no AWS credentials found: configure a profile, keys or a session_factory")


class WaiterTimeout(AHIError):
    """A ``wait_for_*`` call gave up before the resource reached the wanted state."""

    def __init__(self, what: str, wanted: str, last: str, seconds: float) -> None:
        super().__init__(f"{what} did not reach {wanted} within {seconds:g} s (last status: {last})")
        self.what, self.wanted, self.last, self.seconds = what, wanted, last, seconds


class WaiterFailure(AHIError):
    """A ``wait_for_*`` call saw a terminal failure state (FAILED, CREATE_FAILED, ...)."""


class DecodeError(AHIError):
    """A frame's bytes could not be decoded with any available decoder."""


class ChecksumMismatch(AHIError):
    """A decoded frame's CRC32 differs from ``PixelDataChecksumFromBaseToFullResolution``."""

    def __init__(self, where: str, expected: int, actual: int) -> None:
        super().__init__(f"checksum mismatch for {where}: expected CRC32 {expected}, decoded pixels give {actual}")
        self.where, self.expected, self.actual = where, expected, actual


class MetadataError(AHIError):
    """An image set metadata document lacks something ahi_torch needs (named in the message)."""


class NotASlideError(MetadataError):
    """An image set (or the series named) holds no whole-slide image."""


class GeometryError(MetadataError):
    """A series is not one evenly spaced stack (``irregular="error"``); the message says why."""


class CacheError(AHIError):
    """The frame cache cannot be opened or read (the message says why and what to run)."""


class ConfigError(AHIError, ValueError):
    """A configuration file or value is invalid; the message names the key and what is allowed."""


class IndexFormatError(ConfigError):
    """A saved index was written in another format version; rebuild it (configs do so by themselves)."""


class SampleError(AHIError):
    """A dataset item could not be produced under the ``raise`` error policy."""


class IrregularSeriesWarning(UserWarning):
    """A series is not one evenly spaced stack: its volume's affine does not hold for every slice."""


class MissingGeometryWarning(UserWarning):
    """Frames whose metadata gives no pixel spacing, position or orientation: their affine is a stand-in."""


class ModalityLUTWarning(UserWarning):
    """Frames whose stored values map to modality units through a lookup table, which is not applied."""


class CacheTooSmallWarning(UserWarning):
    """The frame cache cannot hold the frames a node reads each epoch: later epochs fetch again."""


class NotASlideWarning(UserWarning):
    """Image sets of an index given to a patch dataset that hold no whole-slide image: they are left out."""


class NoTissueWarning(UserWarning):
    """A slide none of whose grid patches has the tissue share asked for: it serves no patch."""
