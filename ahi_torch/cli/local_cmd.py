"""``ahi-torch local serve`` and ``ahi-torch local import DIR``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .main import EXIT_FAILURE, EXIT_OK, UsageError

ENDPOINTS_FILE = "endpoints.json"


def register(commands: Any) -> None:
    local = commands.add_parser("local", help="run the local AWS HealthImaging service")
    sub = local.add_subparsers(dest="local_command", required=True, metavar="SUBCOMMAND")

    serve = sub.add_parser("serve", help="serve the AHI API (and an embedded S3) in the foreground")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    serve.add_argument("--port", type=int, default=8080, help="TCP port (0 picks a free one; default 8080)")
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
    serve.set_defaults(handler=serve_command)

    importer = sub.add_parser("import", help="upload a folder of DICOM files to the local S3 and import them")
    importer.add_argument("paths", nargs="+", type=Path, help="DICOM files or folders")
    importer.add_argument(
        "--data-dir", type=Path, default=Path(".ahi/local"), help="data dir of a running `local serve`"
    )
    importer.add_argument("--datastore-id", help="import into this data store (default: create one)")
    importer.add_argument("--datastore-name", default="ahi-torch", help="name of a data store created for the import")
    importer.set_defaults(handler=import_command)


def serve_command(args: argparse.Namespace) -> int:
    from ..local import LocalAHI

    service = LocalAHI(
        args.data_dir,
        host=args.host,
        port=args.port,
        s3=not args.no_s3,
        s3_endpoint_url=args.s3_endpoint_url,
        credentials=(args.access_key_id, args.secret_access_key),
        faults=args.faults,
        require_signature=True if args.require_signature else None,
    )
    service.start()
    endpoints = {
        "endpoint_url": service.endpoint_url,
        "s3_endpoint_url": service.s3_endpoint_url,
        "region": service.settings.region,
    }
    (Path(args.data_dir) / ENDPOINTS_FILE).write_text(json.dumps(endpoints))
    print(f"AHI endpoint   {service.endpoint_url}", flush=True)
    print(f"S3 endpoint    {service.s3_endpoint_url or '-'}", flush=True)
    print(f"data directory {Path(args.data_dir).resolve()}", flush=True)
    print("for the AWS CLI: export AWS_DISABLE_HOST_PREFIX_INJECTION=true", flush=True)
    service.serve_forever()
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
    from ..local.uploads import dicom_files, run_import, upload

    endpoints = _endpoints(args.data_dir)
    if not endpoints.get("s3_endpoint_url"):
        raise UsageError("the running local service has no S3 endpoint")
    try:
        files = dicom_files(args.paths)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from None
    if not files:
        raise UsageError("no files found to import")
    session = boto3.session.Session(
        aws_access_key_id="local", aws_secret_access_key="local", region_name=endpoints["region"]
    )
    mi = session.client(
        "medical-imaging", endpoint_url=endpoints["endpoint_url"], config=Config(inject_host_prefix=False)
    )
    s3 = session.client("s3", endpoint_url=endpoints["s3_endpoint_url"])
    try:
        datastore_id = args.datastore_id or _create_datastore(mi, args.datastore_name)
        root = args.paths[0] if len(args.paths) == 1 and args.paths[0].is_dir() else None
        upload(s3, files, "ahi-torch-import", "cli/", root=root, progress=sys.stderr.isatty())
        result = run_import(mi, s3, datastore_id, "s3://ahi-torch-import/cli/", "s3://ahi-torch-import/output/")
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
    return EXIT_OK


def _create_datastore(mi: Any, name: str) -> str:
    import time

    datastore_id: str = mi.create_datastore(datastoreName=name)["datastoreId"]
    while mi.get_datastore(datastoreId=datastore_id)["datastoreProperties"]["datastoreStatus"] != "ACTIVE":
        time.sleep(0.05)
    return datastore_id
