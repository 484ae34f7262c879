"""FrameRef: everything needed to fetch, decode and verify one frame."""

from __future__ import annotations

from dataclasses import dataclass

from ..cache import FrameKey
from ..metadata import PixelDescription


@dataclass(frozen=True)
class FrameRef:
    """One frame of one image set version, with what its decode and its check need."""

    datastore_id: str
    image_set_id: str
    version: int
    frame_id: str
    stored_transfer_syntax: str
    pixel: PixelDescription
    checksum: int | None = None
    #: AHI's CRC32 of the ``reduce=k`` decode at position k - 1 (-1 where AHI lists none).
    reduced_checksums: tuple[int, ...] = ()

    def checksum_at(self, reduce: int) -> int | None:
        """The CRC32 AHI lists for a decode skipping ``reduce`` levels, or None."""
        if reduce == 0:
            return self.checksum
        found = self.reduced_checksums[reduce - 1] if reduce <= len(self.reduced_checksums) else -1
        return found if found >= 0 else None

    def where(self) -> str:
        return f"image set {self.image_set_id} (version {self.version}) frame {self.frame_id}"

    def key(self, reduce: int = 0) -> FrameKey:
        """The frame's cache key at a resolution (``reduce`` levels skipped)."""
        return FrameKey(self.datastore_id, self.image_set_id, self.version, self.frame_id, reduce)
