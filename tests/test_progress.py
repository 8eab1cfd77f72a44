"""Progress and log hygiene for runs whose stderr is a file: steady progress lines (done/total, rows/s, ETA), no
ANSI colour codes, no core_worker line about actor constructor arguments."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ROOT
from curation.progress import Progress, format_duration

ANSI = re.compile(r"\x1b\[")
PROGRESS = re.compile(r"progress: (\d+)/(\d+) sources done \([\d.]+%\), (\d+) rows, [\d.]+ rows/s, elapsed \S+, "
                      r"ETA (\S+)")


def test_progress_lines_at_a_steady_interval(caplog):
    with caplog.at_level(logging.INFO, logger="curation.progress"):
        with Progress(total=10, interval_s=0.05) as p:
            time.sleep(0.2)  # nothing finished yet: lines still come, saying so
            p.update(4, 40)
            time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) >= 4, lines
    assert "0/10 sources done" in lines[0] and "ETA unknown" in lines[0]
    mid = [m for m in lines if "4/10 sources done" in m]
    assert mid and PROGRESS.search(mid[0]) and "40 rows" in mid[0]
    assert PROGRESS.search(mid[0]).group(4) != "unknown"  # an estimate from the rate so far
    assert "4/10" in lines[-1]  # the closing line has the final count


def test_progress_off_and_durations(caplog):
    with caplog.at_level(logging.INFO, logger="curation.progress"):
        with Progress(total=3, interval_s=0) as p:
            p.update(3, 3)
    assert [r.getMessage() for r in caplog.records] == []  # interval 0: no thread, no lines
    assert (format_duration(42), format_duration(185), format_duration(3725)) == ("42s", "3m05s", "1h02m")


def test_stderr_filter_drops_the_noise_line_and_colours_and_keeps_the_rest(tmp_path):
    """The driver's fd 2 goes through the filter when it is a file: C++-level writes (os.write on fd 2, as Ray's
    core worker does) lose the known-noise line and ANSI codes; everything else, a traceback at exit included,
    arrives."""
    script = textwrap.dedent("""
        import os, sys
        from curation.logfilter import quiet_noninteractive_stderr
        assert quiet_noninteractive_stderr()
        assert os.environ["RAY_COLOR_PREFIX"] == "0"
        os.write(2, b"[2026 E 1 1] core_worker.cc:2465: Actor with class name: 'MapWorker(x)' and ID: 'ab' has "
                    b"constructor arguments in the object store and max_restarts > 0. If ...\\n")
        os.write(2, b"\\x1b[36m(MapWorker pid=1)\\x1b[0m hello from a worker\\n")
        os.write(2, b"[2026-12-01 09:08:55,068 W 32691 32691] core_worker.cc:4621: Mismatched ActorID: ignoring "
                    b"KillActor for previous actor e5a110cea580478d39c831a001000000, current actor ID: NIL_ID\\n")
        print("a python warning line", file=sys.stderr)
        raise SystemExit("last words")
    """)
    err = tmp_path / "err.log"
    with open(err, "wb") as f:
        proc = subprocess.run([sys.executable, "-c", script], stderr=f, cwd=ROOT, timeout=60)
    deadline = time.time() + 10
    while "last words" not in err.read_text() and time.time() < deadline:
        time.sleep(0.05)  # the filter process outlives the driver by a moment: it drains the pipe first
    text = err.read_text()
    assert proc.returncode == 1
    assert "(MapWorker pid=1) hello from a worker" in text and "a python warning line" in text
    assert "last words" in text
    assert "constructor arguments" not in text and "KillActor" not in text and not ANSI.search(text)


@pytest.mark.slow
def test_a_run_logged_to_a_file_shows_progress_and_no_noise(demo_output):
    """The demo run (stderr captured, as in every `ray job submit` and log file; `--progress-interval 2`)."""
    out, proc = demo_output
    lines = [m for m in (PROGRESS.search(line) for line in proc.stderr.splitlines()) if m]
    assert len(lines) >= 2, proc.stderr[-3000:]
    total = int(lines[-1].group(2))
    assert total > 0 and all(int(m.group(2)) == total for m in lines)
    assert int(lines[-1].group(1)) == total  # the last line: every source done
    assert not ANSI.search(proc.stderr) and not ANSI.search(proc.stdout)
    assert "core_worker" not in proc.stderr and "constructor arguments" not in proc.stderr
