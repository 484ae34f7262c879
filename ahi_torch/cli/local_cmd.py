"""``ahi-torch local serve|stop|synthesize|import``: run, feed and stop the local AHI."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..polling import PollTimeout, poll_until
from .common import EXIT_FAILURE, EXIT_OK, UsageError

ENDPOINTS_FILE = "endpoints.json"
PID_FILE = "serve.pid"
DEFAULT_DATASTORE = "ahi-torch-demo"  # the name configs/local-demo.yaml looks for


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not in 0..65535")
    return port


def register(commands: Any) -> None:
    local = commands.add_parser("local", help="run the local AWS HealthImaging service")
    sub = local.add_subparsers(dest="local_command", required=True, metavar="SUBCOMMAND")

    serve = sub.add_parser("serve", help="serve the AHI API (and an embedded S3) in the foreground")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    serve.add_argument("--port", type=_port, default=8080, help="TCP port (0 picks a free one; default 8080)")
    serve.add_argument("--region", default="us-east-1", help="the region the service answers as (default us-east-1)")
    serve.add_argument("--data-dir", type=Path, default=Path(".ahi/local"), help="where state persists")
    serve.add_argument("--s3-endpoint-url", help="use this S3 endpoint instead of the embedded one")
    serve.add_argument("--no-s3", action="store_true", help="do not start the embedded S3")
    serve.add_argument("--faults", help="fault injection spec, e.g. 'GetImageFrame:throttle=0.1,error=0.05'")
    serve.add_argument(
        "--require-signature",
        action="store_true",
        help="verify SigV4 against --access-key-id (always on when --host is not loopback)",
    )
    serve.add_argument("--access-key-id", default="local", help="credentials clients must sign with")
    serve.add_argument("--secret-access-key", default="local", help="secret of --access-key-id")
    serve.add_argument(
        "--background", action="store_true", help="run in the background; return once it answers (stop: local stop)"
    )
    serve.set_defaults(handler=serve_command)

    stop = sub.add_parser("stop", help="stop a `local serve --background`")
    stop.add_argument("--data-dir", type=Path, default=Path(".ahi/local"), help="its data directory")
    stop.set_defaults(handler=stop_command)

    synthesize = sub.add_parser(
        "synthesize", help="write a labelled synthetic CT cohort (DIR/dicom) and its labels (DIR/labels.csv)"
    )
    synthesize.add_argument("directory", type=Path)
    synthesize.add_argument("--patients", type=int, default=8, help="patients, one CT series each (default 8)")
    synthesize.add_argument("--slices", type=int, default=16, help="slices per series (default 16)")
    synthesize.add_argument("--size", type=int, default=64, help="rows and columns (default 64)")
    synthesize.add_argument(
        "--slides",
        type=int,
        default=0,
        help="also write this many whole-slide images (DIR/slides) and their labels (DIR/slide-labels.csv)",
    )
    synthesize.set_defaults(handler=synthesize_command)

    importer = sub.add_parser("import", help="upload a folder of DICOM files to the local S3 and import them")
    importer.add_argument("paths", nargs="+", type=Path, help="DICOM files or folders")
    importer.add_argument(
        "--data-dir", type=Path, default=Path(".ahi/local"), help="data dir of a running `local serve`"
    )
    importer.add_argument("--datastore-id", help="import into this data store")
    importer.add_argument(
        "--datastore-name",
        default=DEFAULT_DATASTORE,
        help=f"else into the data store of this name, created if there is none (default {DEFAULT_DATASTORE})",
    )
    importer.set_defaults(handler=import_command)


def serve_command(args: argparse.Namespace) -> int:
    from ..local import LocalAHI, ServiceSettings

    if args.background:
        return _serve_in_background(args)
    service = LocalAHI(
        args.data_dir,
        settings=ServiceSettings(import_processes=0),  # a service of its own: transcode on every core
        host=args.host,
        port=args.port,
        s3=not args.no_s3,
        s3_endpoint_url=args.s3_endpoint_url,
        credentials=(args.access_key_id, args.secret_access_key),
        faults=args.faults,
        require_signature=True if args.require_signature else None,
        region=args.region,
    )
    service.start()
    endpoints = {
        "endpoint_url": service.endpoint_url,
        "s3_endpoint_url": service.s3_endpoint_url,
        "region": service.settings.region,
    }
    (Path(args.data_dir) / ENDPOINTS_FILE).write_text(json.dumps(endpoints))
    (Path(args.data_dir) / PID_FILE).write_text(str(os.getpid()))
    print(f"AHI endpoint   {service.endpoint_url}", flush=True)
    print(f"S3 endpoint    {service.s3_endpoint_url or '-'}", flush=True)
    print(f"data directory {Path(args.data_dir).resolve()}", flush=True)
    print("for the AWS CLI: export AWS_DISABLE_HOST_PREFIX_INJECTION=true", flush=True)
    service.serve_forever()
    return EXIT_OK


def _serve_in_background(args: argparse.Namespace) -> int:
    """Start ``local serve`` (same options) as a detached process; return once it has written its endpoints."""
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    endpoints = data_dir / ENDPOINTS_FILE
    endpoints.unlink(missing_ok=True)  # a stale file from an earlier run must not look like readiness
    argv = ["local", "serve", "--data-dir", str(data_dir), "--host", args.host, "--port", str(args.port)]
    argv += ["--region", args.region]
    argv += ["--access-key-id", args.access_key_id, "--secret-access-key", args.secret_access_key]
    argv += ["--s3-endpoint-url", args.s3_endpoint_url] if args.s3_endpoint_url else []
    argv += ["--faults", args.faults] if args.faults else []
    argv += ["--no-s3"] if args.no_s3 else []
    argv += ["--require-signature"] if args.require_signature else []
    log = (data_dir / "serve.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "ahi_torch", *argv],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # outlives this command and the shell that ran it
    )

    def written() -> bool:
        if process.poll() is not None:
            raise UsageError(f"local serve exited with code {process.returncode}; see {data_dir / 'serve.log'}")
        return endpoints.exists()

    try:
        poll_until(written, timeout=60, what="local serve to start")
    except PollTimeout:
        process.terminate()
        raise UsageError(f"local serve did not start within 60 s; see {data_dir / 'serve.log'}") from None
    print(f"AHI endpoint   {json.loads(endpoints.read_text())['endpoint_url']} (pid {process.pid})")
    return EXIT_OK


def stop_command(args: argparse.Namespace) -> int:
    pid_file = Path(args.data_dir) / PID_FILE
    if not pid_file.exists():
        raise UsageError(f"no local service was started with --data-dir {args.data_dir}")
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        print(f"local service {pid} was not running")
    else:
        try:
            poll_until(lambda: not _alive(pid), timeout=30, what=f"local service {pid} to stop")
        except PollTimeout:
            raise UsageError(f"local service {pid} did not stop within 30 s of SIGINT") from None
        print(f"stopped local service {pid}")
    pid_file.unlink(missing_ok=True)
    (Path(args.data_dir) / ENDPOINTS_FILE).unlink(missing_ok=True)
    return EXIT_OK


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def synthesize_command(args: argparse.Namespace) -> int:
    from ..sample.demo import DemoOptions, write_inputs

    if min(args.patients, args.slices, args.size) < 1:
        raise UsageError("--patients, --slices and --size must be positive")
    if args.slides < 0:
        raise UsageError("--slides must be 0 or more")
    options = DemoOptions(patients=args.patients, slices=args.slices, size=args.size, real_files=False)
    dicom = write_inputs(Path(args.directory), options)
    print(
        f"wrote {args.patients} CT series of {args.slices} slices to {dicom} and labels to {args.directory}/labels.csv"
    )
    if args.slides:
        from ..sample.slides import write_slides

        labels = write_slides(Path(args.directory), args.slides)
        print(f"wrote {args.slides} whole-slide images to {args.directory}/slides and labels to {labels}")
    return EXIT_OK


def _endpoints(data_dir: Path) -> dict[str, str]:
    path = data_dir / ENDPOINTS_FILE
    if not path.exists():
        raise UsageError(
            f"no running local service found in {data_dir} (start `ahi-torch local serve --data-dir {data_dir}`)"
        )
    endpoints: dict[str, str] = json.loads(path.read_text())
    return endpoints


def import_command(args: argparse.Namespace) -> int:
    import boto3
    from botocore.config import Config

    from ..errors import EndpointUnreachable
    from ..local.imports.uploads import import_paths

    endpoints = _endpoints(args.data_dir)
    if not endpoints.get("s3_endpoint_url"):
        raise UsageError("the running local service has no S3 endpoint")
    missing = [str(path) for path in args.paths if not path.exists()]
    if missing:
        raise UsageError(f"no such file or folder: {missing[0]}")
    session = boto3.session.Session(
        aws_access_key_id="local", aws_secret_access_key="local", region_name=endpoints["region"]
    )
    mi = session.client(
        "medical-imaging", endpoint_url=endpoints["endpoint_url"], config=Config(inject_host_prefix=False)
    )
    s3 = session.client("s3", endpoint_url=endpoints["s3_endpoint_url"])
    try:
        datastore_id = args.datastore_id or _datastore_named(mi, args.datastore_name)
        result = import_paths(mi, s3, datastore_id, args.paths, progress=sys.stderr.isatty())
    except FileNotFoundError as error:
        raise UsageError(str(error)) from None
    except Exception as error:
        from botocore.exceptions import BotoCoreError

        if isinstance(error, BotoCoreError):
            raise EndpointUnreachable(f"cannot reach the local service: {error}") from None
        raise
    if result.status != "COMPLETED":
        print(f"ahi-torch: import job {result.job_id} {result.status}: {result.message}", file=sys.stderr)
        return EXIT_FAILURE
    summary = result.manifest["jobSummary"]
    print(f"datastore {datastore_id}  job {result.job_id}")
    print(
        f"imported {summary['numberOfImportedFiles']} of {summary['numberOfScannedFiles']} files into "
        f"{summary['numberOfGeneratedImageSets']} image sets; {len(result.failures)} failed"
    )
    for failure in result.failures:
        print(f"  failed: {failure['inputFile']}: {failure['exception']['message']}")
    return EXIT_FAILURE if result.failures else EXIT_OK


def _datastore_named(mi: Any, name: str) -> str:
    """The ACTIVE data store called ``name``, created (and waited for) when there is none."""
    matches = [
        d["datastoreId"]
        for page in mi.get_paginator("list_datastores").paginate(datastoreStatus="ACTIVE")
        for d in page["datastoreSummaries"]
        if d["datastoreName"] == name
    ]
    if len(matches) > 1:
        raise UsageError(f"{len(matches)} data stores are named {name!r}; pass --datastore-id")
    if matches:
        return str(matches[0])
    datastore_id: str = mi.create_datastore(datastoreName=name)["datastoreId"]
    try:
        poll_until(
            lambda: mi.get_datastore(datastoreId=datastore_id)["datastoreProperties"]["datastoreStatus"] == "ACTIVE",
            timeout=60,
            what=f"data store {datastore_id} to become ACTIVE",
        )
    except PollTimeout:
        raise UsageError(f"data store {datastore_id} did not become ACTIVE within 60 s") from None
    return datastore_id
