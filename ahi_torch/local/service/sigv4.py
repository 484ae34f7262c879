"""SigV4 verification of incoming requests against configured credentials.

The signature is recomputed with botocore's own ``SigV4Auth`` over the headers the client
listed as signed, the raw path and query, and the body, at the client's ``X-Amz-Date``; a
request that is unsigned, signed with another key, for another service or region, altered, or
more than 15 minutes old is refused with 403 as AWS refuses it: ``UnrecognizedClientException`` for
an unknown access key, ``InvalidSignatureException`` for a signature that does not match, has
expired or is scoped to another service or region, ``AccessDeniedException`` for a request that
is not SigV4-signed at all. Secrets never reach a log line.
"""

from __future__ import annotations

import datetime as dt
import hmac
import re

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from starlette.requests import Request
from starlette.responses import Response

from ..errors import AccessDeniedException, InvalidSignatureException, ServiceException, UnrecognizedClientException

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<signed>[^,]+),\s*Signature=(?P<signature>[0-9a-f]{64})"
)
MAX_SKEW = dt.timedelta(minutes=15)
SERVICE = "medical-imaging"


class SignatureVerifier:
    """A request guard that admits only requests signed with one of ``credentials``."""

    def __init__(self, credentials: dict[str, str], region: str) -> None:
        self._secrets = dict(credentials)
        self.region = region
        self.rejected = 0

    def __repr__(self) -> str:
        return f"SignatureVerifier({len(self._secrets)} keys, region={self.region})"

    def _deny(self, message: str, error: type[ServiceException] = AccessDeniedException) -> None:
        self.rejected += 1
        raise error(message)

    async def __call__(self, request: Request, operation: str, body: bytes) -> Response | None:
        header = request.headers.get("authorization") or ""
        if not header:
            self._deny("Missing Authentication Token: the request is not signed")
        found = _AUTHORIZATION.fullmatch(header.strip())
        if not found:
            self._deny("The Authorization header is not a SigV4 signature")
        assert found is not None
        secret = self._secrets.get(found["key"])
        if secret is None:
            self._deny("The security token included in the request is invalid.", UnrecognizedClientException)
        if found["service"] != SERVICE or found["region"] != self.region:
            self._deny(
                f"Credential should be scoped to service {SERVICE} in region {self.region}", InvalidSignatureException
            )
        stamp = request.headers.get("x-amz-date", "")
        try:
            when = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            self._deny("X-Amz-Date is missing or malformed", InvalidSignatureException)
        if abs(dt.datetime.now(dt.timezone.utc) - when) > MAX_SKEW or not stamp.startswith(found["date"]):
            self._deny(
                "Signature expired: the request time is more than 15 minutes from the server time",
                InvalidSignatureException,
            )
        signed = found["signed"].split(";")
        if "host" not in signed:
            self._deny("The host header must be signed", InvalidSignatureException)
        raw_path = (request.scope.get("raw_path") or request.url.path.encode()).decode("latin-1").split("?", 1)[0]
        query = request.scope.get("query_string", b"").decode("latin-1")
        url = f"{request.url.scheme}://{request.headers.get('host', '')}{raw_path}" + (f"?{query}" if query else "")
        headers = {name: request.headers.get(name, "") for name in signed}
        aws_request = AWSRequest(method=request.method, url=url, headers=headers, data=body)
        aws_request.context["timestamp"] = stamp
        auth = SigV4Auth(Credentials(found["key"], secret), SERVICE, self.region)
        expected = auth.signature(auth.string_to_sign(aws_request, auth.canonical_request(aws_request)), aws_request)
        if not hmac.compare_digest(expected, found["signature"]):
            self._deny(
                "The request signature we calculated does not match the signature you provided. "
                "Check your AWS Secret Access Key and signing method.",
                InvalidSignatureException,
            )
        return None
