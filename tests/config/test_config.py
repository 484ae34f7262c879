"""Config loading: IDs stay text, filters are checked when the config loads, overrides read like YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ahi_torch import config
from ahi_torch.config.build import searches_of
from ahi_torch.errors import ConfigError
from ahi_torch.fetch import RetryPolicy
from ahi_torch.local import LocalAHI

from ..conftest import ImportedData


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_ids_and_uids_stay_text(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
search:
  searches:
    - [{patient_id: 0123}, {is_primary: true}]
    - [{accession_number: 1e3}]
    - [{study_id: NO}]
    - [{series_uid: 1.2.840.10008}]
    - [{study_date_between: [20240101, 20241231]}]
datastore: {name: 00042}
loader: {batch_size: 0x10}
""",
    )
    cfg = config.load(path)
    values = [next(iter(f.values())) for group in cfg.search.searches for f in group]
    assert values == ["0123", True, "1e3", "NO", "1.2.840.10008", ["20240101", "20241231"]]
    assert cfg.datastore.name == "00042"
    assert cfg.loader.batch_size == 16, "numbers still read as YAML numbers"
    criteria = [s.criteria() for s in searches_of(cfg)]
    assert criteria[0]["filters"][0] == {"operator": "EQUAL", "values": [{"DICOMPatientId": "0123"}]}
    assert criteria[0]["filters"][1] == {"operator": "EQUAL", "values": [{"isPrimary": True}]}


def test_overrides_keep_text_too(tmp_path: Path) -> None:
    path = write(tmp_path, "search: {filters: [{patient_id: P1}]}\n")
    cfg = config.load(path, overrides=["search.filters=[{patient_id: 0077}]", "datastore.id=0123", "loader.seed=010"])
    assert cfg.search.filters == [{"patient_id": "0077"}]
    assert cfg.datastore.id == "0123" and cfg.loader.seed == 8  # an int key reads YAML 1.1's octal


