"""Arrays spilled to disk per batch and streamed into an .npz equal to np.savez_compressed's."""
from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest

import audit.spill as spill
from audit.spill import SpillArray, write_npz


def test_spilled_rows_stream_into_an_npz_equal_to_savez(tmp_path, monkeypatch):
    monkeypatch.setattr(spill, "_CHUNK_BYTES", 3 * 7 * 4 * 2)  # two rows per chunk: 5 chunks for 9 rows
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(b, 3, 7)).astype(np.float32) for b in (4, 1, 4)]
    s = SpillArray(tmp_path, "cam")
    for b in batches:
        s.append(b)
    whole = np.concatenate(batches)
    assert s.shape == (9, 3, 7)
    np.testing.assert_array_equal(s.read(), whole)
    np.testing.assert_array_equal(s.read(3, 6), whole[3:6])
    ids = np.array([f"img{i}" for i in range(9)])
    write_npz(tmp_path / "a.npz", {"image_id": ids, "cam": s, "layer": np.array("layer4")})
    np.savez_compressed(tmp_path / "b.npz", image_id=ids, cam=whole, layer=np.array("layer4"))
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert a.files == b.files
        for k in a.files:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
            np.testing.assert_array_equal(a[k], b[k])
    # the spill has no name in the folder: a killed audit leaves nothing behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz"]
    s.discard()


def test_spill_casts_to_its_dtype_and_refuses_another_row_shape(tmp_path):
    s = SpillArray(tmp_path, "embedding")
    s.append(np.ones((2, 5), dtype=np.float64))
    assert s.read().dtype == np.float32
    with pytest.raises(ValueError, match=r"embedding: rows of shape \(4,\) appended to rows of shape \(5,\)"):
        s.append(np.ones((1, 4)))


def test_an_empty_spill_writes_an_empty_array(tmp_path):
    s = SpillArray(tmp_path, "cam")
    s.append(np.zeros((0, 2, 2), np.float32))
    write_npz(tmp_path / "e.npz", {"cam": s}, compress=False)
    with np.load(tmp_path / "e.npz") as z:
        assert z["cam"].shape == (0, 2, 2)



def test_a_dropped_spill_closes_its_file_without_a_warning(tmp_path):
    s = SpillArray(tmp_path, "cams")   # an audit that stops on an error never reaches discard()
    s.append(np.zeros((2, 3)))
    f = s._f
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del s
        gc.collect()
    assert f.closed
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
