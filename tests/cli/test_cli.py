"""Every ``ahi-torch`` command, its output and its error paths (one line, no traceback, exit code)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ahi_torch.cli import main
from ahi_torch.local import LocalAHI
from ahi_torch.sample.synthetic import SeriesSpec, write_series

from ..conftest import serve_subprocess, stop_subprocess

pytestmark = pytest.mark.service  # runs a local AHI (or its processes) of its own

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "local-demo.yaml"


@pytest.fixture(scope="module")
def imported(ahi: LocalAHI, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cli")
    specs = [
        SeriesSpec(
            patient_id=f"CLI{i}", study_key="c", series_key=f"c{i}", slices=3, rows=16, columns=16, nodule=bool(i % 2)
        )
        for i in range(4)
    ]
    for spec in specs:
        write_series(root / "dicom" / spec.series_key, spec)
    labels = root / "labels.csv"
    labels.write_text("SeriesInstanceUID,nodule\n" + "".join(f"{s.series_uid},{int(s.nodule)}\n" for s in specs))
    result = ahi.import_dicom(root / "dicom")
    return {"root": root, "datastore_id": result.datastore_id, "labels": labels}


def _overrides(ahi: LocalAHI, imported: dict, tmp_path: Path) -> list[str]:
    return [
        f"connection.endpoint_url={ahi.endpoint_url}",
        f"datastore.id={imported['datastore_id']}",
        "datastore.name=null",
        f"index.path={tmp_path / 'index.parquet'}",
        f"labels.table={imported['labels']}",
        f"cache.dir={tmp_path / 'cache'}",
        "split=null",
    ]


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _flags(overrides: list[str]) -> list[str]:
    return [flag for override in overrides for flag in ("-o", override)]


def test_help_on_every_command() -> None:
    for command in (
        [],
        ["local"],
        ["local", "serve"],
        ["local", "import"],
        ["index"],
        ["index", "build"],
        ["index", "show"],
        ["cache"],
        ["cache", "warm"],
        ["cache", "verify"],
        ["cache", "stats"],
        ["demo"],
    ):
        completed = subprocess.run(
            [sys.executable, "-m", "ahi_torch", *command, "--help"], capture_output=True, text=True, check=False
        )
        assert completed.returncode == 0, command
        assert "usage: ahi-torch" in completed.stdout


def test_index_build_show_cache_warm_verify_stats(
    ahi: LocalAHI, imported: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = _flags(_overrides(ahi, imported, tmp_path))
    code, out, err = _run(capsys, "index", "build", str(CONFIG), *flags)
    assert code == 0, err
    assert "indexed 12 frames of 4 image sets" in out
    code, out, _ = _run(capsys, "index", "show", str(tmp_path / "index.parquet"))
    assert code == 0 and "image sets" in out and "CT 12" in out and "1.2.840.10008.1.2.4.202 12" in out
    code, out, err = _run(capsys, "cache", "warm", str(CONFIG), *flags)
    assert code == 0, err
    assert "12 frames: 0 already cached, 12 fetched" in out
    code, out, _ = _run(capsys, "cache", "warm", str(CONFIG), *flags)
    assert "12 frames: 12 already cached, 0 fetched" in out
    code, out, _ = _run(capsys, "cache", "verify", str(CONFIG), *flags)
    assert code == 0 and "12 cached frames verified, 0 checksum mismatches, 0 corrupt entries evicted" in out
    code, out, _ = _run(capsys, "cache", "stats", "--dir", str(tmp_path / "cache"))
    assert code == 0 and "entries     12" in out
    code, out, _ = _run(capsys, "cache", "stats", str(CONFIG), *flags, "-o", "cache.size_gb=3")
    assert code == 0 and "of 3.0 GiB" in out, "the config's size limit (GiB, as size_gb means), not the default"
    # A cache filled at reduced resolution is checked against AHI's checksum of that resolution (issue 22.9).
    for reduce, mode in ((1, "decoded"), (2, "decoded"), (3, "decoded"), (1, "encoded")):
        reduced = [*flags, "-o", f"fetch.reduce={reduce}", "-o", f"cache.mode={mode}"]
        reduced += ["-o", f"cache.dir={tmp_path / mode}"]
        code, out, err = _run(capsys, "cache", "warm", str(CONFIG), *reduced)
        assert code == 0, err
        code, out, err = _run(capsys, "cache", "verify", str(CONFIG), *reduced)
        assert code == 0, out + err
        assert f"12 cached frames verified at reduce={reduce}, 0 checksum mismatches" in out
    # Corrupt one cached frame on disk: verify reports it and exits non-zero.
    packs = sorted((tmp_path / "cache" / "packs").glob("*.pack"), key=lambda path: path.stat().st_size)
    damaged = bytearray(packs[-1].read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # one byte inside one entry
    packs[-1].write_bytes(bytes(damaged))
    code, out, _ = _run(capsys, "cache", "verify", str(CONFIG), *flags)
    assert code == 1 and "1 corrupt entries evicted" in out


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("ahi-torch: error: ")
    return lines[0]


def test_error_paths_are_one_line_with_exit_codes(
    ahi: LocalAHI, imported: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = _flags(_overrides(ahi, imported, tmp_path))
    unreachable = _flags([f"connection.endpoint_url=http://127.0.0.1:{_closed_port()}", "connection.max_attempts=1"])
    code, _, err = _run(capsys, "index", "build", str(CONFIG), *flags, *unreachable)
    assert code == 1 and "cannot reach" in _one_line_error(err)
    code, _, err = _run(capsys, "index", "build", str(CONFIG), *flags, "-o", "datastore.id=" + "0" * 32)
    assert code == 1 and "ResourceNotFoundException" in _one_line_error(err)
    code, _, err = _run(
        capsys, "index", "build", str(CONFIG), *flags, "-o", "datastore.id=null", "-o", "datastore.name=nope"
    )
    assert code == 1 and "no ACTIVE data store named 'nope'" in _one_line_error(err)
    code, _, err = _run(capsys, "index", "build", str(CONFIG), *flags, "-o", "loader.sampler=random")
    assert code == 2 and "loader.sampler: 'random' is not one of" in _one_line_error(err)
    bad = tmp_path / "bad.yaml"
    bad.write_text("connection: {endpoint: http://x}\n")
    code, _, err = _run(capsys, "index", "build", str(bad))
    assert code == 2 and "connection.endpoint: unknown key" in _one_line_error(err)
    code, _, err = _run(capsys, "index", "build", str(tmp_path / "missing.yaml"))
    assert code == 2 and "does not exist" in _one_line_error(err)
    code, _, err = _run(capsys, "index", "show", str(tmp_path / "missing.parquet"))
    assert code == 2 and "no index file" in _one_line_error(err)
    code, _, err = _run(capsys, "cache", "stats", "--dir", str(tmp_path / "no-cache-here"))
    assert code == 2 and "no cache at" in _one_line_error(err)
    code, _, err = _run(capsys, "local", "import", str(tmp_path), "--data-dir", str(tmp_path / "nothing"))
    assert code == 2 and "no running local service" in _one_line_error(err)
    code, _, err = _run(capsys, "demo", "--patients", "2")
    assert code == 2 and "--patients must be at least 4" in _one_line_error(err)
    with pytest.raises(SystemExit) as info:
        main(["index", "frobnicate"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["local", "serve", "--port", "99999"])
    assert info.value.code == 2 and "port 99999 is not in 0..65535" in capsys.readouterr().err


def _local_import(*paths: Path, store: Path) -> subprocess.CompletedProcess[str]:
    """``ahi-torch local import PATHS --data-dir STORE`` in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "ahi_torch", "local", "import", *map(str, paths), "--data-dir", str(store)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_local_serve_and_import_in_processes(tmp_path: Path) -> None:
    spec = SeriesSpec(patient_id="SERVE", study_key="s", series_key="s", slices=2, rows=8, columns=8)
    write_series(tmp_path / "dicom", spec)
    (tmp_path / "dicom" / "broken.dcm").write_bytes(b"DICM but not really")
    server = serve_subprocess(tmp_path / "store")
    try:
        endpoints = json.loads((tmp_path / "store" / "endpoints.json").read_text())
        assert endpoints["endpoint_url"].startswith("http://127.0.0.1:")
        completed = _local_import(tmp_path / "dicom", store=tmp_path / "store")
        assert completed.returncode == 1, "a file that failed is a failed command (issue 22.6)"
        assert "imported 2 of 3 files into 1 image sets; 1 failed" in completed.stdout
        assert "broken.dcm: The file is not a valid DICOM P10 object" in completed.stdout
        # A second import reads only its own files, into the same named data store.
        (tmp_path / "more").mkdir()
        (tmp_path / "more" / "one.dcm").write_bytes((tmp_path / "dicom" / "s-0000.dcm").read_bytes())
        again = _local_import(tmp_path / "more", store=tmp_path / "store")
        assert again.returncode == 0, again.stderr
        assert "imported 1 of 1 files" in again.stdout
        assert again.stdout.split()[1] == completed.stdout.split()[1], "the data store named ahi-torch-demo is reused"
        # Two folders whose files share names (as scanner exports name them): every file arrives.
        for folder, key in (("a", "na"), ("b", "nb")):
            write_series(tmp_path / folder, SeriesSpec(patient_id=key, series_key=key, slices=2, rows=8, columns=8))
            for number, path in enumerate(sorted((tmp_path / folder).glob("*.dcm"))):
                path.rename(path.with_name(f"{number}.dcm"))
        named = _local_import(tmp_path / "a", tmp_path / "b", store=tmp_path / "store")
        assert named.returncode == 0, named.stderr
        assert "imported 4 of 4 files into 2 image sets; 0 failed" in named.stdout
    finally:
        stop_subprocess(server)


