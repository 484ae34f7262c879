"""Every DICOM file pydicom and pydicom-data ship, imported into the local AHI and read back (issue 22).

Each file with pixels and a SOP instance of its own is imported in one job, then read through
``FrameDataset(rescale=True)`` and compared with pydicom's own decode through the file's rescale
(functional groups included; pydicom's ``apply_rescale`` ignores them), with the pixel spacing and
orientation the index holds compared with what the file says. The verdict of every file is
printed. Every file reads back exactly, within JPEG error for lossy syntaxes, or with a warning
that says why its values differ; only a deliberately broken file (``badVR.dcm``) is refused.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from ahi_torch.datasets import FrameDataset
from ahi_torch.errors import ModalityLUTWarning
from ahi_torch.fetch import FrameFetcher
from ahi_torch.index import build_index
from ahi_torch.local import LocalAHI

pytestmark = pytest.mark.service  # runs a local AHI (or its processes) of its own

#: Transfer syntaxes whose decoders may differ by rounding: JPEG baseline/extended, JPEG-LS
#: near-lossless, JPEG 2000 and HTJ2K lossy.
LOSSY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91"}


def shipped_files() -> list[Path]:
    """Every file under pydicom's and pydicom-data's test data folders (listed, never downloaded)."""
    roots = [Path(pydicom.__file__).parent / "data" / "test_files"]
    try:
        import data_store  # pydicom-data

        roots.append(Path(data_store.__file__).parent / "data")
    except ImportError:  # pragma: no cover - pydicom-data is in the dev extras
        pass
    return sorted(p for root in roots for p in root.rglob("*") if p.is_file())


def _group_value(ds: pydicom.Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """What PS3.3 C.7.6.16 says applies to a frame: its own functional group, the shared one, the top level."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if not isinstance(items, pydicom.Sequence) or len(items) <= index:
            continue
        inner = items[index].get(sequence)
        if isinstance(inner, pydicom.Sequence) and len(inner) and keyword in inner[0]:
            return inner[0][keyword].value
    return ds.get(keyword)


@dataclass
class Candidate:
    path: Path
    ds: pydicom.Dataset


def candidates() -> list[Candidate]:
    """Files pydicom reads with pixel data and a SOP instance UID, one per instance."""
    found: dict[str, Candidate] = {}
    for path in shipped_files():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path)
        except Exception:
            continue
        uid = str(ds.get("SOPInstanceUID", "") or "")
        if "PixelData" not in ds or not uid or uid in found or "SeriesInstanceUID" not in ds:
            continue
        found[uid] = Candidate(path, ds)
    return list(found.values())


