"""The label store behind `curation label`: an append-only event log, materialized into an annotation Parquet.

Every label (and every undo) is one JSON line appended to `<set>.events.jsonl` with a single `write` on a file opened
`O_APPEND`, then `fsync`ed before the browser is told it is saved: a crash, a killed server or a closed tab loses
nothing that was acknowledged. Events are never rewritten; an undo is an event naming the label event it cancels.
A crash in the middle of a write can leave at most one torn last line: readers skip a line that is not valid JSON
(with a warning) and the next append starts on a fresh line, so every earlier label stays readable.

The current labels (per annotator and row, the latest label not undone) are written after each event, atomically
(temporary file + `os.replace`), to `<set>.labels.parquet`, the long-form annotation file that
`curation scorer train --annotations` reads: one row per (sample_id, annotator) with `score` 1-5, `note`,
`labelled_at` and `manifest`. The event log is the source of truth; the Parquet can always be rebuilt from it
(`LabelStore.materialize`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger("curation.label")

SCORES = (1, 2, 3, 4, 5)
MAX_NOTE = 2000  # characters; a note is a remark, not a document
_ANNOTATOR = re.compile(r"^[\w .@-]{1,64}$")  # letters, digits, _ . @ - and spaces


class LabelError(ValueError):
    """A label event that cannot be stored; the message says what is wrong."""


def check_annotator(name: Any) -> str:
    """The annotator name, stripped, or LabelError: 1-64 characters of letters, digits, space, `_ . @ -`."""
    if not isinstance(name, str) or not _ANNOTATOR.match(name.strip() or "!"):
        raise LabelError(f"annotator name must be 1-64 letters, digits, spaces or _ . @ -; got {name!r}")
    return name.strip()


def paths_for(annotations: str | os.PathLike) -> tuple[Path, Path]:
    """(event log, materialized labels Parquet) of an annotation set `annotations.parquet`."""
    a = Path(annotations)
    return a.with_name(f"{a.stem}.events.jsonl"), a.with_name(f"{a.stem}.labels.parquet")


@dataclass
class Label:
    """A label in force: the latest not-undone label event of one annotator on one row."""
    event_id: str
    sample_id: str
    annotator: str
    score: int
    note: str
    time: float


class LabelStore:
    """Append-only labels of one annotation set (thread-safe in one process; `flock` across processes)."""

    def __init__(self, annotations: str | os.PathLike, sample_ids: list[str] | None = None,
                 manifest: str | None = None):
        self.annotations = Path(annotations)
        self.events_path, self.labels_path = paths_for(self.annotations)
        self.sample_ids = None if sample_ids is None else set(map(str, sample_ids))
        self.manifest = manifest
        self._lock = threading.Lock()

    # -- writing ---------------------------------------------------------------------------------------------------

    def _append(self, event: dict[str, Any]) -> dict[str, Any]:
        line = (json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        self.events_path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                if size and _last_byte(self.events_path, size) != b"\n":
                    # a torn line from a crash mid-write: end it, so this event is a line of its own
                    line = b"\n" + line
                _write_all(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)  # closing releases the flock
            self.materialize()
        return event

    def label(self, annotator: str, sample_id: str, score: int, note: str = "") -> dict[str, Any]:
        """Append a label event (score 1-5, optional note) and return it once it is on disk."""
        annotator = check_annotator(annotator)
        sample_id = str(sample_id)
        if self.sample_ids is not None and sample_id not in self.sample_ids:
            raise LabelError(f"sample_id {sample_id!r} is not in the annotation set {self.annotations}")
        if isinstance(score, bool) or score not in SCORES:
            raise LabelError(f"score must be a whole number 1-5, got {score!r}")
        note = "" if note is None else str(note)
        if len(note) > MAX_NOTE:
            raise LabelError(f"note is {len(note)} characters; at most {MAX_NOTE}")
        return self._append({"event": "label", "id": uuid.uuid4().hex, "annotator": annotator,
                             "sample_id": sample_id, "score": int(score), "note": note, "time": time.time()})

    def undo(self, annotator: str) -> dict[str, Any] | None:
        """Append an undo of the annotator's latest label still in force; None when there is none."""
        annotator = check_annotator(annotator)
        with self._lock:
            events = self.events()
        live = _live_label_events(events)
        mine = [e for e in live if e["annotator"] == annotator]
        if not mine:
            return None
        target = mine[-1]
        self._append({"event": "undo", "id": uuid.uuid4().hex, "annotator": annotator, "target": target["id"],
                      "sample_id": target["sample_id"], "time": time.time()})
        return target

    # -- reading ---------------------------------------------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        """Every readable event in order; a line that is not a whole JSON object (a torn write) is skipped."""
        if not self.events_path.exists():
            return []
        out = []
        with open(self.events_path, "rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    ev = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    log.warning("%s line %d is not a whole event (a write cut short by a crash?): skipped",
                                self.events_path, n)
                    continue
                if isinstance(ev, dict) and ev.get("event") in ("label", "undo"):
                    out.append(ev)
        return out

    def labels(self) -> list[Label]:
        """Labels in force: per (annotator, sample_id) the latest label event that no undo cancelled."""
        current: dict[tuple[str, str], dict[str, Any]] = {}
        for e in _live_label_events(self.events()):
            current[(e["annotator"], e["sample_id"])] = e
        return [Label(e["id"], e["sample_id"], e["annotator"], int(e["score"]), e.get("note", ""), e["time"])
                for e in sorted(current.values(), key=lambda e: e["time"])]

    def frame(self) -> pd.DataFrame:
        """The labels in force as the long-form annotation table `curation scorer train` reads."""
        labs = self.labels()
        return pd.DataFrame({
            "sample_id": pd.array([x.sample_id for x in labs], dtype="string"),
            "annotator": pd.array([x.annotator for x in labs], dtype="string"),
            "score": pd.array([x.score for x in labs], dtype="Int64"),
            "note": pd.array([x.note for x in labs], dtype="string"),
            "labelled_at": pd.to_datetime([x.time for x in labs], unit="s", utc=True),
            "manifest": pd.array([self.manifest] * len(labs), dtype="string"),
        })

    def materialize(self) -> Path:
        """Write the labels in force to `<set>.labels.parquet` atomically; return its path."""
        tmp = self.labels_path.with_name(f".{self.labels_path.name}.{os.getpid()}.tmp")
        self.frame().to_parquet(tmp, index=False)
        os.replace(tmp, self.labels_path)
        return self.labels_path


def _live_label_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    undone = {e.get("target") for e in events if e["event"] == "undo"}
    return [e for e in events if e["event"] == "label" and e.get("id") not in undone]


def _last_byte(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
