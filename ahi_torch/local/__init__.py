"""A local AWS HealthImaging: the ``medical-imaging`` API over real HTTP, for boto3, the AWS CLI and ahi_torch.

Start one with :class:`LocalAHI` (or ``ahi-torch local serve``) and point any client at
``endpoint_url``. Data-plane operations carry the ``runtime-`` host prefix in the service model;
with a custom endpoint, turn prefix injection off: ``Config(inject_host_prefix=False)`` in
code, ``AWS_DISABLE_HOST_PREFIX_INJECTION=true`` for the AWS CLI. The service ignores the host,
so requests with or without the prefix are served alike.

Where AHI's documentation leaves behaviour open, this emulator chooses as follows:

* **Validation** follows the botocore model with patterns anchored at both ends, as the
  original Smithy model writes them; violations give AWS-style ValidationException messages
  that never echo values of members the model marks sensitive.
* **SearchImageSets**: filters are ANDed; ``EQUAL`` takes one value of an ID, UID or
  ``isPrimary``; ``BETWEEN`` takes two values of ``createdAt``, ``updatedAt`` or
  ``DICOMStudyDateAndTime`` (a missing StudyTime counts as 00:00); other combinations are a
  ValidationException. Default order is ``updatedAt`` descending; sets without the sort value
  come last. Deleted image sets are never returned.
* **Asynchronous writes**: update, copy and delete take effect when accepted, but the image set
  reports ``LOCKED`` with ``UPDATING``/``COPYING``/``DELETING`` for ``transition_seconds``
  (default 0.2 s); writes meanwhile are a ConflictException, as on AHI. A stale
  ``latestVersionId`` is a ConflictException. As on AHI, constraint violations in update payloads
  and copy selections (a series or instance the source lacks included) are accepted and recorded
  on a new version as ``UPDATE_FAILED``/``COPY_FAILED`` with the reason as its message (previous
  metadata unchanged; a failed copy into a new image set leaves it with no series); what the
  service model itself rejects, and a selection that is not JSON in AHI's schema, stays a
  ValidationException. Copies from a source locked read-only by another copy are
  allowed.
* **Deleted image sets**: GetImageSet and ListImageSetVersions still answer with state
  ``DELETED`` and ``deletedAt``; metadata and frames then give ResourceNotFoundException.
* **Copies** create non-primary image sets unless ``promoteToPrimary`` is set; promoting when the
  series already has a primary image set is a ConflictException. With a destination, the
  series and the Patient/Study/Series identity must match unless ``force`` is set, in which
  case the destination keeps its own Patient/Study/Series metadata.
* **Import grouping**: one primary image set per SeriesInstanceUID; new data whose PatientID,
  PatientName, PatientBirthDate, PatientSex, StudyInstanceUID, StudyDate, StudyTime, StudyID,
  AccessionNumber, Modality or SeriesNumber differ from the primary's goes to a non-primary
  image set. A job with per-file failures still COMPLETES (the failures are in
  ``FAILURE/failure.ndjson``); listing or writing S3 failing, or more files than the quota,
  FAILS the job. ``importConfiguration`` (DICOM JSON metadata import) FAILS the job: it is not
  emulated. With the embedded S3, the job lists its input and writes its output through the S3
  API but reads each input object from moto's store in-process (an HTTP GET per file cost the
  service more than the file's import).
* **Frames**: lossless transcodes are HTJ2K RPCL with TLM markers, served boxed (JPH) as
  ``image/jph``; JPEG 2000 lossless stores (``.4.90``) serve bare codestreams as ``image/j2c``.
  Checksums cover up to three resolution levels for HTJ2K (base first, full resolution last)
  and the full resolution otherwise; bit-packed binary segmentation frames are checksummed
  unpacked (one byte per pixel).
* **Data stores** stay CREATING/DELETING for ``transition_seconds``; deleted ones remain listed
  as DELETED. A missing ``datastoreName`` becomes the data store ID.
"""

from .context import Quotas, S3Settings, ServiceSettings
from .server import LocalAHI

__all__ = ["LocalAHI", "Quotas", "S3Settings", "ServiceSettings"]
