"""Pre-extracted video features: importers for the two formats peer code uses, and resampling.

- a directory of ``VIDEO.npy`` files, one ``(T_raw, Dv)`` array per video (VSLNet, ViGA, ...);
- one HDF5 file with a ``(T_raw, Dv)`` dataset per video id (2D-TAN, MMN, ...).

Both are resampled to at most `max_steps` steps: a longer video is average-pooled into `max_steps`
equal spans (the VSLNet convention), a shorter one is kept as is. The store keeps only the valid
steps; `pad_with_mask` gives the fixed ``(max_steps, Dv)`` array and its validity mask at read time.
Nothing here checks values: the store writer rejects NaN/inf and wrong widths with the source named.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np


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
        return resample(np.load(path), self.max_steps)


class H5Features:
    """Features from one HDF5 file keyed by video id; `get` returns None for a missing key."""

    def __init__(self, path: str | os.PathLike, max_steps: int):
        import h5py  # only this importer needs it

        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"feature file {self.path} does not exist")
        self.file = h5py.File(self.path, "r")
        self.max_steps = max_steps

    def describe(self) -> str:
        return f"HDF5 file {self.path}"

    def source_of(self, video_id: str) -> str:
        return f"{self.path}:{video_id}"

    def get(self, video_id: str) -> np.ndarray | None:
        if video_id not in self.file:
            return None
        return resample(np.asarray(self.file[video_id]), self.max_steps)

    def close(self):
        self.file.close()


def open_features(path: str | os.PathLike, max_steps: int) -> NpyDirectoryFeatures | H5Features:
    """A directory means one ``.npy`` per video; a ``.h5``/``.hdf5`` file means one dataset per video id."""
    path = pathlib.Path(path)
    if path.is_dir():
        return NpyDirectoryFeatures(path, max_steps)
    if path.suffix.lower() in (".h5", ".hdf5"):
        return H5Features(path, max_steps)
    raise ValueError(f"--features {path}: expected a directory of .npy files or an .h5/.hdf5 file")