def test_overrides_reach_the_fetch_section_however_deep(tmp_path: Path) -> None:
    """``-o fetch.retry.max_attempts=2`` from the CLI sets the fetcher's retry policy, as the YAML would."""
    path = write(tmp_path, "fetch: {reduce: 1}\n")
    cfg = config.load(path, overrides=["fetch.retry.max_attempts=2", "fetch.max_workers=3", "fetch.decoder=openjpeg"])
    assert (cfg.fetch.reduce, cfg.fetch.retry.max_attempts, cfg.fetch.max_workers) == (1, 2, 3)
    assert cfg.fetch.decoder == "openjpeg" and cfg.fetch.retry.base_delay == RetryPolicy().base_delay
    with pytest.raises(ConfigError, match="max_attempts must be at least 1"):
        config.load(path, overrides=["fetch.retry.max_attempts=0"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("search: {filters: [{patient_idd: P1}]}", r"search.filters\[0\].patient_idd: unknown filter"),
        ("search: {filters: [{is_primary: maybe}]}", r"is_primary: expected true or false, got 'maybe'"),
        ("search: {filters: [{created_between: [2024-01-01]}]}", r"created_between: expected \[start, end\]"),
        ("search: {filters: [{created_between: [soon, later]}]}", "neither an ISO 8601 time"),
        ("search: {filters: [{patient_id: P1}, {is_primary: true}, {study_id: S}]}", "at most two filters"),
        ("search: {filters: [{patient_id: P1, study_id: S}]}", "exactly one key"),
        ("loader: {sampler: random}", "loader.sampler: 'random' is not one of"),
        ("lodaer: {}", "lodaer: unknown key"),
    ],
)
def test_bad_values_fail_when_the_config_loads(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(write(tmp_path, text))


def test_config_error_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        config.load(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("split: {fractions: {train: 0.75, val: 0.5}}", "split: fractions must add up to 1, not 1.25"),
        ("split: {fractions: {train: 1.0}, use: val}", "split: use: 'val' is not one of train"),
        ("loader: {batch_size: -4}", "loader: batch_size must be at least 1, not -4"),
        ("loader: {num_workers: -1}", "loader: num_workers must be at least 0, not -1"),
        ("transforms: [{name: resise}]", "unknown transform 'resise'"),
        ("transforms: [{name: resize, args: {sise: [4, 4]}}]", "transform 'resize'"),
        ("intensity: {window: [40]}", r"intensity: window must be \[center, width\]"),
        ("intensity: {window: [40, 0]}", "with a positive width"),
        ("cache: {size_gb: 0}", "cache: size_gb must be positive"),
        ("connection: {max_attempts: 0}", "connection: max_attempts must be at least 1"),
        ("fetch: {retry: {max_attempts: 0}}", "fetch.retry: max_attempts must be at least 1, not 0"),
        ("fetch: {max_workers: 0}", "fetch: max_workers must be at least 1, not 0"),
        ("fetch: {decoder: pillow}", "fetch: decoder: 'pillow' is not one of imagecodecs, openjpeg"),
        # Keys that moved to the fetch: section fail naming themselves, not silently ignored.
        ("intensity: {reduce: 1}", r"intensity.reduce: unknown key \(allowed: rescale, window, dicom_window\)"),
        ("intensity: {verify: false}", "intensity.verify: unknown key"),
        ("loader: {fetch_threads: 4}", "loader.fetch_threads: unknown key"),
        ("loader: {fetch_attempts: 2}", "loader.fetch_attempts: unknown key"),
        ("labels: {table: x.csv, value_type: integer}", "labels: value_type: 'integer' is not one of"),
        # Option lists come from the classes that use them (one definition each).
        ("labels: {table: x.csv, join_on: mrn}", "labels: join_on: 'mrn' is not one of patient_id, "),
        ("split: {fractions: {a: 1.0}, by: scanner}", "split: by: 'scanner' is not one of patient_id, "),
        ("cache: {mode: raw}", "cache: mode: 'raw' is not one of decoded, encoded"),
        ("loader: {error_policy: ignore}", "loader: error_policy: 'ignore' is not one of raise, skip, retry"),
        ("loader: {pin_by: scanner}", "loader: pin_by: 'scanner' is not one of image_set_id, "),
        ("view: slides", "view: 'slides' is not one of frames, volumes, patches"),
        ("patches: {level: 1, mpp: 0.5}", "patches: give patches either a level or an mpp"),
        ("patches: {size: 0}", "patches: size must be a positive number"),
        ("patches: {mpp: -1}", "patches: mpp must be positive"),
        ("patches: {tissue: 2}", r"patches: tissue is a share of the patch in \[0, 1\]"),
    ],
)
def test_every_value_is_checked_when_the_config_loads(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(write(tmp_path, text))


def _ct_config(ahi: LocalAHI, imported, tmp_path: Path, **sections: object):  # type: ignore[no-untyped-def]
    """A config over the synthetic import's CT frames, uncached, with ``sections`` added."""
    from ahi_torch.config.schema import Config

    return config.from_dict(
        Config,
        {
            "connection": {"endpoint_url": ahi.endpoint_url},
            "datastore": {"id": imported.datastore_id},
            "index": {"path": str(tmp_path / "index.parquet")},
            "search": {"modalities": ["CT"]},
            "cache": {"enabled": False},
            **sections,
        },
    )


@pytest.mark.parametrize("sampler", ["sequential", "shuffle", "locality", "weighted", "class_balanced"])
def test_every_sampler_option_builds_a_working_loader(
    ahi: LocalAHI, synthetic_import: ImportedData, tmp_path: Path, sampler: str
) -> None:
    from collections import Counter

    from ahi_torch.config import build_dataloader, build_dataset, build_sampler
    from ahi_torch.samplers import ShuffleSampler, WeightedSampler

    cfg = _ct_config(
        ahi,
        synthetic_import,
        tmp_path,
        labels={"column": "slice_index"},
        loader={"sampler": sampler, "batch_size": 4, "num_workers": 0, "seed": 3},
        fetch={"retry": {"max_attempts": 2}, "max_workers": 3, "reduce": 1, "verify": False},
    )
    dataset = build_dataset(cfg, progress=False)
    fetcher = dataset.fetcher
    assert (fetcher.retry.max_attempts, fetcher.max_workers, fetcher.reduce, fetcher.verify) == (2, 3, 1, False)
    built = build_sampler(cfg, dataset)
    order = list(built)  # type: ignore[arg-type]
    assert len(order) == len(dataset) == 24
    if sampler in ("sequential", "shuffle", "locality"):
        assert isinstance(built, ShuffleSampler) and sorted(order) == list(range(24)), "each frame once"
        assert (order == list(range(24))) == (sampler == "sequential"), order
    else:
        assert isinstance(built, WeightedSampler) and max(Counter(order).values()) > 1, "drawn with replacement"
    loader = build_dataloader(cfg, dataset)
    assert loader.sampler is not None and sum(len(b["image"]) for b in loader) == 24


def test_a_section_given_twice_is_an_error_not_a_silent_replacement(tmp_path: Path) -> None:
    path = write(tmp_path, "loader: {batch_size: 4}\nloader: {num_workers: 0}\n")
    with pytest.raises(ConfigError, match=r"line 2, column 1: 'loader' is given twice in one section"):
        config.load(path)
    nested = write(tmp_path, "loader:\n  batch_size: 4\n  batch_size: 8\n")
    with pytest.raises(ConfigError, match=r"line 3, column 3: 'batch_size' is given twice"):
        config.load(nested)


def test_yaml_syntax_errors_take_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "loader:\n  batch_size: [4\n  num_workers: 0\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert "\n" not in str(info.value) and "is not valid YAML: line " in str(info.value)


def test_reduce_beyond_the_frames_levels_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"reduce must be between 0 \(full resolution\) and 4 .*not 9"):
        config.load(write(tmp_path, "fetch: {reduce: 9}\n"))
    from ahi_torch.client import AHIClient
    from ahi_torch.fetch import FrameFetcher

    with pytest.raises(ConfigError, match=r"reduce must be between 0 \(full resolution\) and 4 .*not 9"):  # the API too
        FrameFetcher(AHIClient(region="us-east-1"), reduce=9)


