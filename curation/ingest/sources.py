"""Finding inputs: local directories (recursive) and URIs through fsspec; media type from content, not the extension."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

HEADER_BYTES = 64


class SourceError(Exception):
    """A source that cannot be read as a file at all (not a regular file, a name that is not UTF-8)."""


def is_remote(uri: str) -> bool:
    """True for URIs with a scheme other than file://."""
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str) -> str:
    """The filesystem path of a local URI (plain path or file://)."""
    return uri[len("file://"):] if uri.startswith("file://") else uri


def sniff_media_type(header: bytes) -> str | None:
    """'image', 'video' or None, from a file's first bytes (magic numbers of the common containers)."""
    h = header
    if h.startswith(b"\xff\xd8\xff") or h.startswith(b"\x89PNG\r\n\x1a\n") or h[:6] in (b"GIF87a", b"GIF89a"):
        return "image"
    if h[:4] == b"RIFF" and h[8:12] == b"WEBP":
        return "image"
    if h[:2] == b"BM" or h[:4] in (b"II*\x00", b"MM\x00*"):
        return "image"
    if len(h) >= 12 and h[4:8] == b"ftyp":
        brand = h[8:12]
        # HEIF/AVIF still images share the ISO BMFF container with MP4.
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"avif"):
            return "image"
        return "video"
    if h[4:8] in (b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"):
        return "video"
    if h[:4] == b"\x1a\x45\xdf\xa3":  # Matroska / WebM
        return "video"
    if h[:4] == b"RIFF" and h[8:12] == b"AVI ":
        return "video"
    if h[:3] == b"FLV":
        return "video"
    if h[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):  # MPEG program / elementary stream
        return "video"
    if len(h) > 188 and h[0] == 0x47 and h[188] == 0x47:  # MPEG-TS: sync byte every 188 bytes
        return "video"
    return None


@dataclass
class Listing:
    """What listing the inputs found: media candidates, and what was skipped and why."""

    uris: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # uri -> why


def list_sources(inputs: list[str], media_extensions: tuple[str, ...], limit: int | None = None) -> Listing:
    """Expand files, directories (recursively, not following symlinked directories) and URIs into source URIs.

    A file is a candidate when its extension is a media extension, or when its first bytes look like media.
    Other files (notes, manifests) are skipped and reported, never silently lost.
    """
    listing = Listing()
    exts = tuple(e.lower() for e in media_extensions)
    for inp in inputs:
        if is_remote(inp):
            _list_remote(inp, exts, listing)
        else:
            _list_local(local_path(inp), exts, listing)
    listing.uris = sorted(set(listing.uris))
    if limit is not None:
        listing.uris = listing.uris[:limit]
    return listing


def _list_local(path: str, exts: tuple[str, ...], listing: Listing) -> None:
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise FileNotFoundError(f"input not found: {path}")
    if p.is_file() or (p.is_symlink() and not p.is_dir()) or (p.exists() and not p.is_dir()):
        full = str(p.absolute())
        listing.uris.append(escape_name(full) if _has_surrogates(full) else full)
        return
    # os.walk with followlinks=False cannot loop on a symlink cycle; symlinked files are still listed and fail
    # or succeed on their own when opened. Hidden entries are reported in `skipped`.
    for root, dirs, files in os.walk(p, followlinks=False):
        for d in dirs:
            full = os.path.abspath(os.path.join(root, d))
            if d.startswith("."):
                listing.skipped[_printable(full)] = "hidden directory, not walked"
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            full = os.path.abspath(os.path.join(root, name))
            if name.startswith("."):
                # Hidden files (.DS_Store, AppleDouble ._clip.mp4, editors' temp files) are not sources; they are
                # reported, never silently dropped.
                listing.skipped[_printable(full)] = "hidden file (name starts with '.')"
                continue
            if _has_surrogates(full):
                # A name that is not valid UTF-8 cannot be stored in Arrow/Parquet as it is: list it under an
                # escaped spelling, so it still becomes a row (failed, with the reason) instead of crashing the run.
                listing.uris.append(escape_name(full))
                continue
            _consider(full, name, exts, listing, _read_local_header)


def _list_remote(uri: str, exts: tuple[str, ...], listing: Listing) -> None:
    fs, root = fsspec.core.url_to_fs(uri)
    if fs.isfile(root):
        listing.uris.append(uri)
        return
    for path in sorted(fs.find(root)):
        name = path.rsplit("/", 1)[-1]
        if name.startswith("."):
            listing.skipped[fs.unstrip_protocol(path)] = "hidden file (name starts with '.')"
            continue
        full = fs.unstrip_protocol(path)
        _consider(full, name, exts, listing, _read_remote_header)


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _printable(path: str) -> str:
    return escape_name(path) if _has_surrogates(path) else path


def escape_name(path: str) -> str:
    """A file name with non-UTF-8 bytes, spelt with backslash escapes (b'a\\xff' -> 'a\\\\xff')."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _unescape_name(uri: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(0xDC00 + int(m.group(1), 16)), uri)


def check_source(uri: str) -> None:
    """Refuse, before anything opens it, a local source that is not a regular file (a FIFO would block the reader
    forever, a device never ends) or whose name is not valid UTF-8. Raise SourceError, OSError or nothing."""
    if is_remote(uri):
        return
    path = local_path(uri)
    if not os.path.lexists(path):
        raw = _unescape_name(path)
        if raw != path and os.path.lexists(raw):
            raise SourceError("file name is not valid UTF-8 (shown with \\x escapes); rename the file: a manifest "
                              "cannot store its name, so no reader could open it from there")
    st = os.stat(path)  # follows symlinks: raises on loops (ELOOP) and dangling links (ENOENT)
    if not stat.S_ISREG(st.st_mode):
        kind = ("named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "character device" if stat.S_ISCHR(st.st_mode)
                else "block device" if stat.S_ISBLK(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode)
                else "directory" if stat.S_ISDIR(st.st_mode) else "special file")
        raise SourceError(f"not a regular file: {kind}")


def _consider(uri: str, name: str, exts: tuple[str, ...], listing: Listing, read_header) -> None:
    if name.lower().endswith(exts):
        listing.uris.append(uri)
        return
    try:
        header = read_header(uri)
    except OSError:
        # Unreadable file without a media extension: keep it so it is reported as a failed row with the reason.
        listing.uris.append(uri)
        return
    if sniff_media_type(header) is not None:
        listing.uris.append(uri)
    else:
        listing.skipped[uri] = "not a media file (extension and content)"


def _read_local_header(uri: str) -> bytes:
    st = os.stat(uri)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"not a regular file: {uri}")
    with open(uri, "rb") as f:
        return f.read(HEADER_BYTES)


def _read_remote_header(uri: str) -> bytes:
    with fsspec.open(uri, "rb") as f:
        return f.read(HEADER_BYTES)


def read_header(uri: str, n: int = 512) -> bytes:
    """The first `n` bytes of a source."""
    if is_remote(uri):
        with fsspec.open(uri, "rb") as f:
            return f.read(n)
    with open(local_path(uri), "rb") as f:
        return f.read(n)


def file_size(uri: str) -> int:
    """Size in bytes of a source."""
    if is_remote(uri):
        fs, path = fsspec.core.url_to_fs(uri)
        return int(fs.size(path))
    return os.stat(local_path(uri)).st_size


@contextlib.contextmanager
def open_local(uri: str) -> Iterator[str]:
    """A local path for `uri`: the file itself, or a temporary copy of a remote object, removed afterwards."""
    if not is_remote(uri):
        yield local_path(uri)
        return
    suffix = Path(uri.rsplit("/", 1)[-1]).suffix[:16]
    fd, tmp = tempfile.mkstemp(prefix="curation-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out, fsspec.open(uri, "rb") as src:
            shutil.copyfileobj(src, out, length=8 * 1024 * 1024)
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
