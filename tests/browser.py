"""Headless Chromium (Debian's, driven by Playwright) in a child process with a hard deadline.

Tests that look at a page as a person would go through `render`: the browser runs in its own process group, so a
browser or Playwright driver that stops answering (seen under heavy load on a 2-core CI machine) is killed after
`timeout` seconds and started once more, instead of holding the whole suite until its time limit. A page that really
fails (console errors, undecodable images) fails the same way on both attempts.

    python tests/browser.py PAGE.html SHOT.png WIDTH   → prints one JSON object (the child side)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _child(html: str, png: str, width: int) -> dict:
    """Open `html` with a fresh profile, screenshot the full page to `png`; console errors, page errors, images."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                                                   viewport={"width": width, "height": 900}, timeout=60_000)
        try:
            page = ctx.new_page()
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.goto(Path(html).resolve().as_uri(), wait_until="load", timeout=60_000)
            page.screenshot(path=png, full_page=True, timeout=60_000)
            images = page.evaluate("Array.from(document.images).map(i => [i.naturalWidth, i.naturalHeight])")
        finally:
            ctx.close()
    return {"errors": errors, "images": images, "undecoded": sum(1 for w, h in images if not w or not h)}


def render(html: Path, png: Path, width: int = 1400, timeout: float = 150.0, attempts: int = 2) -> dict:
    """Render `html` in headless Chromium in a child process; screenshot to `png`; return what `_child` returns.

    Raises RuntimeError when Chromium is missing, when the child fails, or when every attempt ran out of time."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium")
    last = ""
    for _ in range(attempts):
        proc = subprocess.Popen([sys.executable, __file__, str(html), str(png), str(width)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and every Chromium process with it
            proc.communicate()
            last = f"headless Chromium did not finish within {timeout:.0f} s"
            continue
        if proc.returncode != 0:
            raise RuntimeError(f"rendering {html} failed:\n{err[-3000:]}")
        return json.loads(out.strip().splitlines()[-1])
    raise RuntimeError(f"{last} ({attempts} attempts)")


class BrowserHung(RuntimeError):
    """The watchdog of `chromium` killed a browser that did not finish in time (the session can be retried)."""


def _kill_browser_children() -> None:
    """Kill this process's Playwright driver (node) and Chromium processes; nothing else (Ray's stay)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.name() == "node" or "chrom" in child.name():
                child.kill()


@contextlib.contextmanager
def chromium(deadline_s: float = 150.0, **context_kwargs):
    """An interactive Playwright context (fresh profile) in this process, watched: past `deadline_s` the driver and
    Chromium are killed, so a call that would wait forever raises, and the block ends in BrowserHung (retry it with
    `retry_if_hung`). Failures of the page itself propagate unchanged."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium")
    fired = threading.Event()

    def fire():
        fired.set()
        _kill_browser_children()

    timer = threading.Timer(deadline_s, fire)
    timer.daemon = True
    timer.start()
    try:
        with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                                                       timeout=60_000, **context_kwargs)
            try:
                yield ctx
            finally:
                with contextlib.suppress(Exception):
                    ctx.close()
    except Exception as e:
        if fired.is_set():
            raise BrowserHung(f"headless Chromium did not finish within {deadline_s:.0f} s") from e
        raise
    finally:
        timer.cancel()


def retry_if_hung(fn, attempts: int = 2):
    """Call fn(attempt) until it returns without BrowserHung (at most `attempts` times); re-raise the last hang."""
    for attempt in range(attempts):
        try:
            return fn(attempt)
        except BrowserHung:
            if attempt == attempts - 1:
                raise


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], sys.argv[2], int(sys.argv[3]))), flush=True)
