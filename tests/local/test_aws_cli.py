"""The AWS CLI works against the local AHI (control plane as is, data plane with prefix injection off)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ahi_torch.local import LocalAHI

from ..conftest import ImportedData

pytestmark = pytest.mark.service  # runs a local AHI (or its processes) of its own


def _aws() -> list[str]:
    here = Path(sys.executable).parent / "aws"
    if here.exists():
        return [str(here)]
    found = shutil.which("aws")
    if found is None:
        pytest.skip("the AWS CLI is not installed")
    return [found]


def _run(ahi: LocalAHI, *args: str, disable_prefix: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="local", AWS_SECRET_ACCESS_KEY="local", AWS_DEFAULT_REGION="us-east-1")
    if disable_prefix:
        env["AWS_DISABLE_HOST_PREFIX_INJECTION"] = "true"
    completed = subprocess.run(
        [*_aws(), "medical-imaging", *args, "--endpoint-url", ahi.endpoint_url, "--output", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def test_cli_lists_datastores(ahi: LocalAHI, synthetic_import: ImportedData) -> None:
    listed = _run(ahi, "list-datastores", disable_prefix=False)
    assert synthetic_import.datastore_id in {d["datastoreId"] for d in listed["datastoreSummaries"]}


def test_cli_data_plane_needs_prefix_injection_off(ahi: LocalAHI, synthetic_import: ImportedData) -> None:
    found = _run(ahi, "search-image-sets", "--datastore-id", synthetic_import.datastore_id, disable_prefix=True)
    assert {s["imageSetId"] for s in found["imageSetsMetadataSummaries"]} >= set(synthetic_import.result.image_set_ids)
