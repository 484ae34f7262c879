"""FrameSigner signs exactly as botocore's SigV4Auth does: the same headers, byte for byte."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from ahi_torch.client.signing import FrameSigner, host_header

ENDPOINTS = [
    "https://runtime-medical-imaging.us-east-1.amazonaws.com",
    "https://runtime-medical-imaging.eu-west-1.amazonaws.com:443",
    "http://127.0.0.1:8080",
    "http://LocalHost:80",
    "http://[::1]:9000",
    "https://proxy.example.org:8443/prefix",
]
_ids = st.text(alphabet="0123456789abcdef", min_size=1, max_size=32)


def _botocore_headers(credentials: Credentials, url: str, body: bytes, region: str, when: dt.datetime) -> dict:
    request = AWSRequest(
        "POST", url, data=body, headers={"Content-Type": "application/json", "User-Agent": "ahi-torch/test"}
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("botocore.auth.get_current_datetime", lambda: when)
        SigV4Auth(credentials, "medical-imaging", region).add_auth(request)
    return dict(request.headers.items())


@settings(max_examples=150, deadline=None)
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    region=st.sampled_from(["us-east-1", "eu-west-1", "ap-southeast-2"]),
    datastore=_ids,
    image_set=_ids,
    frame=_ids,
    token=st.none() | st.text(alphabet="ABCDEFabcdef0123456789/+= ", min_size=1, max_size=40),
    seconds=st.integers(0, 3 * 365 * 86400),
)
def test_every_request_is_signed_as_botocore_signs_it(
    endpoint, region, datastore, image_set, frame, token, seconds
) -> None:  # type: ignore[no-untyped-def]
    when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=seconds)
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    path = f"/datastore/{datastore}/imageSet/{image_set}/getImageFrame"
    prefix = endpoint.split("/", 3)[3] if endpoint.count("/") > 2 else ""
    path = (f"/{prefix}" if prefix else "") + path
    url = endpoint.split("/prefix")[0] + path
    body = json.dumps({"imageFrameId": frame}).encode()
    signer = FrameSigner(endpoint, region, "medical-imaging", "ahi-torch/test")
    ours = signer.headers(credentials.get_frozen_credentials(), path, body, now=when)
    assert ours == _botocore_headers(credentials, url, body, region, when)
    again = signer.headers(credentials.get_frozen_credentials(), path, body, now=when + dt.timedelta(days=1))
    assert again["Authorization"] != ours["Authorization"], "the next day's key is derived again"


def test_rotated_credentials_are_signed_with_their_own_key_the_same_day() -> None:
    """The cached signing key belongs to one secret: a refreshed secret derives its own."""
    when = dt.datetime(2026, 6, 1, 12, tzinfo=dt.timezone.utc)
    signer = FrameSigner(ENDPOINTS[0], "us-east-1", "medical-imaging", "ahi-torch/test")
    path, body = "/datastore/d/imageSet/i/getImageFrame", b'{"imageFrameId":"f"}'
    url = ENDPOINTS[0] + path
    for credentials in (Credentials("AKIDONE", "first-secret"), Credentials("AKIDTWO", "second-secret", "token")):
        ours = signer.headers(credentials.get_frozen_credentials(), path, body, now=when)
        assert ours == _botocore_headers(credentials, url, body, "us-east-1", when)


def test_the_host_header_drops_default_ports_only() -> None:
    assert host_header("https://a.example.com:443/x") == "a.example.com"
    assert host_header("http://A.Example.com:80") == "a.example.com"
    assert host_header("http://127.0.0.1:8080/") == "127.0.0.1:8080"
    assert host_header("http://[::1]:9000") == "[::1]:9000"