_names = st.text(alphabet="abcdefghij_", min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(min_value=1, max_value=512),
    workers=st.integers(min_value=0, max_value=16),
    sampler=st.sampled_from(["sequential", "shuffle", "locality", "weighted", "class_balanced", "node_pinned"]),
    fractions=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=3),
    name=_names,
    window=st.none() | st.tuples(st.integers(-1000, 1000), st.integers(1, 4000)),
    reduce=st.integers(min_value=0, max_value=4),
    patient=st.text(alphabet="0123456789ABC", min_size=1, max_size=6),
)
def test_a_config_survives_load_dump_load(batch, workers, sampler, fractions, name, window, reduce, patient) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from ahi_torch.config.schema import Config

    total = sum(fractions)
    data = {
        "name": name,
        "connection": {"access_key_id": "k", "secret_access_key": "s"},
        "search": {"filters": [{"patient_id": patient}]},
        "loader": {"batch_size": batch, "num_workers": workers, "sampler": sampler},
        "split": {"fractions": {f"s{i}": f / total for i, f in enumerate(fractions)}},
        "intensity": {"window": list(window) if window else None},
        "fetch": {"reduce": reduce, "retry": {"max_attempts": batch % 7 + 1}},
        "labels": {"column": "modality", "classes": ["CT", "MR"]},
    }
    first = config.from_dict(Config, data)
    dumped = yaml.safe_dump(config.to_dict(first, secrets=True))
    again = config.from_dict(Config, config.loading._read_yaml(dumped))
    assert again == first
    assert config.config_hash(again) == config.config_hash(first)


def test_validation_loaders_keep_every_item_in_order(
    ahi: LocalAHI, synthetic_import: ImportedData, tmp_path: Path
) -> None:
    """drop_last and the sampler are the training loader's; val and test read every item once, in order."""
    from ahi_torch.config import build_dataloader, build_dataset

    cfg = _ct_config(
        ahi, synthetic_import, tmp_path, loader={"batch_size": 5, "num_workers": 0, "drop_last": True, "seed": 1}
    )
    dataset = build_dataset(cfg, progress=False)
    train = build_dataloader(cfg, dataset)
    assert train.drop_last and sum(len(b["image"]) for b in train) == len(dataset) // 5 * 5
    for stage in ("val", "test"):
        held_out = build_dataloader(cfg, dataset, stage=stage)
        assert not held_out.drop_last
        assert [i for b in held_out for i in b["meta"]["index"].tolist()] == list(range(len(dataset)))
    with pytest.raises(ConfigError, match="stage must be one of train, val, test"):
        build_dataloader(cfg, dataset, stage="predict")


def test_the_fetch_section_is_the_frame_fetcher_field_for_field() -> None:
    """Issue 23.3: one object gets frames; its config section has exactly its settings, under its names."""
    import dataclasses

    from ahi_torch.config.schema import FetchConfig
    from ahi_torch.fetch import FrameFetcher

    section = {field.name: field.type for field in dataclasses.fields(FetchConfig)}
    fetcher = {field.name: field.type for field in dataclasses.fields(FrameFetcher)}
    assert section == {name: kind for name, kind in fetcher.items() if name not in ("client", "cache")}
