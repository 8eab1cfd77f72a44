"""Where a run's outputs go: a local folder or an object store (`s3://bucket/prefix`, `gs://...`, any fsspec URL).

Every writer and reader of `OUT/` (sample parts, stage mixes, run.json, centroids, report.html) goes through these
functions, which take a *location*: a local path, or a URL with its scheme. Locations are plain strings, joined with
`join`, so one spelling serves the driver, Ray workers (which receive them in task arguments) and log messages.

The rule that a file appears whole holds on both kinds of store, by different means:
- local or shared filesystem: written under a hidden temporary name in the same folder, fsynced, then renamed into
  place (readers and resume ignore hidden names);
- object store: the object is written in one PUT, which readers see whole or not at all. A rename there is a copy
  plus a delete, neither atomic nor cheap, so there is no temporary name.

Object-store listings are not cached (`use_listings_cache=False`): parts are rewritten by Ray workers while the
driver reads them, and a cached size or listing would be stale. Credentials and endpoints come from the usual
places of each backend (for S3: `AWS_*` variables or `~/.aws`, `AWS_ENDPOINT_URL` for an S3-compatible server;
fsspec's `FSSPEC_S3_*` / `FSSPEC_GCS_*` variables also apply), the same as for inputs.
"""

from __future__ import annotations

import fnmatch
import json
import os
import secrets
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


def is_url(location: str | os.PathLike) -> bool:
    """True for a location on a non-local filesystem (a URL whose scheme is not `file`)."""
    s = os.fspath(location)
    return "://" in s and not s.startswith("file://")


def _local(location: str | os.PathLike) -> str:
    s = os.fspath(location)
    return s[len("file://"):] if s.startswith("file://") else s


