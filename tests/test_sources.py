"""Listing and sniffing: recursive, content-based media type, symlink loops, non-media files reported."""

import os

from curation.ingest.sources import list_sources, sniff_media_type

EXTS = (".mp4", ".jpg", ".png")


def test_sniff_magic_numbers():
    assert sniff_media_type(b"\xff\xd8\xff\xe0" + b"0" * 20) == "image"
    assert sniff_media_type(b"\x89PNG\r\n\x1a\n" + b"0" * 8) == "image"
    assert sniff_media_type(b"\x00\x00\x00\x20ftypisom" + b"0" * 8) == "video"
    assert sniff_media_type(b"\x00\x00\x00\x20ftypavif" + b"0" * 8) == "image"
    assert sniff_media_type(b"\x1a\x45\xdf\xa3" + b"0" * 8) == "video"
    assert sniff_media_type(b"PAR1" + b"0" * 8) is None
    assert sniff_media_type(b"") is None


def test_listing_recursive_sniffs_and_survives_symlink_loop(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "clip.mp4").write_bytes(b"\x00\x00\x00\x20ftypisom")
    # A video without a media extension is found by its content.
    (tmp_path / "a" / "noext").write_bytes(b"\x00\x00\x00\x20ftypisom")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "na me 'q' é.jpg").write_bytes(b"\xff\xd8\xff\xe0")
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    listing = list_sources([str(tmp_path)], EXTS)
    names = sorted(os.path.basename(u) for u in listing.uris)
    assert names == ["clip.mp4", "na me 'q' é.jpg", "noext"]
    assert [os.path.basename(k) for k in listing.skipped] == ["notes.txt"]


def test_listing_file_uri_and_limit(tmp_path):
    for i in range(5):
        (tmp_path / f"v{i}.mp4").write_bytes(b"x")
    listing = list_sources([f"file://{tmp_path}"], EXTS, limit=3)
    assert len(listing.uris) == 3


def test_remote_uri_listing_and_local_copy(tmp_path):
    """Non-local URIs go through fsspec: listed recursively and copied to a temp file for the decoders."""
    import fsspec

    from curation.ingest.sources import open_local, read_header

    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/raw/a/clip.mp4", b"\x00\x00\x00\x20ftypisom" + b"\x00" * 100)
    fs.pipe("/bucket/raw/b/photo", b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    fs.pipe("/bucket/raw/readme.md", b"# notes")
    listing = list_sources(["memory://bucket/raw"], EXTS)
    uri = fs.unstrip_protocol  # fsspec's canonical URI for a path (memory:///... for this filesystem)
    assert listing.uris == [uri("/bucket/raw/a/clip.mp4"), uri("/bucket/raw/b/photo")]
    assert list(listing.skipped) == [uri("/bucket/raw/readme.md")]
    assert read_header(listing.uris[1], 4) == b"\x89PNG"
    with open_local(listing.uris[0]) as path:
        assert os.path.exists(path) and path.endswith(".mp4")
        assert open(path, "rb").read(12)[4:8] == b"ftyp"
    assert not os.path.exists(path), "the temporary copy is removed afterwards"
