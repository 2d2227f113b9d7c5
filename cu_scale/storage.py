"""Where artifacts live: a local path or an object-store URI, read and written through pyarrow's filesystems.

A store or a run directory may be a local path (``runs/demo``) or a URI pyarrow understands
(``s3://bucket/prefix``, ``gs://...``, ``file:///...``). `locate` turns either into a `Location`: a
filesystem and a path on it, plus the text the user gave, which is what messages and markers show.

Credentials never travel inside a URI. They come the standard way for the filesystem: for S3, the
environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, and ``AWS_ENDPOINT_URL`` for
an S3-compatible server such as MinIO or SeaweedFS) or the AWS files (``~/.aws/credentials``,
``AWS_PROFILE``). A URI that carries a key (``s3://KEY:SECRET@bucket``) is refused, so a key can never
reach a marker, a log line or a report.

Object stores have no directories and no atomic rename: writers that publish a tree (the feature store)
write its files in place and a small index last (the store's manifest), and readers trust only what the
index lists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import io
import json
import os
import pathlib
import posixpath
import urllib.parse

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


class StorageError(ValueError):
    """A location that cannot be used: a malformed URI, credentials inside it, an unknown scheme."""


@dataclasses.dataclass(frozen=True)
class Location:
    """A path on a pyarrow filesystem. `text` is how it is shown: the user's path or URI, never a key."""

    fs: pafs.FileSystem
    path: str
    text: str

    def __truediv__(self, name: str) -> "Location":
        name = str(name).strip("/")
        return Location(self.fs, posixpath.join(self.path, name), posixpath.join(self.text, name) if self.text else name)

    def __str__(self) -> str:
        return self.text

    def __fspath__(self) -> str:
        if not self.is_local:
            raise TypeError(f"{self.text} is in object storage, not a local path")
        return self.path

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def parent(self) -> "Location":
        return Location(self.fs, posixpath.dirname(self.path.rstrip("/")), posixpath.dirname(self.text.rstrip("/")))

    def with_name(self, name: str) -> "Location":
        return self.parent / name

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def uri(self) -> str:
        """What Ray (Data, Train) is given: the local path, or the URI without any query string."""
        return self.path if self.is_local else f"{self.fs.type_name}://{self.path}"

    # -- queries --------------------------------------------------------------------------------------------

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def size(self) -> int:
        return self.info().size

    def file_sizes(self) -> dict[str, int]:
        """Name → size in bytes of each file directly under this directory, from one listing; {} when it does not exist."""
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        return {posixpath.basename(info.path): info.size for info in self.fs.get_file_info(selector) if info.type == pafs.FileType.File}

    # -- bytes and text -------------------------------------------------------------------------------------

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file at once: readers see the old file or the new one, never a part (`replaced`)."""
        with self.replaced() as partial, partial.fs.open_output_stream(partial.path) as stream:
            stream.write(data)

    @contextlib.contextmanager
    def replaced(self):
        """A location to write this file's new content to, which becomes this file when the block ends.

        Local disk: a sibling ``NAME.partial`` renamed over it. Object storage: the file itself, since an
        object appears only when its upload completes."""
        self.parent.mkdir()
        if not self.is_local:
            yield self
            return
        partial = self.with_name(self.name + ".partial")
        try:
            yield partial
        except BaseException:
            partial.unlink()
            raise
        os.replace(partial.path, self.path)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def open_text(self):
        """The file as text lines (UTF-8), streamed: ``for line in location.open_text()``."""
        return io.TextIOWrapper(self.fs.open_input_stream(self.path), encoding="utf-8")

    def open_input(self):
        """A seekable binary file (pyarrow's RandomAccessFile): what Parquet, numpy and h5py readers take."""
        return self.fs.open_input_file(self.path)

    def open_output(self):
        self.parent.mkdir()
        return self.fs.open_output_stream(self.path)

    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        """Create this directory and its parents (pathlib's signature; object stores need no directories)."""
        self.fs.create_dir(self.path, recursive=True)

    def unlink(self, missing_ok: bool = True) -> None:
        if self.is_file():
            self.fs.delete_file(self.path)
        elif not missing_ok:
            raise FileNotFoundError(self.text)

    def remove_tree(self) -> None:
        """Delete this directory and everything under it; nothing happens when it does not exist."""
        if self.is_dir():
            self.fs.delete_dir(self.path)
        elif self.is_file():
            self.fs.delete_file(self.path)

    def glob(self, pattern: str) -> list["Location"]:
        """The entries under this directory that match `pattern` (fnmatch per path part, e.g. ``*/counts.npy``), sorted."""
        parts = pattern.strip("/").split("/")
        found = [self]
        for part in parts:
            found = [
                location / posixpath.basename(info.path)
                for location in found
                for info in location.fs.get_file_info(pafs.FileSelector(location.path, allow_not_found=True))
                if fnmatch.fnmatchcase(posixpath.basename(info.path), part)
            ]
        return sorted(found, key=lambda location: location.path)

    def walk_files(self) -> dict[str, int]:
        """Every file under this directory, recursively: its path relative to here → its size in bytes."""
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=True)
        return {
            posixpath.relpath(info.path, self.path): info.size for info in self.fs.get_file_info(selector) if info.type == pafs.FileType.File
        }

    def sha256(self) -> str:
        digest = hashlib.sha256()
        with self.fs.open_input_stream(self.path) as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()