def join(location: str | os.PathLike, *parts: str) -> str:
    """`location/part/...` with `/` on object stores and the OS separator locally."""
    if is_url(location):
        return "/".join([os.fspath(location).rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(_local(location), *parts)


def name(location: str | os.PathLike) -> str:
    """The last component of a location (a folder's or a file's name)."""
    return os.fspath(location).rstrip("/").rsplit("/", 1)[-1] if is_url(location) else \
        os.path.basename(os.path.normpath(_local(location)))


def filesystem(location: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, path on it) of a location."""
    if not is_url(location):
        return fsspec.filesystem("file"), os.path.abspath(_local(location))
    fs, path = fsspec.core.url_to_fs(os.fspath(location), use_listings_cache=False)
    return fs, path


def exists(location: str | os.PathLike) -> bool:
    """Whether a file or folder (on an object store: any object under the prefix) exists there."""
    if not is_url(location):
        return os.path.exists(_local(location))
    fs, path = filesystem(location)
    return bool(fs.exists(path))


def is_file(location: str | os.PathLike) -> bool:
    """Whether a file (object) exists at exactly that location."""
    if not is_url(location):
        return os.path.isfile(_local(location))
    fs, path = filesystem(location)
    return bool(fs.isfile(path))


def list_files(directory: str | os.PathLike, pattern: str = "part-*.parquet") -> list[str]:
    """Files directly in `directory` whose name matches `pattern`, sorted, as locations. Hidden names (temporary
    files of a write in progress) never match a pattern that does not start with a dot."""
    if not is_url(directory):
        d = os.path.abspath(_local(directory))  # absolute: Ray workers report and reopen these paths
        if not os.path.isdir(d):
            return []
        return sorted(os.path.join(d, n) for n in os.listdir(d)
                      if fnmatch.fnmatchcase(n, pattern) and os.path.isfile(os.path.join(d, n)))
    fs, path = filesystem(directory)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    base = os.fspath(directory).rstrip("/")
    names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "file"]
    return sorted(f"{base}/{n}" for n in names if fnmatch.fnmatchcase(n, pattern))


def list_dirs(directory: str | os.PathLike) -> list[str]:
    """Folders directly in `directory` (on an object store: common prefixes), sorted, as locations; hidden ones
    (a stage tree being built) are left out."""
    if not is_url(directory):
        d = os.path.abspath(_local(directory))
        if not os.path.isdir(d):
            return []
        return sorted(os.path.join(d, n) for n in os.listdir(d)
                      if not n.startswith(".") and os.path.isdir(os.path.join(d, n)))
    fs, path = filesystem(directory)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    base = os.fspath(directory).rstrip("/")
    names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory"]
    return sorted(f"{base}/{n}" for n in names if not n.startswith("."))


def read_bytes(location: str | os.PathLike) -> bytes:
    """The whole content of a file."""
    if not is_url(location):
        with open(_local(location), "rb") as f:
            return f.read()
    fs, path = filesystem(location)
    return fs.cat_file(path)


def read_text(location: str | os.PathLike) -> str:
    """The whole content of a UTF-8 text file."""
    return read_bytes(location).decode("utf-8")


def _write_local(location: str | os.PathLike, write) -> None:
    """Call `write(tmp_path)`, fsync the file, rename it to `location`; the temporary file never outlives a failure."""
    final = _local(location)
    folder, base = os.path.split(final)
    os.makedirs(folder or ".", exist_ok=True)
    tmp = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(data: bytes, location: str | os.PathLike) -> None:
    """Write a file that appears whole: temporary name + fsync + rename locally; on an object store one PUT (s3fs
    switches to a multipart upload for large bodies, which likewise appears only once complete)."""
    if is_url(location):
        fs, path = filesystem(location)
        fs.pipe_file(path, data)
        return

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    _write_local(location, write)


def write_text(text: str, location: str | os.PathLike) -> None:
    """Write a UTF-8 text file that appears whole (`write_bytes`)."""
    write_bytes(text.encode("utf-8"), location)


def write_json(obj: Any, location: str | os.PathLike) -> None:
    """Write JSON (indented; values JSON cannot hold as strings) that appears whole."""
    write_text(json.dumps(obj, indent=2, sort_keys=False, default=str), location)


def write_parquet(table: pa.Table, location: str | os.PathLike) -> None:
    """Write a zstd Parquet file that appears whole. Locally it streams into the temporary file; for an object
    store it is built in memory first, since the single PUT needs the whole body (a part is bounded by
    `rows_per_file`)."""
    if not is_url(location):
        _write_local(location, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
        return
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    write_bytes(sink.getvalue().to_pybytes(), location)


def _arrow_fs(fs: fsspec.AbstractFileSystem):
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return PyFileSystem(FSSpecHandler(fs))


def arrow_paths(locations: list[str]) -> tuple[list[str], Any]:
    """(paths, filesystem) for pyarrow and `ray.data.read_parquet`: local paths with the default filesystem (None),
    object-store paths with a pyarrow wrapper of the same fsspec filesystem the rest of the run uses."""
    if not locations or not is_url(locations[0]):
        return [_local(x) for x in locations], None
    fs, _ = filesystem(locations[0])
    return [filesystem(x)[1] for x in locations], _arrow_fs(fs)


def location_of(path: str, like: str | os.PathLike) -> str:
    """The location of a `path` that pyarrow or Ray reported (no scheme) on the same store as `like`."""
    if not is_url(like):
        return path
    fs, _ = filesystem(like)
    return fs.unstrip_protocol(path)


def read_parquet(location: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file (or the chosen columns of it)."""
    if not is_url(location):
        return pq.read_table(_local(location), columns=columns)
    fs, path = filesystem(location)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def parquet_schema(location: str | os.PathLike) -> pa.Schema:
    """The Arrow schema of one Parquet file."""
    if not is_url(location):
        return pq.read_schema(_local(location))
    fs, path = filesystem(location)
    with fs.open(path, "rb") as f:
        return pq.read_schema(f)


def parquet_rows(location: str | os.PathLike) -> int:
    """Row count of one Parquet file, from its footer."""
    if not is_url(location):
        return pq.ParquetFile(_local(location)).metadata.num_rows
    fs, path = filesystem(location)
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


def makedirs(location: str | os.PathLike) -> None:
    """Create a local folder (and its parents); object stores have no folders, so nothing to do there."""
    if not is_url(location):
        os.makedirs(_local(location), exist_ok=True)


def remove(location: str | os.PathLike, recursive: bool = False) -> None:
    """Delete a file, or a folder with everything under it; a missing one is not an error."""
    if not is_url(location):
        p = _local(location)
        if os.path.isdir(p) and recursive:
            import shutil

            shutil.rmtree(p, ignore_errors=True)
        elif os.path.lexists(p):
            os.unlink(p)
        return
    fs, path = filesystem(location)
    try:
        fs.rm(path, recursive=recursive)
    except FileNotFoundError:
        pass


class DirReplacement:
    """Replace a whole folder (e.g. `stages/`) with a new tree built by the caller through `file(...)`.

    Local: the tree is built in a hidden sibling folder and swapped in with two renames, so readers see the old tree
    or the new one. Object store: each new object is written in place in one PUT, then every object of the old tree
    that the new one did not write is deleted; between the two a reader may see old files beside new ones."""

    def __init__(self, final: str | os.PathLike) -> None:
        self.final = os.fspath(final)
        self.remote = is_url(self.final)
        self.written: set[str] = set()
        if self.remote:
            self.root = self.final
        else:
            parent, base = os.path.split(os.path.abspath(_local(self.final)))
            self.root = os.path.join(parent, f".{base}.tmp-{os.getpid()}-{secrets.token_hex(3)}")
            os.makedirs(self.root)

    def folder(self, *parts: str) -> str:
        """A folder of the new tree (created locally, so that an empty one exists too)."""
        loc = join(self.root, *parts)
        makedirs(loc)
        return loc

    def file(self, *parts: str) -> str:
        """The location to write one file of the new tree at."""
        self.written.add("/".join(parts))
        return join(self.root, *parts)

    def commit(self) -> None:
        """Make the new tree the folder's content."""
        if self.remote:
            fs, root = filesystem(self.final)
            try:
                existing = fs.find(root)
            except FileNotFoundError:
                existing = []
            stale = [p for p in existing if p[len(root):].strip("/") not in self.written]
            if stale:
                fs.rm(stale)
            return
        final = os.path.abspath(_local(self.final))
        old = f"{self.root}.old"
        if os.path.exists(final):
            os.rename(final, old)
        os.rename(self.root, final)
        remove(old, recursive=True)

    def abort(self) -> None:
        """Leave the old tree as it was (locally; on an object store the objects already written stay)."""
        if not self.remote:
            remove(self.root, recursive=True)
