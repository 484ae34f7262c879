"""The GetImageFrame transport: AWS's URL and host prefix, SigV4 the service accepts, typed errors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ahi_torch.client import AHIClient, ClientConfig
from ahi_torch.codecs import decode_frame
from ahi_torch.errors import AccessDenied, EndpointUnreachable, ResourceNotFound, Throttled
from ahi_torch.index import build_index
from ahi_torch.local import LocalAHI
from ahi_torch.local.service.faults import Faults
from ahi_torch.sample.synthetic import SeriesSpec, write_series

pytestmark = pytest.mark.service  # runs a local AHI (or its processes) of its own

DATASTORE, IMAGE_SET = "a" * 32, "b" * 32


def test_real_aws_endpoint_keeps_the_runtime_host_prefix() -> None:
    client = AHIClient(ClientConfig(region="eu-west-1", access_key_id="AKIDEXAMPLE", secret_access_key="secret"))
    transport = client.frame_transport
    assert transport.url(DATASTORE, IMAGE_SET) == (
        f"https://runtime-medical-imaging.eu-west-1.amazonaws.com/datastore/{DATASTORE}/imageSet/{IMAGE_SET}"
        "/getImageFrame"
    )
    # botocore's own request for the same call goes to the same URL (captured before it is sent).
    sent: list[str] = []

    def capture(request: pytest.FixtureRequest, **_):  # type: ignore[no-untyped-def]
        sent.append(request.url)
        raise RuntimeError("captured")

    client.boto3.meta.events.register("before-send.medical-imaging.GetImageFrame", capture)
    with pytest.raises(RuntimeError, match="captured"):
        client.boto3.get_image_frame(
            datastoreId=DATASTORE, imageSetId=IMAGE_SET, imageFrameInformation={"imageFrameId": "c" * 32}
        )
    assert sent == [transport.url(DATASTORE, IMAGE_SET)]
    assert transport.url(DATASTORE, IMAGE_SET).endswith(transport.path(DATASTORE, IMAGE_SET))
    authorization = transport.signed_headers(transport.path(DATASTORE, IMAGE_SET), b"{}")["Authorization"]
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
    assert f"Credential=AKIDEXAMPLE/{today}/eu-west-1/medical-imaging/aws4_request" in authorization
    assert "host" in authorization.split("SignedHeaders=")[1].split(",")[0].split(";")


def test_custom_endpoint_has_no_host_prefix() -> None:
    client = AHIClient(
        ClientConfig(region="us-east-1", endpoint_url="http://127.0.0.1:9", access_key_id="k", secret_access_key="s")
    )
    assert client.frame_transport.url("d", "i") == "http://127.0.0.1:9/datastore/d/imageSet/i/getImageFrame"
    with pytest.raises(EndpointUnreachable, match=r"GetImageFrame to http://127\.0\.0\.1:9"):
        client.frame_transport.get("d", "i", "f")


def test_signed_frames_and_typed_errors(tmp_path: Path) -> None:
    spec = SeriesSpec(patient_id="T1", study_key="t", series_key="t", slices=2, rows=32, columns=32)
    paths = write_series(tmp_path / "dicom", spec)
    faults = Faults()
    with LocalAHI(require_signature=True, faults=faults) as ahi:
        result = ahi.import_dicom(tmp_path / "dicom")
        client = ahi.client()
        index = build_index(client, result.datastore_id, progress=False)
        transport = client.frame_transport
        by_sop = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p).pixel_array for p in paths}
        for row in range(len(index)):
            frame = transport.get(result.datastore_id, index.texts("image_set_id")[row], index.texts("frame_id")[row])
            assert frame.content_type.startswith("image/jph")
            np.testing.assert_array_equal(decode_frame(frame.data), by_sop[index.texts("sop_instance_uid")[row]])
        image_set_id = index.texts("image_set_id")[0]
        with pytest.raises(ResourceNotFound, match="ResourceNotFoundException"):
            transport.get(result.datastore_id, image_set_id, "0" * 32)
        stranger = AHIClient(client.config, secret_access_key="not-the-secret")
        with pytest.raises(AccessDenied) as denied:
            stranger.frame_transport.get(result.datastore_id, image_set_id, index.texts("frame_id")[0])
        assert denied.value.status == 403
        faults.specs.update(Faults.parse("GetImageFrame:throttle=1").specs)
        with pytest.raises(Throttled) as throttled:
            transport.get(result.datastore_id, image_set_id, index.texts("frame_id")[0])
        assert throttled.value.status == 429
        assert ahi.request_counts()["GetImageFrame"] == len(index) + 3, "one request per call, never retried"
