"""`medsynth.io.mapped`: pages of read-only maps are handed back, a copy-on-write map keeps its changes."""

from __future__ import annotations

import numpy as np

from medsynth.io.mapped import PageRelease, mapping_of


def test_only_read_only_maps_hand_their_pages_back_so_changes_to_a_copy_on_write_map_survive(tmp_path):
    path = tmp_path / "values.raw"
    np.arange(2**20, dtype=np.float32).tofile(path)
    read_only = np.memmap(path, dtype=np.float32, mode="r")
    assert mapping_of(read_only[10:20].reshape(2, 5).T) is not None  # found through views
    edited = np.memmap(path, dtype=np.float32, mode="c")
    edited[:10] = -1.0
    assert mapping_of(edited) is None and mapping_of(np.arange(3)) is None
    PageRelease(edited, every=1).read(edited.nbytes)
    assert (edited[:10] == -1.0).all()  # dropped pages would read back the file's 0..9
    PageRelease(read_only, every=1).read(read_only.nbytes)
    assert np.array_equal(read_only[:10], np.arange(10))  # released pages read again from the file
