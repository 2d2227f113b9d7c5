"""Pre-extracted video features: importers for the two formats peer code uses, and resampling.

- a directory of ``VIDEO.npy`` files, one ``(T_raw, Dv)`` array per video (VSLNet, ViGA, ...);
- one HDF5 file with a ``(T_raw, Dv)`` dataset per video id (2D-TAN, MMN, ...);
- one Parquet table (a file or a directory of files) with a ``video_id`` column and a ``features`` column
  holding each video's steps as a list of lists (or of fixed-size lists) of numbers.

All are resampled to at most `max_steps` steps: a longer video is average-pooled into `max_steps`
equal spans (the VSLNet convention), a shorter one is kept as is. The store keeps only the valid
steps; `pad_with_mask` gives the fixed ``(max_steps, Dv)`` array and its validity mask at read time.
Nothing here checks values: the store writer rejects NaN/inf and wrong widths with the source named.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np


class FeatureError(ValueError):
    """A features file that cannot be read as numbers: named with its file (and key), and why."""


NUMERIC_KINDS = "fiu"  # float, signed and unsigned integer arrays; bool, complex, text, objects are refused


def checked_array(array, where: str) -> np.ndarray:
    """`array` as read from a features file, if it holds real numbers: a 2-D one is resampled by the reader, any
    other shape goes on to the store writer, which rejects it with its shape (`cu_scale.data.store.check_features`)."""
    array = np.asarray(array)
    if array.dtype.kind not in NUMERIC_KINDS:
        raise FeatureError(f"{where}: holds {array.dtype} values, not real numbers")
    return array


def resample(features: np.ndarray, max_steps: int) -> np.ndarray:
    """Average-pool ``(T_raw, Dv)`` into `max_steps` equal spans when T_raw > max_steps; else unchanged."""
    if features.ndim != 2:
        raise ValueError(f"features must be (steps, dim), got shape {features.shape}")
    steps = features.shape[0]
    if steps <= max_steps:
        return features
    # Span k covers raw steps [edges[k], edges[k+1]); every span holds at least one step.
    edges = np.linspace(0, steps, max_steps + 1).round().astype(int)
    sums = np.add.reduceat(features.astype(np.float32), edges[:-1], axis=0)
    return (sums / np.diff(edges)[:, None]).astype(features.dtype)


def pad_with_mask(features: np.ndarray, max_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad ``(steps, Dv)`` to ``(max_steps, Dv)``; the mask is True on the valid steps."""
    steps = features.shape[0]
    if steps > max_steps:
        raise ValueError(f"{steps} steps do not fit in max_steps={max_steps}; resample first")
    padded = np.zeros((max_steps, features.shape[1]), dtype=features.dtype)
    padded[:steps] = features
    mask = np.zeros(max_steps, dtype=bool)
    mask[:steps] = True
    return padded, mask


class NpyDirectoryFeatures:
    """Features from ``DIR/VIDEO.npy``; `get` returns None for a video without a file."""

    def __init__(self, directory: str | os.PathLike, max_steps: int):
        self.directory = pathlib.Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"feature directory {self.directory} does not exist")
        self.max_steps = max_steps

    def describe(self) -> str:
        return f"npy files in {self.directory}"

    def source_of(self, video_id: str) -> str:
        return str(self.directory / f"{video_id}.npy")

    def get(self, video_id: str) -> np.ndarray | None:
        path = self.directory / f"{video_id}.npy"
        if not path.exists():
            return None
        try:
            array = checked_array(np.load(path, allow_pickle=False), str(path))  # a pickle would run code: never loaded
        except (ValueError, OSError, EOFError) as error:
            if isinstance(error, FeatureError):
                raise
            raise FeatureError(f"{path}: not a readable .npy array of numbers ({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
        return resample(array, self.max_steps) if array.ndim == 2 else array


class H5Features:
    """Features from one HDF5 file keyed by video id; `get` returns None for a missing key."""

    def __init__(self, path: str | os.PathLike, max_steps: int):
        import h5py  # only this importer needs it

        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"feature file {self.path} does not exist")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as error:
            raise FeatureError(f"{self.path}: not a readable HDF5 file ({str(error).splitlines()[0]})") from None
        self.max_steps = max_steps

    def describe(self) -> str:
        return f"HDF5 file {self.path}"

    def source_of(self, video_id: str) -> str:
        return f"{self.path}:{video_id}"

    def get(self, video_id: str) -> np.ndarray | None:
        import h5py

        if video_id not in self.file:
            return None
        item = self.file[video_id]
        if not isinstance(item, h5py.Dataset):
            raise FeatureError(f"{self.source_of(video_id)}: a group, not a dataset of features")
        try:
            array = checked_array(item[()], self.source_of(video_id))
        except (OSError, TypeError) as error:
            raise FeatureError(f"{self.source_of(video_id)}: cannot be read ({str(error).splitlines()[0]})") from None
        return resample(array, self.max_steps) if array.ndim == 2 else array

    def close(self):
        self.file.close()


