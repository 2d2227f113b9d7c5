"""Importers for .npy directories and .h5 files (tiny files written here), resampling and padding."""

import h5py
import numpy as np
import pytest

from cu_scale.data.features import H5Features, NpyDirectoryFeatures, open_features, pad_with_mask, resample


def test_resample_average_pools_into_equal_spans():
    features = np.arange(10, dtype=np.float32).reshape(10, 1)
    pooled = resample(features, 4)  # spans [0,2) [2,5) [5,8) [8,10) with linspace(0, 10, 5) rounded
    np.testing.assert_allclose(pooled[:, 0], [0.5, 3.0, 6.0, 8.5])
    assert resample(features, 10) is features and resample(features, 12) is features


def test_resample_keeps_float16():
    features = np.ones((9, 3), np.float16)
    assert resample(features, 4).dtype == np.float16


def test_pad_with_mask():
    padded, mask = pad_with_mask(np.ones((2, 3), np.float16), 4)
    assert padded.shape == (4, 3) and padded[2:].sum() == 0 and mask.tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="resample first"):
        pad_with_mask(np.ones((5, 3)), 4)


def test_npy_directory_importer(tmp_path):
    np.save(tmp_path / "vidA.npy", np.arange(24, dtype=np.float32).reshape(8, 3))
    source = open_features(tmp_path, max_steps=4)
    assert isinstance(source, NpyDirectoryFeatures)
    np.testing.assert_allclose(source.get("vidA")[:, 0], [1.5, 7.5, 13.5, 19.5])
    assert source.get("missing") is None


def test_h5_importer(tmp_path):
    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as f:
        f["vidA"] = np.ones((3, 5), np.float32)
        f["vidB"] = np.arange(20, dtype=np.float32).reshape(4, 5)
    source = open_features(path, max_steps=2)
    assert isinstance(source, H5Features)
    assert source.get("vidA").shape == (2, 5)
    np.testing.assert_allclose(source.get("vidB")[1], [12.5, 13.5, 14.5, 15.5, 16.5])
    assert source.get("vidC") is None
    source.close()


def test_open_features_explains_a_wrong_path(tmp_path):
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match="expected a directory of .npy files, an .h5/.hdf5 file or a .parquet table"):
        open_features(tmp_path / "x.txt", 4)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_features(tmp_path / "nothing.h5", 4)
