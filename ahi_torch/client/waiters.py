"""Polling waiters for data stores, import jobs and image sets (AHI ships no waiters).

They poll with exponential backoff (0.05 s doubling to 5 s) and raise
:class:`~ahi_torch.errors.WaiterTimeout` when the deadline passes, or
:class:`~ahi_torch.errors.WaiterFailure` when a terminal failure state shows up first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ResourceNotFound, WaiterFailure, WaiterTimeout
from ..polling import PollTimeout, poll_until

_FIRST_DELAY = 0.05
_MAX_DELAY = 5.0


def _poll(
    what: str,
    wanted: str,
    probe: Callable[[], tuple[str, dict[str, Any]]],
    failed: Callable[[str, dict[str, Any]], str | None],
    timeout: float,
) -> dict[str, Any]:
    last = ["unknown"]

    def reached() -> tuple[dict[str, Any]] | None:
        status, properties = probe()
        last[0] = status
        if status == wanted:
            return (properties,)  # a tuple: truthy even for empty properties
        problem = failed(status, properties)
        if problem:
            raise WaiterFailure(f"{what} reached {status} instead of {wanted}: {problem}")
        return None

    try:
        found = poll_until(
            reached,
            timeout=timeout,
            what=f"{what} to reach {wanted}",
            interval=_FIRST_DELAY,
            max_interval=_MAX_DELAY,
            backoff=2.0,
        )
    except PollTimeout:
        raise WaiterTimeout(what, wanted, last[0], timeout) from None
    return found[0]


class Waiters:
    """``wait_for_*`` methods, mixed into :class:`~ahi_torch.client.AHIClient`."""

    # The operations the waiters poll, as AHIClient provides them.
    get_datastore: Callable[..., Any]
    get_dicom_import_job: Callable[..., Any]
    get_image_set: Callable[..., Any]

    def wait_for_datastore(self, datastoreId: str, status: str = "ACTIVE", timeout: float = 300.0) -> dict[str, Any]:
        """Wait until the data store has ``status``; returns its properties.

        Waiting for ``DELETED`` also succeeds when the data store is gone (ResourceNotFound).
        """

        def probe() -> tuple[str, dict[str, Any]]:
            try:
                properties = self.get_datastore(datastoreId=datastoreId)["datastoreProperties"]
            except ResourceNotFound:
                if status == "DELETED":
                    return "DELETED", {"datastoreId": datastoreId, "datastoreStatus": "DELETED"}
                raise
            return properties["datastoreStatus"], properties

        def failed(current: str, _: dict[str, Any]) -> str | None:
            if current == "CREATE_FAILED" or (status == "ACTIVE" and current in ("DELETING", "DELETED")):
                return f"data store is {current}"
            return None

        return _poll(f"data store {datastoreId}", status, probe, failed, timeout)

    def wait_for_import_job(self, datastoreId: str, jobId: str, timeout: float = 1800.0) -> dict[str, Any]:
        """Wait until the import job COMPLETES; returns its properties. A FAILED job raises WaiterFailure."""

        def probe() -> tuple[str, dict[str, Any]]:
            properties = self.get_dicom_import_job(datastoreId=datastoreId, jobId=jobId)["jobProperties"]
            return properties["jobStatus"], properties

        def failed(current: str, properties: dict[str, Any]) -> str | None:
            return properties.get("message", "no message") if current == "FAILED" else None

        return _poll(f"import job {jobId}", "COMPLETED", probe, failed, timeout)

    def wait_for_image_set(
        self, datastoreId: str, imageSetId: str, status: str = "ACTIVE", timeout: float = 300.0
    ) -> dict[str, Any]:
        """Wait until the image set's state is ``status`` (``ACTIVE`` or ``DELETED``); returns it.

        An image set that settles with a ``*_FAILED`` workflow status raises WaiterFailure.
        """

        def probe() -> tuple[str, dict[str, Any]]:
            properties = self.get_image_set(datastoreId=datastoreId, imageSetId=imageSetId)
            return properties["imageSetState"], properties

        def failed(current: str, properties: dict[str, Any]) -> str | None:
            workflow = properties.get("imageSetWorkflowStatus", "")
            if current != "LOCKED" and workflow.endswith("_FAILED"):
                return properties.get("message") or workflow
            if status == "ACTIVE" and current == "DELETED":
                return "image set was deleted"
            return None

        return _poll(f"image set {imageSetId}", status, probe, failed, timeout)
