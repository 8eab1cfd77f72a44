"""Listing and sniffing: recursive, content-based media type, symlink loops, non-media files reported."""

import os

from curation.sources import list_sources, sniff_media_type

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