class ParquetFeatures:
    """Features from Parquet files with ``video_id`` and ``features`` (steps × Dv, list of lists) columns.

    Opening reads the ``video_id`` column alone, to know which row group holds which video; `get` reads one
    row group and keeps only that one, so memory is a row group of features whatever the table's size
    (the store writer asks for videos in its own order, so a table written in another order re-reads row
    groups: slower, never larger).
    """

    def __init__(self, path: str | os.PathLike, max_steps: int):
        import pyarrow.parquet as pq

        self.path = pathlib.Path(path)
        files = sorted(self.path.glob("*.parquet")) if self.path.is_dir() else [self.path]
        if not files or not files[0].is_file():
            raise FileNotFoundError(f"feature table {self.path} does not exist or holds no .parquet file")
        self.max_steps = max_steps
        self.files = [pq.ParquetFile(file) for file in files]
        self.where: dict[str, tuple[int, int, int]] = {}  # video id → (file, row group, row in the group)
        for f, parquet in enumerate(self.files):
            names = parquet.schema_arrow.names
            if "video_id" not in names or "features" not in names:
                raise ValueError(f"{files[f]}: a feature table needs the columns 'video_id' and 'features', it has {names}")
            for group in range(parquet.num_row_groups):
                ids = parquet.read_row_group(group, columns=["video_id"]).column("video_id").to_pylist()
                for row, video_id in enumerate(map(str, ids)):
                    if video_id in self.where:
                        raise ValueError(f"{files[f]}: video {video_id} appears twice in the feature table")
                    self.where[video_id] = (f, group, row)
        self._cached: tuple[tuple[int, int], object] | None = None

    def describe(self) -> str:
        return f"Parquet feature table {self.path}"

    def source_of(self, video_id: str) -> str:
        return f"{self.path}:{video_id}"

    def get(self, video_id: str) -> np.ndarray | None:
        import pyarrow.compute as pc

        if video_id not in self.where:
            return None
        f, group, row = self.where[video_id]
        if self._cached is None or self._cached[0] != (f, group):
            self._cached = ((f, group), self.files[f].read_row_group(group, columns=["features"]).column("features").combine_chunks())
        steps = self._cached[1][row].values  # one list (or fixed-size list) of numbers per step
        if steps is None or len(steps) == 0:
            return np.zeros((0, 0), np.float32)
        widths = pc.list_value_length(steps).to_numpy(zero_copy_only=False)
        if (widths != widths[0]).any():
            raise ValueError(f"{self.source_of(video_id)}: feature steps have different widths ({sorted(set(widths.tolist()))[:4]})")
        values = steps.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        return resample(values.reshape(len(steps), int(widths[0])), self.max_steps)


def open_features(path: str | os.PathLike, max_steps: int) -> NpyDirectoryFeatures | H5Features | ParquetFeatures:
    """A directory of ``.npy`` files (one per video), an ``.h5``/``.hdf5`` file (one dataset per video id), or a
    ``.parquet`` file or directory of them (one row per video)."""
    path = pathlib.Path(path)
    if path.suffix.lower() == ".parquet" or (path.is_dir() and any(path.glob("*.parquet"))):
        return ParquetFeatures(path, max_steps)
    if path.is_dir():
        return NpyDirectoryFeatures(path, max_steps)
    if path.suffix.lower() in (".h5", ".hdf5"):
        return H5Features(path, max_steps)
    raise ValueError(f"--features {path}: expected a directory of .npy files, an .h5/.hdf5 file or a .parquet table")
