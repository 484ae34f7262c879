"""The AHI error classes the local service raises, with the HTTP status the model gives each.

Handlers raise these; the HTTP layer turns them into the restJson1 error wire format
(`x-amzn-ErrorType` header and a `{"message": ...}` body) that botocore maps onto
`client.exceptions.<Name>`.
"""

from __future__ import annotations


class ServiceException(Exception):
    """An error the service reports to the caller; subclasses name the modelled exception."""

    code = "InternalServerException"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationException(ServiceException):
    code, status = "ValidationException", 400


class ConstraintViolation(ValidationException):
    """An update or copy that breaks AHI's metadata constraints.

    AHI accepts such a request and records the failure on a new version (``UPDATE_FAILED`` or
    ``COPY_FAILED`` with this message); the handlers catch it. Raised to a caller only where AHI
    itself rejects the request.
    """


class SerializationException(ServiceException):
    """The body is not JSON or a value has the wrong type (restJson1's framework error)."""

    code, status = "SerializationException", 400


class BadRequestException(ServiceException):
    code, status = "BadRequestException", 400


class AccessDeniedException(ServiceException):
    code, status = "AccessDeniedException", 403


class UnrecognizedClientException(ServiceException):
    """An access key the service does not know (AWS's own code, outside the service model)."""

    code, status = "UnrecognizedClientException", 403


class InvalidSignatureException(ServiceException):
    """A known key whose signature does not match, has expired or is scoped elsewhere (AWS's own code)."""

    code, status = "InvalidSignatureException", 403


class ResourceNotFoundException(ServiceException):
    code, status = "ResourceNotFoundException", 404


class UnknownOperationException(ServiceException):
    code, status = "UnknownOperationException", 404


class NotAcceptableException(ServiceException):
    code, status = "NotAcceptableException", 406


class ConflictException(ServiceException):
    code, status = "ConflictException", 409


class ServiceQuotaExceededException(ServiceException):
    code, status = "ServiceQuotaExceededException", 402


class ThrottlingException(ServiceException):
    code, status = "ThrottlingException", 429


class InternalServerException(ServiceException):
    code, status = "InternalServerException", 500


class ServiceUnavailableException(ServiceException):
    code, status = "ServiceUnavailableException", 503
