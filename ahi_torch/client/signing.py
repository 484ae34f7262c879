"""FrameSigner: SigV4 for GetImageFrame, the signature botocore's ``SigV4Auth`` computes, at a fraction of its CPU.

``SigV4Auth.add_auth`` costs about 0.18 ms a request here: it parses the URL twice, builds
``email.message`` header maps twice and derives the signing key with four HMACs every time. For
frames, fetched thousands of times a second, that was the largest cost of a request above the
transfer itself (issue 23). Every GetImageFrame request has the same shape (one host, a POST of a
small JSON body, the same headers), so what does not change is computed once:

* the host header and the canonical header names;
* the signing key, once per day, region and secret (SigV4's key derivation depends on nothing
  else);

and each request costs a SHA-256 of its body and of its canonical request plus one HMAC. The
result is byte for byte what botocore signs (``tests/client/test_signing.py`` compares both for every
kind of credentials), so AHI cannot tell the two apart. Credentials are frozen per request, so
refreshed and temporary credentials (with their session token) work as with botocore.

>>> signer = FrameSigner("https://runtime-medical-imaging.us-east-1.amazonaws.com", "us-east-1", "medical-imaging")
>>> headers = signer.headers(credentials.get_frozen_credentials(), path, body)
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
from typing import Any
from urllib.parse import quote, urlsplit

from botocore.utils import normalize_url_path

ALGORITHM = "AWS4-HMAC-SHA256"
CONTENT_TYPE = "application/json"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_header(url: str) -> str:
    """The Host header botocore signs for ``url``: lower case, without a default port."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


@functools.lru_cache(maxsize=4096)
def canonical_path(path: str) -> str:
    """The path as SigV4 canonicalises it (botocore's normalisation and quoting); one per image set."""
    return quote(normalize_url_path(path), safe="/~")


class FrameSigner:
    """Signs GetImageFrame requests for one endpoint, region and service; thread-safe."""

    def __init__(self, endpoint_url: str, region: str, service: str, user_agent: str = "") -> None:
        self.host = host_header(endpoint_url)
        self.region = region
        self.service = service
        self.user_agent = user_agent
        self._key: tuple[tuple[str, str], bytes] | None = None  # ((secret, date), signing key)

    def signing_key(self, secret_key: str, date: str) -> bytes:
        """SigV4's derived key for ``date`` (YYYYMMDD), kept until the date or the secret changes."""
        cached = self._key
        if cached is not None and cached[0] == (secret_key, date):
            return cached[1]
        key = f"AWS4{secret_key}".encode()
        for part in (date, self.region, self.service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        self._key = ((secret_key, date), key)
        return key

    def headers(self, credentials: Any, path: str, body: bytes, now: dt.datetime | None = None) -> dict[str, str]:
        """Every header of the request, ``Authorization`` included.

        Args:
            credentials: frozen botocore credentials (``access_key``, ``secret_key``, ``token``).
            path: the request path, already percent-encoded as it goes on the wire.
            body: the JSON body.
            now: the signing time (UTC); the current time by default.
        """
        timestamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
        date = timestamp[:8]
        signed = {"content-type": CONTENT_TYPE, "host": self.host, "x-amz-date": timestamp}
        if credentials.token:
            signed["x-amz-security-token"] = credentials.token
        names = ";".join(signed)  # already in sorted order: content-type < host < x-amz-date < x-amz-security-token
        canonical = "\n".join(
            (
                "POST",
                canonical_path(path),
                "",
                "".join(f"{name}:{' '.join(value.split())}\n" for name, value in signed.items()),
                names,
                hashlib.sha256(body).hexdigest(),
            )
        )
        scope = f"{date}/{self.region}/{self.service}/aws4_request"
        to_sign = f"{ALGORITHM}\n{timestamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self.signing_key(credentials.secret_key, date), to_sign.encode(), hashlib.sha256)
        headers = {"Content-Type": CONTENT_TYPE, "X-Amz-Date": timestamp}
        if credentials.token:
            headers["X-Amz-Security-Token"] = credentials.token
        if self.user_agent:
            headers["User-Agent"] = self.user_agent  # not signed, as botocore leaves it out
        headers["Authorization"] = (
            f"{ALGORITHM} Credential={credentials.access_key}/{scope}, SignedHeaders={names}, "
            f"Signature={signature.hexdigest()}"
        )
        return headers
