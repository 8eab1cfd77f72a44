"""The web server behind `curation label`: one page (static HTML + vanilla JS, no build step) and a small JSON API,
served by aiohttp (already a dependency through Ray and s3fs) from a background thread.

Security: it binds 127.0.0.1 unless told otherwise. Bound to loopback it also refuses requests whose `Host` header
is not a loopback name (a web page elsewhere cannot reach it by DNS rebinding). Bound to any other address it
requires a token (generated when none is given), checked on every request, page and API alike, in constant time;
the printed URL carries it. Writes are JSON POSTs only (a cross-site form cannot send them). Data from the run (file
names, OCR text, captions) goes to the page as JSON and is put into the DOM with `textContent`, never as HTML, and the
page's Content-Security-Policy allows no inline script on top of that.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curation.label.agreement import summary
from curation.label.store import LabelError, LabelStore

log = logging.getLogger("curation.label")

STATIC = Path(__file__).resolve().parent / "static"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
PREVIEW_LONG_SIDE = 480  # px, shown at its own size: an upscaled preview would look blurrier than the clip
CARD_SCORES = ("quality_score", "aesthetic_score", "sharpness", "exposure", "contrast", "motion_score",
               "camera_motion", "object_motion", "shake_score", "text_area_ratio", "watermark_score", "nsfw_score",
               "synthetic_score")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class TokenError(PermissionError):
    """A request without the server's token."""


def check_token(expected: str | None, query: dict[str, str], headers: dict[str, str]) -> None:
    """Pass when no token is set or the request carries it (`?token=` or `Authorization: Bearer`); else TokenError."""
    if not expected:
        return
    got = query.get("token") or ""
    auth = headers.get("Authorization", "")
    if not got and auth.startswith("Bearer "):
        got = auth[len("Bearer "):]
    if not hmac.compare_digest(got.encode("utf-8"), expected.encode("utf-8")):
        raise TokenError("missing or wrong token")


def host_allowed(host_header: str | None) -> bool:
    """Whether a `Host` header names a loopback address (any port)."""
    if not host_header:
        return False
    h = host_header.strip().lower()
    if h.startswith("["):  # [::1]:port
        h = h[1:h.find("]")] if "]" in h else h
    elif h.count(":") == 1:
        h = h.split(":")[0]
    return h in LOOPBACK