def on_filesystem(fs: pafs.FileSystem, path: str) -> Location:
    """The `Location` of a path that pyarrow gives with its filesystem (a Ray Train checkpoint's, say)."""
    local = isinstance(fs, pafs.LocalFileSystem)
    return Location(fs, path, path if local else f"{fs.type_name}://{path}")


def locate(where: "str | os.PathLike | Location") -> Location:
    """A `Location` for a local path or a filesystem URI (s3://, gs://, file://, ...).

    Raises StorageError for a URI that carries credentials or that pyarrow cannot open."""
    if isinstance(where, Location):
        return where
    text = os.fspath(where)
    if "://" not in text:
        return Location(pafs.LocalFileSystem(), str(pathlib.Path(text).absolute()), text)
    parts = urllib.parse.urlsplit(text)
    if parts.username or parts.password:
        raise StorageError(
            f"{parts.scheme}://{parts.hostname}{parts.path}: a URI may not carry credentials; give them the standard way "
            "(for S3: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials)"
        )
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (ValueError, OSError) as error:  # pyarrow.ArrowInvalid is a ValueError
        raise StorageError(f"{text}: not a location cu-scale can open ({error})") from None
    return Location(fs, path.rstrip("/"), text.rstrip("/"))


def staging_for(final: Location) -> Location:
    """Where to write a directory that `publish` will make `final`.

    Local disk: a sibling ``FINAL.partial``, emptied, then renamed over `final` (readers never see half a
    directory). Object storage has no rename: `final` itself, emptied; the writer writes its index file
    (a manifest, a summary) last, and readers trust only what an index lists."""
    staging = final.with_name(final.name + ".partial") if final.is_local else final
    staging.remove_tree()
    staging.mkdir()
    return staging


def publish(staging: Location, final: Location) -> None:
    """Make what was written into `staging_for(final)` the directory `final`."""
    if staging.path == final.path:
        return
    final.remove_tree()
    os.rename(staging.path, final.path)


def read_table(location: Location, **options) -> pa.Table:
    """A Parquet file (or a directory of them) at `location`; `options` are pyarrow.parquet.read_table's."""
    return pq.read_table(location.path, filesystem=location.fs, **options)


def write_table(table: pa.Table, location: Location, **options) -> None:
    """Write a Parquet file whole (`Location.replaced`); `options` are pyarrow.parquet.write_table's."""
    with location.replaced() as partial:
        pq.write_table(table, partial.path, filesystem=partial.fs, **options)


def parquet_writer(location: Location, schema: pa.Schema, **options) -> pq.ParquetWriter:
    location.parent.mkdir()
    return pq.ParquetWriter(location.path, schema, filesystem=location.fs, **options)


def write_array(location: Location, array: np.ndarray) -> None:
    """One numpy array as a ``.npy`` file (no pickled objects)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    location.write_bytes(buffer.getvalue())


def read_array(location: Location) -> np.ndarray:
    return np.load(io.BytesIO(location.read_bytes()), allow_pickle=False)


def json_objects(lines, source, error: type[Exception]):
    """(``SOURCE:LINE``, object) for every non-blank line of a JSON Lines file; a line that is not one JSON
    object raises `error` (the reader's own error type) naming it."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as problem:
            raise error(f"{where}: not valid JSON ({problem.msg})") from None
        except RecursionError:
            raise error(f"{where}: JSON nested too deeply to read") from None
        if not isinstance(value, dict):
            raise error(f"{where}: expected a JSON object, got {type(value).__name__}")
        yield where, value
