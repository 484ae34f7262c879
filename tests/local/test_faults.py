"""Fault injection and page tokens of the local AHI as units (local/faults.py, local/pagination.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from ahi_torch.errors import ConfigError
from ahi_torch.local.errors import ValidationException
from ahi_torch.local.service.faults import Faults, FaultSpec
from ahi_torch.local.service.pagination import decode_token, encode_token, page
from ahi_torch.local.service.protocol import HttpResponse

pytestmark = pytest.mark.service  # runs a local AHI (or its processes) of its own


def test_specs_parse_per_operation_with_a_default() -> None:
    faults = Faults.parse("GetImageFrame:throttle=0.5,bitflip=1; *:latency=0.01 ;ListDatastores:error=1")
    assert faults.spec("GetImageFrame") == FaultSpec(throttle=0.5, bitflip=1.0)
    assert faults.spec("ListDatastores") == FaultSpec(error=1.0)
    assert faults.spec("SearchImageSets") == FaultSpec(latency=0.01), "'*' covers operations without their own"
    assert Faults.parse("").specs == {}
    assert Faults.parse("GetImageFrame:bitflip=1").spec("GetImageFrame").latency == 0.0, "no latency unless asked"
    assert FaultSpec(throttle=1.0).throttle == 1.0 and FaultSpec(latency=5.0).latency == 5.0, (
        "1 is a rate; latency is s"
    )
    for text, message in (
        ("*:throttle=1.5", "between 0 and 1"),
        ("*:throttle=-0.1", "between 0 and 1"),
        ("*:latency=-1", "latency is seconds"),
        ("GetImageFrame", "must look like Operation:kind=rate"),
        ("*:throttle=often", "needs a number"),
    ):
        with pytest.raises(ConfigError, match=message):
            Faults.parse(text)


@pytest.mark.parametrize("size", [1, 2, 7, 4096])
def test_a_bitflip_changes_exactly_one_bit_in_the_second_half(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    faults = Faults.parse("GetImageFrame:bitflip=1", seed=size)
    damaged = faults.corrupt("GetImageFrame", HttpResponse(200, {}, body)).body
    assert len(damaged) == len(body)
    changed = [i for i, (a, b) in enumerate(zip(body, damaged, strict=True)) if a != b]
    assert len(changed) == 1 and changed[0] >= size // 2
    assert bin(body[changed[0]] ^ damaged[changed[0]]).count("1") == 1, "one bit"
    assert faults.injected["bitflip"] == 1


def test_truncation_and_drops_damage_only_what_they_say() -> None:
    body = b"x" * 100
    cut = Faults.parse("GetImageFrame:truncate=1").corrupt("GetImageFrame", HttpResponse(200, {}, body))
    assert cut.body == body[:50]
    dropped = Faults.parse("*:drop=1").corrupt("ListDatastores", HttpResponse(200, {}, body))
    assert dropped.body == body and dropped.drop_after == 50
    untouched = Faults.parse("GetImageFrame:bitflip=1").corrupt("ListDatastores", HttpResponse(200, {}, body))
    assert untouched.body == body, "only frames are damaged in place"


def test_page_tokens_are_bound_to_their_query_and_never_negative() -> None:
    items = list(range(7))
    first, token = page(items, None, 3, "q")
    assert first == [0, 1, 2] and decode_token(token, "q") == 3
    second, token = page(items, token, 3, "q")
    third, last = page(items, token, 3, "q")
    assert second == [3, 4, 5] and third == [6] and last is None
    with pytest.raises(ValidationException, match="different request"):
        decode_token(encode_token(3, "q"), "another query")
    with pytest.raises(ValidationException, match="different request"):
        decode_token(encode_token(-1, "q"), "q")
    forged = base64.urlsafe_b64encode(json.dumps({"o": "x", "q": "q"}).encode()).decode()
    with pytest.raises(ValidationException, match="Invalid nextToken"):
        decode_token(forged, "q")
    assert decode_token(None, "q") == decode_token("", "q") == 0


def test_upload_keys_never_collide_whatever_the_inputs(tmp_path: Path) -> None:
    """One folder keeps its layout; several inputs (folders and files mixed) each get a folder of their own."""
    from ahi_torch.local.imports.uploads import upload_plan

    for folder in ("a", "b"):
        (tmp_path / folder / "sub").mkdir(parents=True)
        (tmp_path / folder / "1.dcm").write_bytes(b"x")
        (tmp_path / folder / "sub" / "1.dcm").write_bytes(b"y")
    assert [key for _, key in upload_plan([tmp_path / "a"])] == ["1.dcm", "sub/1.dcm"]
    assert [key for _, key in upload_plan([tmp_path / "a" / "1.dcm"])] == ["1.dcm"]
    mixed = upload_plan([tmp_path / "a", tmp_path / "b" / "1.dcm", tmp_path / "b" / "sub" / "1.dcm"])
    keys = [key for _, key in mixed]
    assert keys == ["0/1.dcm", "0/sub/1.dcm", "1/1.dcm", "2/1.dcm"] and len(set(keys)) == len(keys)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        upload_plan([tmp_path / "missing"])
