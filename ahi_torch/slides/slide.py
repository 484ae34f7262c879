"""A whole-slide image in AHI with OpenSlide's API: regions assembled from only the tiles they cover.

>>> slide = open_slide(client, datastore_id, image_set_id)
>>> slide.level_count, slide.level_dimensions, slide.mpp
(3, ((1000, 700), (500, 350), (250, 175)), 0.25)
>>> region = slide.read_region((512, 256), 0, (256, 256))      # (256, 256, 3) uint8, x/y in level-0 pixels
>>> thumbnail = slide.get_thumbnail((200, 200))

A region fetches its covering tiles concurrently through the :class:`~ahi_torch.fetch.FrameFetcher`
it is given (so through its frame cache, with AHI's CRC32 checked), decodes them (HTJ2K, JPEG 2000 or
JPEG baseline), and pastes the parts inside the region. What lies outside the slide, or on a tile
a TILED_SPARSE slide leaves out, is ``background`` (white), as OpenSlide leaves it transparent.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

import numpy as np

from ..client import AHIClient
from ..errors import ConfigError
from ..fetch import FrameFetcher, FrameRef
from ..index.references import series_uri
from ..metadata import ImageSetMetadata
from .pyramid import SlideImage, SlidePyramid, describe_slide
from .regions import covering, level_corner, paste, resize, tile_rgb


class Slide:
    """One whole-slide image of an AHI image set; see the module docstring.

    Args:
        source: a :class:`~ahi_torch.fetch.FrameFetcher` (its cache, threads and checks serve the
            tiles) or an :class:`~ahi_torch.client.AHIClient` for a fetcher with its defaults.
        datastore_id, image_set_id, version: the image set version whose frames are the tiles.
        pyramid: what :func:`~ahi_torch.slides.describe_slide` read from its metadata.
        background: the value of pixels outside the slide or on tiles the slide does not store.
    """

    def __init__(
        self,
        source: AHIClient | FrameFetcher,
        datastore_id: str,
        image_set_id: str,
        version: int,
        pyramid: SlidePyramid,
        *,
        background: int = 255,
    ) -> None:
        fetcher = source if isinstance(source, FrameFetcher) else FrameFetcher(source)
        if fetcher.reduce:
            raise ConfigError(
                f"a slide reads its tiles whole (the fetcher has reduce={fetcher.reduce}); "
                "its pyramid levels are the lower resolutions"
            )
        self.fetcher = fetcher
        self.datastore_id = datastore_id
        self.image_set_id = image_set_id
        self.version = version
        self.pyramid = pyramid
        self.background = background

    # --- OpenSlide's attributes -----------------------------------------------------------------

    @property
    def uri(self) -> str:
        """``ahi://<datastore>/<image set>/<series UID>?version=<n>``: the slide as MONAI data lists name it."""
        return series_uri(self.datastore_id, self.image_set_id, self.pyramid.series_instance_uid, self.version)

    @property
    def level_count(self) -> int:
        return len(self.pyramid.levels)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of each level, largest first."""
        return tuple((level.width, level.height) for level in self.pyramid.levels)

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return self.level_dimensions[0]

    @cached_property
    def level_downsamples(self) -> tuple[float, ...]:
        """How many level-0 pixels one pixel of each level spans.

        From the levels' pixel spacings where every level has one: a level of 163 rows under one of
        650 is a downsample of 4 whose size was rounded up, not of 3.99. Otherwise OpenSlide's mean
        of the two axes' size ratios.
        """
        spacings = [level.mpp for level in self.pyramid.levels]
        if all(spacing is not None for spacing in spacings):
            base = spacings[0][0]  # type: ignore[index]
            return tuple(_whole_if_near(spacing[0] / base) for spacing in spacings)  # type: ignore[index]
        width, height = self.dimensions
        return tuple((width / w + height / h) / 2 for w, h in self.level_dimensions)

    @property
    def mpp(self) -> float | None:
        """µm per pixel at level 0 along x; ``properties`` has ``openslide.mpp-x`` and ``-y``."""
        spacing = self.pyramid.levels[0].mpp
        return spacing[0] if spacing else None

    @property
    def properties(self) -> Mapping[str, str]:
        return self.pyramid.properties

    @cached_property
    def associated_images(self) -> Mapping[str, np.ndarray]:
        """``label``, ``overview``, ``thumbnail`` when the slide has them: (height, width, 3) uint8."""
        return {name: self._whole(image) for name, image in self.pyramid.associated.items()}

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The smallest level whose downsample is at most ``downsample`` (level 0 below 1)."""
        best = 0
        for level, value in enumerate(self.level_downsamples):
            if value <= downsample * (1 + 1e-6):
                best = level
        return best

    def get_thumbnail(self, size: tuple[int, int]) -> np.ndarray:
        """The whole slide fitted within ``size`` (width, height), aspect kept, from the level nearest above it."""
        width, height = self.dimensions
        downsample = max(width / size[0], height / size[1])
        level = self.get_best_level_for_downsample(downsample)
        whole = self.read_region((0, 0), level, self.level_dimensions[level])
        return resize(whole, (max(1, round(width / downsample)), max(1, round(height / downsample))))

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Pixels of ``level`` as (height, width, 3) uint8: ``location`` (x, y) in level-0 pixels, ``size``
        (width, height) in the level's own, as OpenSlide has it. Parts outside the slide are background.
        """
        if not 0 <= level < self.level_count:
            raise ConfigError(f"level {level} is not one of the slide's {self.level_count} levels")
        width, height = int(size[0]), int(size[1])
        if width <= 0 or height <= 0:
            raise ConfigError(f"a region needs a positive width and height, not {size}")
        region = np.full((height, width, 3), self.background, dtype=np.uint8)
        self._paint(self.pyramid.levels[level], region, self._corner(location, level))
        return region

    def tiles_covering(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> int:
        """How many stored tiles a :meth:`read_region` of these arguments fetches."""
        image, corner = self.pyramid.levels[level], self._corner(location, level)
        return len(covering(image.tiles, image.tile_size, image.size, corner, (int(size[0]), int(size[1]))))

    def _corner(self, location: tuple[int, int], level: int) -> tuple[int, int]:
        return level_corner(location, self.level_downsamples[level])

    # --- tiles ----------------------------------------------------------------------------------

    def _ref(self, image: SlideImage, frame: int) -> FrameRef:
        return FrameRef(
            datastore_id=self.datastore_id,
            image_set_id=self.image_set_id,
            version=self.version,
            frame_id=image.frame_ids[frame],
            stored_transfer_syntax=image.stored_transfer_syntax,
            pixel=image.pixel,
            checksum=image.checksums[frame],
        )

    def _paint(self, image: SlideImage, region: np.ndarray, corner: tuple[int, int]) -> None:
        size = (region.shape[1], region.shape[0])
        wanted = covering(image.tiles, image.tile_size, image.size, corner, size)
        tiles = self.fetcher.get_many([self._ref(image, frame) for _, _, frame in wanted])
        where = f"instance {image.sop_instance_uid}"
        photometric, syntax = image.pixel.photometric_interpretation, image.stored_transfer_syntax
        for (x, y, _), pixels in zip(wanted, tiles, strict=True):
            paste(region, corner, tile_rgb(pixels, image.tile_size, photometric, syntax, where), (x, y), image.size)

    def _whole(self, image: SlideImage) -> np.ndarray:
        region = np.full((image.height, image.width, 3), self.background, dtype=np.uint8)
        self._paint(image, region, (0, 0))
        return region

    def __repr__(self) -> str:
        return f"Slide(image_set_id={self.image_set_id!r}, level_dimensions={self.level_dimensions})"


def _whole_if_near(ratio: float) -> float:
    """``ratio`` rounded to a whole number when it is one but for the digits its spacings were written with."""
    nearest = round(ratio)
    return float(nearest) if nearest and abs(ratio - nearest) <= 1e-6 * ratio else ratio


def open_slide(
    source: AHIClient | FrameFetcher,
    datastore_id: str,
    image_set_id: str,
    *,
    series_instance_uid: str | None = None,
    version: int | None = None,
    optical_path: int | str = 0,
    focal_plane: int = 0,
    background: int = 255,
) -> Slide:
    """The whole-slide image in an image set (its current version unless one is named); see :class:`Slide`.

    >>> slide = open_slide(FrameFetcher(client, cache=FrameCache()), datastore_id, image_set_id)
    """
    fetcher = source if isinstance(source, FrameFetcher) else FrameFetcher(source)
    client: Any = fetcher.client
    if version is None:
        version = int(client.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)["versionId"])
    document = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id, versionId=str(version))
    pyramid = describe_slide(
        ImageSetMetadata.parse(document),
        series_instance_uid=series_instance_uid,
        optical_path=optical_path,
        focal_plane=focal_plane,
    )
    return Slide(fetcher, datastore_id, image_set_id, version, pyramid, background=background)
