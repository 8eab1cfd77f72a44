"""`curation label`: the label store (append-only, undo, a torn write), agreement and the combining rule, the token
and Host checks, and one end-to-end run in headless Chromium (Debian's, through Playwright) as a person uses it:
name, ten labels with the keyboard, an undo, a reload, then `curation scorer train` on the labels."""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from curation.label.agreement import MAX_SPREAD, combine, pairwise, summary
from curation.label.server import LabelApp, LabelServer, TokenError, check_token, host_allowed
from curation.label.store import LabelError, LabelStore, paths_for

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
EVIL_NAME = '<img src=x onerror="window.pwned=1">.jpg'
EVIL_OCR = "<script>window.pwned=2</script> & <b>bold</b>"
WAIT_MS = 60_000  # bound on every browser wait: generous for a loaded 2-core machine, finite so nothing hangs


# -- the store -------------------------------------------------------------------------------------------------------


def test_store_appends_undoes_and_materializes(tmp_path):
    ann = tmp_path / "annotations.parquet"
    st = LabelStore(ann, ["a", "b", "c"], manifest="/runs/x")
    st.label("alice", "a", 4, note="sharp")
    st.label("alice", "b", 2)
    st.label("bob", "a", 5)
    st.label("alice", "a", 3)  # relabelled: the latest wins
    assert st.undo("alice")["sample_id"] == "a"  # undoes the relabel: 4 is back
    events, parquet = paths_for(ann)
    lines = events.read_text().splitlines()
    assert len(lines) == 5 and [json.loads(x)["event"] for x in lines] == ["label"] * 4 + ["undo"]
    df = pd.read_parquet(parquet).sort_values(["annotator", "sample_id"])
    assert list(zip(df.annotator, df.sample_id, df.score)) == [("alice", "a", 4), ("alice", "b", 2), ("bob", "a", 5)]
    assert df[df.sample_id == "a"].note.tolist()[0] == "sharp" and set(df.manifest) == {"/runs/x"}
    assert st.undo("alice")["sample_id"] == "b" and st.undo("alice")["sample_id"] == "a"
    assert st.undo("alice") is None  # nothing left of alice's
    assert [(x.annotator, x.score) for x in st.labels()] == [("bob", 5)]
    for bad in [("alice", "zzz", 3), ("alice", "a", 6), ("alice", "a", True), ("<b>", "a", 3), ("", "a", 1)]:
        with pytest.raises(LabelError):
            st.label(*bad)


def test_store_survives_a_write_cut_short(tmp_path):
    """A crash mid-write leaves a torn last line: every earlier label still reads, and the next one is whole."""
    ann = tmp_path / "annotations.parquet"
    st = LabelStore(ann, ["a", "b", "c"])
    st.label("alice", "a", 4)
    st.label("alice", "b", 1)
    with open(st.events_path, "ab") as f:  # what a process killed inside write() can leave
        f.write(b'{"event":"label","id":"dead","annotator":"alice","sample_id":"c","sco')
    fresh = LabelStore(ann, ["a", "b", "c"])
    assert [(x.sample_id, x.score) for x in fresh.labels()] == [("a", 4), ("b", 1)]
    fresh.label("alice", "c", 5)
    assert [(x.sample_id, x.score) for x in LabelStore(ann).labels()] == [("a", 4), ("b", 1), ("c", 5)]
    assert len(pd.read_parquet(st.labels_path)) == 3
    # the Parquet is replaced whole: no temporary file stays beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations.events.jsonl", "annotations.labels.parquet"]


# -- agreement -------------------------------------------------------------------------------------------------------


def _long(rows):
    return pd.DataFrame(rows, columns=["sample_id", "annotator", "score"])


def test_agreement_and_combining_rule():
    a = [1, 2, 3, 4, 5, 3, 2, 4]
    b = [1, 2, 3, 4, 4, 3, 4, 4]
    df = _long([(f"s{i}", "ann", x) for i, x in enumerate(a)] + [(f"s{i}", "bo", x) for i, x in enumerate(b)]
               + [("s0", "cy", 1), ("only", "cy", 2)])
    pairs = {(p["a"], p["b"]): p for p in pairwise(df)}
    p = pairs[("ann", "bo")]
    assert p["n"] == 8 and p["exact"] == 6 / 8 and p["within_1"] == 7 / 8
    # quadratic-weighted kappa by its formula: 1 - sum(w*O) / sum(w*E), w = (i-j)^2 / (k-1)^2
    o = np.zeros((5, 5))
    for x, y in zip(a, b):
        o[x - 1, y - 1] += 1
    e = np.outer(o.sum(1), o.sum(0)) / o.sum()
    w = np.subtract.outer(np.arange(5), np.arange(5)) ** 2 / 16
    assert p["kappa"] == pytest.approx(1 - (w * o).sum() / (w * e).sum())
    assert pairs[("ann", "cy")]["n"] == 1 and pairs[("ann", "cy")]["kappa"] is None  # one row: no kappa
    s = summary(df)
    assert s["annotators"] == {"ann": 8, "bo": 8, "cy": 2} and s["rows_by_annotators"] == {1: 1, 2: 7, 3: 1}

    out, stats = combine(df)
    got = dict(zip(out.sample_id, out.score))
    assert "s6" not in got  # 2 and 4: spread 2 > MAX_SPREAD, excluded
    assert got["s4"] == 4  # 5 and 4: mean 4.5 rounds down
    assert got["s0"] == 1 and got["s3"] == 4 and got["only"] == 2
    assert stats["rows_excluded_disagreement"] == 1 and stats["rows_used"] == 8 and MAX_SPREAD == 1