def expected_frames(ds: pydicom.Dataset) -> list[np.ndarray]:
    """pydicom's pixels of every frame (colour as RGB), monochrome ones through the rescale that applies."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
        stack = pixels if frames > 1 else pixels[None]
    except Exception:
        # pydicom's plugins refuse some streams AHI accepts (Pillow: 12-bit JPEG Extended); the
        # reference is then imagecodecs' decode, the one the local AHI falls back to as well.
        if str(ds.file_meta.TransferSyntaxUID) != "1.2.840.10008.1.2.4.51":
            raise
        import imagecodecs
        from pydicom.encaps import generate_frames

        stack = np.stack([imagecodecs.jpeg8_decode(f) for f in generate_frames(ds.PixelData, number_of_frames=frames)])
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        return [np.asarray(f) for f in stack]
    if "ModalityLUTSequence" in ds:
        return [np.asarray(apply_modality_lut(f, ds), dtype=np.float64) for f in stack]
    out = []
    for number, frame in enumerate(stack):
        slope = _group_value(ds, number, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _group_value(ds, number, "PixelValueTransformationSequence", "RescaleIntercept")
        slope = float(slope) if slope not in (None, "") and float(slope) != 0 else 1.0
        intercept = float(intercept) if intercept not in (None, "") else 0.0
        out.append(frame.astype(np.float64) * slope + intercept)
    return out


def verdict(dataset: FrameDataset, ds: pydicom.Dataset, warned: list[str]) -> tuple[str, str]:
    """(kind, detail): exact, lossy, warned (values differ and the dataset said so), read-error or WRONG."""
    try:
        items = [dataset[i] for i in range(len(dataset))]
    except Exception as error:
        return "read-error", f"{type(error).__name__}: {str(error)[:90]}"
    try:
        expected = expected_frames(ds)
    except Exception as error:
        return "pydicom-cannot", f"{type(error).__name__}: {str(error)[:90]}"
    if len(items) != len(expected):
        return "WRONG", f"{len(items)} frames indexed, the file has {len(expected)}"
    worst = 0.0
    for item in items:
        want = expected[item["meta"]["frame_number"] - 1]
        got = item["image"].numpy().astype(np.float64)
        got = got[0] if got.shape[0] == 1 and want.ndim == 2 else np.moveaxis(got, 0, -1)
        if got.shape != want.shape:
            return "WRONG", f"shape {got.shape}, pydicom {want.shape}"
        # float32 output: a rescale with a fractional slope rounds in the last of its 24 bits
        rounding = float(np.abs(want).max()) * 2.0**-22 if want.size else 0.0
        difference = float(np.abs(got - want).max()) if want.size else 0.0
        worst = max(worst, difference if difference > rounding else 0.0)
    spacing = _group_value(ds, 0, "PixelMeasuresSequence", "PixelSpacing")
    table = dataset.frame_index.table
    if spacing is not None and len(spacing) == 2:
        mine = (table.column("pixel_spacing_row")[0].as_py(), table.column("pixel_spacing_col")[0].as_py())
        if mine[0] is None or not np.allclose(mine, [float(s) for s in spacing], rtol=1e-6):
            return "WRONG", f"pixel spacing {mine}, the file says {list(spacing)}"
    orientation = _group_value(ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient")
    if orientation is not None and len(orientation) == 6:
        mine_orientation = table.column("image_orientation")[0].as_py()
        if mine_orientation is None or not np.allclose(mine_orientation, [float(o) for o in orientation]):
            return "WRONG", f"orientation {mine_orientation}, the file says {list(orientation)}"
    if worst == 0:
        return "exact", ""
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    bits = int(ds.get("BitsStored", 8) or 8)
    if syntax in LOSSY and worst <= max(4.0, 0.02 * 2**bits):
        return "lossy", f"max difference {worst:g} ({syntax})"
    if warned:
        return "warned", f"max difference {worst:g}; {warned[0][:80]}"
    return "WRONG", f"max difference {worst:g} from pydicom ({syntax})"


@pytest.mark.slow
def test_every_shipped_file_reads_as_pydicom_reads_it_or_fails_loudly(tmp_path: Path) -> None:
    found = candidates()
    assert len(found) > 60, "pydicom and pydicom-data ship more files than that"
    root = tmp_path / "files"
    for number, candidate in enumerate(found):
        target = root / f"{number:03d}" / candidate.path.name
        target.parent.mkdir(parents=True)
        target.write_bytes(candidate.path.read_bytes())
    with LocalAHI() as ahi:
        result = ahi.import_dicom(root)
        assert result.status == "COMPLETED", result.message
        refused = {Path(f["inputFile"]).parent.name: f["exception"]["message"] for f in result.failures}
        client = ahi.client()
        index = build_index(client, result.datastore_id, include_non_primary=True, progress=False)
        sops = np.asarray(index.texts("sop_instance_uid"), dtype=object)
        verdicts: list[tuple[str, str, str]] = []
        for number, candidate in enumerate(found):
            name = f"{candidate.path.parent.name}/{candidate.path.name}"
            if f"{number:03d}" in refused:
                verdicts.append((name, "refused", refused[f"{number:03d}"][:90]))
                continue
            rows = np.flatnonzero(sops == str(candidate.ds.SOPInstanceUID))
            if not len(rows):
                verdicts.append((name, "WRONG", "imported but not indexed"))
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                dataset = FrameDataset(index.take(rows), FrameFetcher(client, max_workers=2), rescale=True, dtype=None)
            about_values = [str(w.message) for w in caught if issubclass(w.category, ModalityLUTWarning)]
            verdicts.append((name, *verdict(dataset, candidate.ds, about_values)))
    width = max(len(name) for name, _, _ in verdicts)
    print(f"\n{len(verdicts)} files: {dict(Counter(kind for _, kind, _ in verdicts))}")
    for name, kind, detail in verdicts:
        print(f"  {name:<{width}}  {kind:<14} {detail}")
    wrong = [v for v in verdicts if v[1] == "WRONG"]
    assert not wrong, f"files that came back with other values or geometry: {wrong}"
    unread = [v for v in verdicts if v[1] in ("read-error", "pydicom-cannot")]
    assert not unread, f"files imported that cannot be read back: {unread}"
    refused = [name for name, kind, _ in verdicts if kind == "refused"]
    assert refused == ["test_files/badVR.dcm"], f"only the deliberately broken file is refused, not {refused}"
