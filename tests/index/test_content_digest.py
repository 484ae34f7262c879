"""ahi_torch.index.content_digest: the one digest of Arrow content (saved indexes, shared tables)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ahi_torch.index import frame_index
from ahi_torch.index.content_digest import content_digest


def test_a_saved_index_digests_as_it_did_when_it_was_written() -> None:
    """The integrity digest is stored in every saved index: the bytes it covers must never change."""
    table = pa.table(
        {
            "image_set_id": pa.array(["a" * 32, "b" * 32]).dictionary_encode(),
            "frame_number": pa.array([1, 2], pa.int32()),
            "reduced_checksums": pa.array([[1, 2, -1, -1], [3, 4, -1, -1]], pa.list_(pa.int64(), 4)),
            "window": pa.array([None, 1.5]),
        }
    )
    assert frame_index._digest(b"info", table) == b"5ac86cf5cb098179fb83e6168279ff4cbe90234158c50654f06709191adb3631"


def test_boundaries_labels_and_arrays_count() -> None:
    base = content_digest(b"h", [("c", [b"ab", b"c"])])
    assert base != content_digest(b"h", [("c", [b"a", b"bc"])]), "a part's length is part of the digest"
    assert base != content_digest(b"h", [("d", [b"ab", b"c"])]) != content_digest(b"g", [("c", [b"ab", b"c"])])
    array = np.arange(6, dtype=np.int32).reshape(2, 3)
    assert content_digest(b"h", [("c", [array])]) == content_digest(b"h", [("c", [array.tobytes()])])
    assert content_digest(b"h", [("c", [array.T])]) == content_digest(b"h", [("c", [array.T.copy().tobytes()])])