# -- the token and Host checks ---------------------------------------------------------------------------------------


def test_token_and_host_checks():
    check_token(None, {}, {})
    check_token("s3cret", {"token": "s3cret"}, {})
    check_token("s3cret", {}, {"Authorization": "Bearer s3cret"})
    for q, h in [({}, {}), ({"token": "s3cre"}, {}), ({"token": ""}, {}), ({}, {"Authorization": "Bearer x"})]:
        with pytest.raises(TokenError):
            check_token("s3cret", q, h)
    assert all(host_allowed(h) for h in ("127.0.0.1:8765", "localhost", "LOCALHOST:1", "[::1]:80"))
    assert not any(host_allowed(h) for h in (None, "", "evil.example:8765", "127.0.0.1.evil.example", "[::2]:80"))


def _get(url: str, **headers: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_server_requires_its_token_on_every_request(tmp_path):
    """A server with a token answers 401 to the page, the API and previews without it (rows need no media here)."""
    out = tmp_path / "out"
    (out / "samples").mkdir(parents=True)
    pd.DataFrame({"sample_id": ["a", "b"], "source_uri": ["/nowhere/a.jpg", "/nowhere/b.jpg"],
                  "media_type": "image", "status": "kept"}).to_parquet(out / "samples" / "part-00000.parquet")
    ann = out / "annotation" / "annotations.parquet"
    ann.parent.mkdir()
    pd.DataFrame({"sample_id": ["a", "b"], "score": pd.array([None, None], dtype="Int64"),
                  "manifest": str(out)}).to_parquet(ann)
    with LabelServer(LabelApp(ann, token="t0ken"), "127.0.0.1", 0) as server:
        base = server.url.split("?")[0]
        assert server.url.endswith("/?token=t0ken")
        for path in ("", "api/items", "api/state", "preview/0", "static/label.js"):
            assert _get(base + path) == 401, path
            assert _get(base + path + "?token=t0kem") == 401, path
        assert _get(base + "?token=t0ken") == 200 and _get(base + "api/items", Authorization="Bearer t0ken") == 200
        assert _get(base + "preview/0?token=t0ken") == 404  # no media: no preview, said plainly


# -- a small run output, labelled in Chromium -------------------------------------------------------------------------


def _media(folder: Path) -> list[Path]:
    """Three short H.264 clips (a square moving over a gradient) and three photos-like images, one of them under a
    file name that is HTML; made here in milliseconds rather than by the sample generator."""
    import av
    from PIL import Image

    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:144, 0:192]
    files = []
    for v in range(3):
        path = folder / f"clip_{v}.mp4"
        with av.open(str(path), "w") as c:
            st = c.add_stream("libx264", rate=24)
            st.width, st.height, st.pix_fmt = 192, 144, "yuv420p"
            for t in range(48):
                img = np.stack([(xx + 4 * t * (v + 1)) % 256, yy * 255 // 144, np.full_like(xx, 80 * v)], -1)
                img[40:80, 10 + 3 * t:50 + 3 * t] = 255
                for pkt in st.encode(av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")):
                    c.mux(pkt)
            for pkt in st.encode():
                c.mux(pkt)
        files.append(path)
    rng = np.random.default_rng(0)
    for k, name in enumerate(["photo_0.jpg", "photo_1.png", EVIL_NAME]):
        arr = (np.stack([xx * 255 // 192, yy * 255 // 144, np.full_like(xx, 60 * k)], -1)
               + rng.integers(0, 40, (144, 192, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / name)
        files.append(folder / name)
    return files


def _output(tmp_path: Path) -> Path:
    """A small output over real media files, probed and split as the pipeline does (`source_to_rows`), with scores,
    an OCR text and a file name that are HTML, and an annotation set drawn by `curation scorer sample`."""
    from curation.config import PipelineConfig
    from curation.cli.scorer import sample_annotations
    from curation.ingest import source_to_rows

    rows = [r for f in _media(tmp_path / "media") for r in source_to_rows(str(f), PipelineConfig())]
    rows += [{**r, "sample_id": r["sample_id"] + f"-{k}"} for k in range(2) for r in rows if r["media_type"] == "video"]
    rng = np.random.default_rng(0)
    for i, r in enumerate(rows):
        video = r["media_type"] == "video"
        r.update(status="kept", reject_reasons=[], sharpness=300.0 + 40 * i, motion_score=0.02 if video else None,
                 motion_tier="optimal" if video else None, text_area_ratio=0.01 * i, watermark_score=0.1,
                 cluster_id=i % 3, embedding=rng.normal(size=8).tolist(),
                 ocr_text=EVIL_OCR if r["source_uri"].endswith(EVIL_NAME) else None)
    assert len(rows) >= 12
    out = tmp_path / "out"
    (out / "samples").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(out / "samples" / "part-00000.parquet")
    (out / "run.json").write_text("{}")
    sample_annotations(out, n=len(rows))
    return out


def test_label_page_end_to_end_in_chromium(tmp_path):
    """Label ten rows with the keyboard, undo one, reload and find them kept, hostile text shown as text, then train
    the scorer from the labels (a browser that stops answering is killed and the session run once more)."""
    from tests.browser import retry_if_hung

    retry_if_hung(lambda attempt: _label_session(tmp_path / f"attempt{attempt}"))


def _label_session(tmp_path: Path) -> None:
    """One end-to-end labelling session on a fresh output (see the test above)."""
    from playwright.sync_api import expect

    from curation.cli.scorer import train_scorer
    from tests.browser import chromium

    tmp_path.mkdir(parents=True)
    out = _output(tmp_path)
    ann = out / "annotation" / "annotations.parquet"
    errors: list[str] = []
    server = LabelServer(LabelApp(ann), "127.0.0.1", 0).start(timeout_s=30)
    try:
        n = len(server.app.cards)
        evil = next(c for c in server.app.cards if c["name"] == EVIL_NAME)
        # the server refuses a foreign Host header (DNS rebinding) and a form post
        req = urllib.request.Request(server.url + "api/items", headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(req, timeout=30)
        req = urllib.request.Request(server.url + "api/label", data=b"score=1", method="POST")
        with pytest.raises(urllib.error.HTTPError, match="400"):
            urllib.request.urlopen(req, timeout=30)

        with chromium(viewport={"width": 1280, "height": 900}) as ctx:
            ctx.set_default_timeout(WAIT_MS)
            page = ctx.new_page()
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
            page.goto(server.url)
            page.fill("#annotator", "alice")
            page.keyboard.press("Enter")
            expect(page.locator("#progress")).to_have_text(f"0 / {n}", timeout=WAIT_MS)
            expect(page.locator("#preview")).to_have_js_property("complete", True, timeout=WAIT_MS)
            assert page.eval_on_selector("#preview", "i => i.naturalWidth") > 0
            page.screenshot(path=str(tmp_path / "label.png"))
            scores = [5, 4, 3, 2, 1, 5, 4, 3, 2, 1]
            for k, s in enumerate(scores):
                page.keyboard.press(str(s))
                expect(page.locator("#progress")).to_have_text(f"{k + 1} / {n}", timeout=WAIT_MS)
            page.keyboard.press("u")  # undo the tenth: back on it, unlabelled
            expect(page.locator("#progress")).to_have_text(f"9 / {n}", timeout=WAIT_MS)
            expect(page.locator("#meta")).to_contain_text("#10 ", timeout=WAIT_MS)

            page.reload()
            page.fill("#annotator", "alice")
            page.click("#begin")
            expect(page.locator("#progress")).to_have_text(f"9 / {n}", timeout=WAIT_MS)
            # resumes at the first unlabelled row
            expect(page.locator("#meta")).to_contain_text("#10 ", timeout=WAIT_MS)
            page.keyboard.press("ArrowLeft")
            # the ninth row shows its label
            expect(page.locator("#buttons button.current")).to_have_text("2 poor", timeout=WAIT_MS)

            # the hostile file name and OCR text are shown as text, and nothing of them ran
            step = evil["index"] - 8  # from the ninth row to the one with the hostile name
            for _ in range(abs(step)):
                page.keyboard.press("ArrowRight" if step > 0 else "ArrowLeft")
            expect(page.locator("#name")).to_have_text(EVIL_NAME, timeout=WAIT_MS)
            expect(page.locator("#ocr")).to_have_text(EVIL_OCR, timeout=WAIT_MS)
            shutil.copy(tmp_path / "label.png", Path(tempfile.gettempdir()) / "curation-label-page.png")
            page.screenshot(path=str(Path(tempfile.gettempdir()) / "curation-label-hostile.png"))
            assert page.evaluate("window.pwned") is None
            assert page.locator("#name img, #ocr script, #ocr b").count() == 0
    finally:
        server.stop()
    assert errors == [], errors

    labels = pd.read_parquet(out / "annotation" / "annotations.labels.parquet")
    assert len(labels) == 9 and set(labels.annotator) == {"alice"}
    assert sorted(labels.score.tolist()) == sorted(scores[:9])
    # a second annotator on some of the same rows, through the store, then train on both
    bob = LabelStore(ann, manifest=str(out.resolve()))
    for sid, s in zip(labels.sample_id[:4], [5, 1, 3, 2]):
        bob.label("bob", sid, s)
    path, metrics = train_scorer(out / "annotation" / "annotations.labels.parquet", model_dir=str(tmp_path / "m"))
    assert path.is_file() and metrics["annotators"] == {"alice": 9, "bob": 4}
    assert metrics["combine"]["rows_multi_annotator"] == 4 and metrics["n_labelled"] == metrics["combine"]["rows_used"]
    assert len(metrics["agreement"]) == 1 and metrics["agreement"][0]["n"] == 4