def load_items(annotations: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The rows of an annotation set joined with their manifest rows (`curation scorer sample` order), and the
    manifest path."""
    from curation.cli.scorer import AnnotationError
    from curation.manifest import SAMPLES, read_manifest
    from curation.report import ROW_COLUMNS

    if not annotations.is_file():
        raise AnnotationError(f"{annotations}: no annotation set; draw one first with `curation scorer sample "
                              f"--manifest OUT --n 500`")
    ann = pd.read_parquet(annotations)
    if "sample_id" not in ann.columns:
        raise AnnotationError(f"{annotations}: no `sample_id` column")
    manifest = None
    if "manifest" in ann.columns and ann["manifest"].notna().any():
        manifest = str(ann["manifest"].dropna().iloc[0])
    if manifest is None:
        raise AnnotationError(f"{annotations}: no `manifest` column saying which run its rows come from")
    rows = read_manifest(Path(manifest) / SAMPLES, list(ROW_COLUMNS), only_existing=True).to_pandas()
    by_id = {str(r["sample_id"]): r for r in rows.to_dict("records")}
    items, missing = [], 0
    for sid in ann["sample_id"].astype(str):
        r = by_id.get(sid)
        if r is None:
            missing += 1
            continue
        items.append(r)
    if missing:
        log.warning("%d of %d annotation rows are not in %s/%s: not shown", missing, len(ann), manifest, SAMPLES)
    if not items:
        raise AnnotationError(f"none of the rows of {annotations} is in {manifest}/{SAMPLES}")
    return items, manifest


def _plain(v: Any) -> Any:
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    return v


def card(i: int, row: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of one row (plain JSON; every string is data for `textContent`)."""
    from curation.report import PREVIEW_WINDOW_S, fmt_duration, fmt_num

    video = row.get("media_type") == "video"
    size = None if _plain(row.get("width")) is None else f"{int(row['width'])}×{int(row['height'])}"
    if video:
        s, e = int(row["start_frame"]), int(row["end_frame"])
        where = (f"frames {s}–{e} of the source at {fmt_num(float(row['fps']))} fps "
                 f"({fmt_duration(row.get('duration_s'))}); the preview loops {PREVIEW_WINDOW_S:g} s from its middle "
                 "at real speed")
    else:
        where = ""
    reasons = _plain(row.get("reject_reasons")) or []
    return {
        "index": i, "sample_id": str(row["sample_id"]), "name": os.path.basename(str(row["source_uri"])),
        "source_uri": str(row["source_uri"]), "media_type": str(row.get("media_type")), "where": where,
        "size": size, "status": _plain(row.get("status")), "reject_reasons": [str(x) for x in reasons],
        "motion_tier": _plain(row.get("motion_tier")) if video else None,
        "ocr_text": _plain(row.get("ocr_text")) or "", "caption": _plain(row.get("caption")) or "",
        "scores": [[c, fmt_num(row.get(c))] for c in CARD_SCORES if _plain(row.get(c)) is not None],
    }


class LabelApp:
    """The state of one `curation label` server: the rows, their previews, the label store."""

    def __init__(self, annotations: str | os.PathLike, token: str | None = None, loopback_only: bool = True,
                 preview_workers: int = 2):
        self.annotations = Path(annotations)
        self.rows, self.manifest = load_items(self.annotations)
        self.cards = [card(i, r) for i, r in enumerate(self.rows)]
        self.store = LabelStore(self.annotations, [c["sample_id"] for c in self.cards], self.manifest)
        self.store.materialize()  # the Parquet reflects the event log from the start
        self.token = token
        self.loopback_only = loopback_only
        self.preview_dir = self.annotations.parent / f"{self.annotations.stem}.previews"
        self.pool = ThreadPoolExecutor(max_workers=preview_workers, thread_name_prefix="label-preview")
        self._preview_locks: dict[int, threading.Lock] = {i: threading.Lock() for i in range(len(self.rows))}

    def preview_bytes(self, i: int) -> tuple[bytes, str] | None:
        """The row's looping preview (animated WebP; JPEG for an image), made once through the report's isolated
        decoder path and cached next to the annotation set; None when it cannot be decoded."""
        from curation.report import preview

        row = self.rows[i]
        key = hashlib.sha256(str(row["sample_id"]).encode()).hexdigest()[:32]  # never a path from the data
        with self._preview_locks[i]:
            for ext, mime in (("webp", "image/webp"), ("jpg", "image/jpeg")):
                p = self.preview_dir / f"{key}.{ext}"
                if p.exists():
                    return p.read_bytes(), mime
            if (self.preview_dir / f"{key}.none").exists():
                return None
            self.preview_dir.mkdir(parents=True, exist_ok=True)
            uri = preview(row, PREVIEW_LONG_SIDE)
            if uri is None:
                (self.preview_dir / f"{key}.none").touch()
                return None
            head, b64 = uri.split(",", 1)
            mime = head[len("data:"):].split(";")[0]
            data = base64.b64decode(b64)
            p = self.preview_dir / f"{key}.{'webp' if mime == 'image/webp' else 'jpg'}"
            tmp = p.with_name(f".{p.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, p)
            return data, mime

    def state(self, annotator: str | None) -> dict[str, Any]:
        """Progress of one annotator (their labels by sample_id) and the agreement between all annotators."""
        frame = self.store.frame()
        mine = {}
        if annotator:
            for r in frame[frame["annotator"] == annotator].itertuples(index=False):
                mine[r.sample_id] = {"score": int(r.score), "note": r.note or ""}
        return {"total": len(self.cards), "labelled": len(mine), "mine": mine, "agreement": summary(frame),
                "labels_file": str(self.store.labels_path)}

    # -- aiohttp -------------------------------------------------------------------------------------------------

    def web_app(self):
        """The aiohttp application: the page, its script and style, previews, and the JSON API."""
        from aiohttp import web

        @web.middleware
        async def guard(request, handler):
            if self.loopback_only and not host_allowed(request.headers.get("Host")):
                return web.Response(status=403, text="forbidden: not a loopback Host header\n")
            try:
                check_token(self.token, dict(request.query), dict(request.headers))
            except TokenError:
                return web.Response(status=401, text="unauthorized: this server needs its token (?token=...)\n")
            try:
                resp = await handler(request)
            except LabelError as exc:
                resp = web.json_response({"error": str(exc)}, status=400)
            resp.headers["Content-Security-Policy"] = CSP
            resp.headers["X-Content-Type-Options"] = "nosniff"
            resp.headers["Referrer-Policy"] = "no-referrer"  # the token must not leak in a Referer
            resp.headers["Cache-Control"] = "no-store" if request.path.startswith("/api/") else "private, max-age=300"
            return resp

        async def page(_request):
            return web.FileResponse(STATIC / "index.html", headers={"Content-Type": "text/html; charset=utf-8"})

        async def static(request):
            name = request.match_info["name"]
            if name not in ("label.js", "label.css"):
                raise web.HTTPNotFound()
            return web.FileResponse(STATIC / name)

        async def favicon(_request):
            return web.Response(status=204)  # no icon; and no 404 in the console

        async def items(_request):
            return web.json_response({"items": self.cards, "manifest": self.manifest})

        async def state(request):
            return web.json_response(self.state(request.query.get("annotator")))

        async def prev(request):
            try:
                i = int(request.match_info["i"])
            except ValueError:
                raise web.HTTPNotFound() from None
            if not 0 <= i < len(self.rows):
                raise web.HTTPNotFound()
            got = await asyncio.get_running_loop().run_in_executor(self.pool, self.preview_bytes, i)
            if got is None:
                raise web.HTTPNotFound(text="no preview: the row could not be decoded")
            return web.Response(body=got[0], content_type=got[1])

        async def _json(request) -> dict[str, Any]:
            if request.content_type != "application/json":
                raise LabelError("send JSON (Content-Type: application/json)")
            try:
                body = await request.json()
            except ValueError:
                raise LabelError("the request body is not JSON") from None
            if not isinstance(body, dict):
                raise LabelError("the request body must be a JSON object")
            return body

        async def label(request):
            b = await _json(request)
            loop = asyncio.get_running_loop()
            ev = await loop.run_in_executor(None, lambda: self.store.label(b.get("annotator"), b.get("sample_id"),
                                                                            b.get("score"), b.get("note") or ""))
            return web.json_response({"saved": ev["id"], **self.state(ev["annotator"])})

        async def undo(request):
            b = await _json(request)
            target = await asyncio.get_running_loop().run_in_executor(None, self.store.undo, b.get("annotator"))
            return web.json_response({"undone": None if target is None else target["sample_id"],
                                      **self.state(b.get("annotator"))})

        app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
        app.add_routes([web.get("/", page), web.get("/static/{name}", static), web.get("/api/items", items),
                        web.get("/api/state", state), web.get("/preview/{i}", prev),
                        web.get("/favicon.ico", favicon),
                        web.post("/api/label", label), web.post("/api/undo", undo)])
        return app


class LabelServer:
    """A LabelApp served on host:port from a background thread; `start()` returns once it listens."""

    def __init__(self, app: LabelApp, host: str = "127.0.0.1", port: int = 8765):
        self.app, self.host, self.port = app, host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The page's URL (with the token when there is one)."""
        host = self.host
        if host in ("0.0.0.0", "::", ""):  # every address: name the machine, as a colleague would reach it
            import socket

            host = socket.gethostname()
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/" + (f"?token={self.app.token}" if self.app.token else "")

    def start(self, timeout_s: float = 30.0) -> "LabelServer":
        """Listen (port 0 picks a free one) and serve in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="label-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"label server did not start within {timeout_s} s")
        if self._error:
            raise self._error
        return self

    def _run(self) -> None:
        from aiohttp import web

        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(self.app.web_app(), access_log=None)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self.port)
            loop.run_until_complete(site.start())
            self.port = runner.addresses[0][1]  # the real port when 0 was asked
        except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving and wait (bounded) for the thread."""
        if self._loop and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
        self.app.pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "LabelServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def new_token() -> str:
    """A fresh random token for a server bound beyond loopback."""
    return secrets.token_urlsafe(24)