def test_bad_credentials_are_one_line(tmp_path: Path) -> None:
    server = serve_subprocess(
        tmp_path / "store", "--require-signature", "--access-key-id", "ops", "--secret-access-key", "right"
    )
    try:
        endpoint = json.loads((tmp_path / "store" / "endpoints.json").read_text())["endpoint_url"]
        config = tmp_path / "c.yaml"
        config.write_text(
            f"connection: {{endpoint_url: '{endpoint}', access_key_id: ops, secret_access_key: wrong,"
            " max_attempts: 1}\n"
            "datastore: {name: anything}\nindex: {path: " + str(tmp_path / "i.parquet") + "}\n"
        )
        completed = subprocess.run(
            [sys.executable, "-m", "ahi_torch", "index", "build", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert completed.returncode == 1
        assert _one_line_error(completed.stderr).startswith(
            "ahi-torch: error: InvalidSignatureException: The request signature"
        )
    finally:
        stop_subprocess(server)


def _descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (children, their children...), read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_the_import_pool_ends_with_its_service_however_it_stops(tmp_path: Path, how: str) -> None:
    """Issue 22: forkserver pools and resource trackers outlived `local serve` and LocalAHI programs."""
    import signal

    from ..conftest import wait_until

    spec = SeriesSpec(patient_id="POOL", study_key="p", series_key="p", slices=40, rows=8, columns=8)
    write_series(tmp_path / "dicom", spec)
    server = serve_subprocess(tmp_path / "store")
    try:
        done = _local_import(tmp_path / "dicom", store=tmp_path / "store")
        assert done.returncode == 0, done.stdout + done.stderr
        helpers = _descendants(server.pid)
        assert len(helpers) >= 2, "40 files are examined in the process pool (fork server and workers)"
        server.send_signal(getattr(signal, how))
        server.wait(timeout=30)
        wait_until(lambda: not any(_alive(pid) for pid in helpers), timeout=20)
    finally:
        if server.poll() is None:
            server.kill()


def test_local_serve_answers_as_the_region_given(tmp_path: Path) -> None:
    server = serve_subprocess(tmp_path / "store", "--region", "ap-southeast-2")
    try:
        endpoints = json.loads((tmp_path / "store" / "endpoints.json").read_text())
        assert endpoints["region"] == "ap-southeast-2"
        import boto3
        from botocore.config import Config

        mi = boto3.session.Session(aws_access_key_id="local", aws_secret_access_key="local").client(
            "medical-imaging",
            endpoint_url=endpoints["endpoint_url"],
            region_name="ap-southeast-2",
            config=Config(inject_host_prefix=False),
        )
        datastore_id = mi.create_datastore(datastoreName="au")["datastoreId"]
        arn = mi.get_datastore(datastoreId=datastore_id)["datastoreProperties"]["datastoreArn"]
        assert arn.startswith("arn:aws:medical-imaging:ap-southeast-2:")
    finally:
        stop_subprocess(server)
