"""Security of the local service: loopback by default, SigV4 when asked, no secrets or PHI in logs."""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore import UNSIGNED
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from ahi_torch.local import LocalAHI
from ahi_torch.local.service.security import signature_required
from ahi_torch.local.service.sigv4 import SignatureVerifier

from ..conftest import ImportedData

pytestmark = pytest.mark.service  # runs a local AHI (or its processes) of its own

SECRET = "s3cr3t-Key-That-Must-Not-Leak"
PATIENT = "Doe^Jane^Confidential"


def _client(ahi: LocalAHI, key: str = "trusted", secret: str = SECRET, **config: object):  # type: ignore[no-untyped-def]
    return boto3.session.Session().client(
        "medical-imaging",
        endpoint_url=ahi.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(inject_host_prefix=False, retries={"max_attempts": 1}, **config),  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def signed() -> LocalAHI:  # type: ignore[misc]
    with LocalAHI(require_signature=True, credentials=("trusted", SECRET)) as ahi:
        yield ahi


def test_binds_loopback_unless_told_otherwise() -> None:
    assert LocalAHI().host == "127.0.0.1"
    assert signature_required("127.0.0.1", None) is False
    assert signature_required("0.0.0.0", None) is True, "exposing the service turns SigV4 on"
    assert signature_required("0.0.0.0", False) is False


def test_correctly_signed_requests_pass(signed: LocalAHI) -> None:
    client = _client(signed)
    datastore_id = client.create_datastore(datastoreName="signed")["datastoreId"]
    arn = f"arn:aws:medical-imaging:us-east-1:123456789012:datastore/{datastore_id}"
    client.tag_resource(resourceArn=arn, tags={"team": "a b/c"})  # percent-encoded ARN in the path
    assert client.list_tags_for_resource(resourceArn=arn)["tags"] == {"team": "a b/c"}
    deadline = time.monotonic() + 10
    while client.get_datastore(datastoreId=datastore_id)["datastoreProperties"]["datastoreStatus"] != "ACTIVE":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    found = client.search_image_sets(datastoreId=datastore_id)  # data-plane calls are signed the same way
    assert found["imageSetsMetadataSummaries"] == []


@pytest.mark.parametrize(
    ("key", "secret", "extra", "code", "message"),
    [
        ("trusted", "wrong-secret", {}, "InvalidSignatureException", "signature we calculated does not match"),
        ("stranger", SECRET, {}, "UnrecognizedClientException", "security token included in the request is invalid"),
        (None, None, {"signature_version": UNSIGNED}, "AccessDeniedException", "not signed"),
    ],
)
def test_other_keys_and_unsigned_requests_get_403(signed: LocalAHI, key, secret, extra, code, message) -> None:  # type: ignore[no-untyped-def]
    """AWS's own codes: an unknown key is UnrecognizedClientException, a bad signature InvalidSignatureException."""
    client = (
        _client(signed, key, secret, **extra)
        if key
        else boto3.session.Session().client(
            "medical-imaging",
            endpoint_url=signed.endpoint_url,
            region_name="us-east-1",
            config=Config(inject_host_prefix=False, **extra),
        )
    )
    with pytest.raises(ClientError, match=message) as info:
        client.list_datastores()
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert info.value.response["Error"]["Code"] == code


def test_tampered_body_is_rejected(signed: LocalAHI) -> None:
    url = f"{signed.endpoint_url}/datastore"
    request = AWSRequest(
        method="POST",
        url=url,
        data=b'{"datastoreName":"honest","clientToken":"t1"}',
        headers={"Content-Type": "application/json"},
    )
    SigV4Auth(Credentials("trusted", SECRET), "medical-imaging", "us-east-1").add_auth(request)
    headers = dict(request.headers.items())
    tampered = urllib.request.Request(
        url, data=b'{"datastoreName":"evil","clientToken":"t1"}', headers=headers, method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(tampered)
    assert info.value.code == 403 and info.value.headers["x-amzn-ErrorType"] == "InvalidSignatureException"
    verifier = SignatureVerifier({"trusted": SECRET}, "us-east-1")
    assert SECRET not in repr(verifier)


def test_no_credentials_or_patient_data_in_logs(signed: LocalAHI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = _client(signed)
    datastore_id = client.create_datastore(datastoreName="logs")["datastoreId"]
    with pytest.raises(client.exceptions.ValidationException) as info:
        client.search_image_sets(
            datastoreId=datastore_id,
            searchCriteria={"filters": [{"operator": "EQUAL", "values": [{"DICOMPatientId": PATIENT * 30}]}]},
        )
    assert PATIENT not in info.value.response["Error"]["Message"], "sensitive values are not echoed"
    stranger = _client(signed, "trusted", "guess")
    with pytest.raises(ClientError, match="InvalidSignatureException"):
        stranger.list_datastores()
    logged = "\n".join(record.getMessage() for record in caplog.records if not record.name.startswith("botocore"))
    assert SECRET not in logged and PATIENT not in logged


def test_no_file_ahi_torch_writes_holds_the_credentials(
    ahi: LocalAHI, synthetic_import: ImportedData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 22.8: manifest.json stored secret_access_key and session_token in plain text."""
    from ahi_torch.cli.main import main
    from ahi_torch.config import build_dataloader, build_dataset, config_hash, load, to_dict, write_manifest

    key, secret, token = "AKIAKEYTHATMUSTNOTLEAK", "Secret/That+Must=Not-Leak", "TokenThatMustNotLeak"
    config = tmp_path / "run.yaml"
    config.write_text(
        f"connection: {{endpoint_url: '{ahi.endpoint_url}', access_key_id: {key}, secret_access_key: '{secret}',"
        f" session_token: {token}}}\n"
        f"datastore: {{id: {synthetic_import.datastore_id}}}\n"
        f"index: {{path: '{tmp_path / 'index.parquet'}'}}\n"
        f"cache: {{dir: '{tmp_path / 'cache'}'}}\n"
        f"loader: {{num_workers: 0, batch_size: 1, error_policy: skip, failure_log: '{tmp_path / 'failures.jsonl'}'}}\n"
    )
    cfg = load(config)
    with caplog.at_level(logging.DEBUG):
        dataset = build_dataset(cfg, progress=False)
        next(iter(build_dataloader(cfg, dataset)))
        write_manifest(cfg, dataset, tmp_path / "run")
        assert main(["cache", "warm", str(config)]) == 0
        assert main(["index", "build", str(config)]) == 0
    produced = [path for path in tmp_path.rglob("*") if path.is_file() and path != config]  # the user's own file
    assert len(produced) > 5, "manifest, index, cache files"
    leaks = [str(path) for path in produced if any(s.encode() in path.read_bytes() for s in (key, secret, token))]
    assert not leaks, f"credentials written to {leaks}"
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("ahi_torch"))
    assert not any(s in ours for s in (key, secret, token)), "nor in ahi_torch's own log lines"
    for text in (repr(cfg), repr(cfg.connection), repr(dataset.fetcher.client), str(to_dict(cfg))):
        assert secret not in text and token not in text and key not in text
    assert to_dict(cfg, secrets=True)["connection"]["secret_access_key"] == secret, "round trips keep them"
    assert config_hash(cfg) == config_hash(load(config, ["connection.secret_access_key=rotated"])), "rotation"


def test_a_service_in_another_region_answers_as_that_region() -> None:
    """Issue 25.4: ARNs and the signature scope follow LocalAHI(region=...) / `local serve --region`."""
    with LocalAHI(region="eu-west-1", require_signature=True, credentials=("trusted", SECRET)) as ahi:
        assert ahi.settings.region == "eu-west-1"
        client = _client(ahi)
        assert client.meta.region_name == "us-east-1"
        with pytest.raises(ClientError) as refused:
            client.list_datastores()
        assert refused.value.response["Error"]["Code"] == "InvalidSignatureException"
        assert "eu-west-1" in refused.value.response["Error"]["Message"]
        local = ahi.boto3_client()
        created = local.create_datastore(datastoreName="eu")
        assert (
            created["datastoreId"]
            and ":eu-west-1:"
            in local.get_datastore(datastoreId=created["datastoreId"])["datastoreProperties"]["datastoreArn"]
        )
        assert ahi.client().list_datastores()["datastoreSummaries"], "ahi_torch's own client signs for eu-west-1"
