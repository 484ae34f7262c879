"""AHI's per-account request quotas and each node's share of them.

AHI throttles per account and region, whatever the number of machines
(https://docs.aws.amazon.com/healthimaging/latest/devguide/endpoints-quotas.html): a node that
sends the whole quota while seven others do the same gets 7/8 of its requests throttled. So a
rate limit here is an *account* quota, and each node takes a share of it: by default its
processes' share of the job, ``LOCAL_WORLD_SIZE / WORLD_SIZE`` as ``torchrun`` sets them (1
outside torchrun). A budget truly shared across machines is :mod:`.store_budget`.

>>> ClientConfig(rate_limits="aws")                    # AWS's documented quotas, this node's share
>>> ClientConfig(rate_limits={"GetImageFrame": 500}, rate_limit_share=0.25)
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: Requests per second per account (AWS HealthImaging throttling limits; bursts are twice these).
AWS_QUOTAS: Mapping[str, float] = {
    "GetImageFrame": 1000.0,
    "GetImageSetMetadata": 50.0,
    "SearchImageSets": 25.0,
    "GetImageSet": 25.0,
    "ListImageSetVersions": 25.0,
    "GetDatastore": 10.0,
    "ListDatastores": 5.0,
    "GetDICOMImportJob": 25.0,
    "ListDICOMImportJobs": 10.0,
    "StartDICOMImportJob": 1.0,
    "UpdateImageSetMetadata": 0.25,
    "CopyImageSet": 0.25,
    "DeleteImageSet": 0.25,
    "TagResource": 10.0,
    "UntagResource": 10.0,
    "ListTagsForResource": 10.0,
}
#: AHI's burst allowance, in seconds of quota (GetImageFrame: 1000/s, bursts to 2000).
BURST_SECONDS = 2.0
#: Named quota presets a config may give instead of a mapping.
PRESETS: Mapping[str, Mapping[str, float]] = {"aws": AWS_QUOTAS}


def node_share(environ: Mapping[str, str] | None = None) -> float:
    """This node's share of the account: LOCAL_WORLD_SIZE / WORLD_SIZE under torchrun, else 1."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        local = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError:
        return 1.0
    if world < 1 or not 1 <= local <= world:
        return 1.0
    return local / world


def node_rates(quotas: Mapping[str, float], share: float | None = None) -> dict[str, float]:
    """The per-node rates: every account quota times ``share`` (default: :func:`node_share`)."""
    factor = node_share() if share is None else share
    return {operation: rate * factor for operation, rate in quotas.items()}
