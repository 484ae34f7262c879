"""Small, hashable references to the series of an index (volumes, slides): ``ahi://`` URIs.

MONAI's ``PersistentDataset`` and ``CacheDataset`` hash or copy every data item, so items handed to
them must be small references, and a loading transform fetches the pixels
(:class:`ahi_torch.integrations.monai.LoadAHId`). A reference names the image set *version*, so
a persistent cache keyed on it never serves pixels of an older version.

>>> series_uri("a" * 32, "b" * 32, "1.2.3", 2)
'ahi://aaaa.../bbbb.../1.2.3?version=2'
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigError

SCHEME = "ahi"


@dataclass(frozen=True)
class SeriesReference:
    """One series of one image set version, as an ``ahi://`` URI names it."""

    datastore_id: str
    image_set_id: str
    series_instance_uid: str
    version: int

    @property
    def uri(self) -> str:
        return series_uri(self.datastore_id, self.image_set_id, self.series_instance_uid, self.version)


def series_uri(datastore_id: str, image_set_id: str, series_instance_uid: str, version: int) -> str:
    """``ahi://<datastore>/<image set>/<series UID>?version=<n>``."""
    return f"{SCHEME}://{datastore_id}/{image_set_id}/{series_instance_uid}?version={int(version)}"


def parse_series_uri(uri: str) -> SeriesReference:
    """The reference an ``ahi://`` URI names; a ConfigError saying what is wrong otherwise."""
    parts = urlsplit(str(uri))
    path = [p for p in parts.path.split("/") if p]
    version = parse_qs(parts.query).get("version", [""])[0]
    if parts.scheme != SCHEME or not parts.netloc or len(path) != 2 or not version.isdigit():
        raise ConfigError(f"{uri!r} is not a series reference (ahi://<datastore>/<image set>/<series UID>?version=<n>)")
    return SeriesReference(parts.netloc, path[0], path[1], int(version))
