"""Keep a driver's log file readable when stderr is not a terminal (a log file, `ray job submit`, nohup).

Two kinds of noise reach a driver's stderr that a user cannot act on:

- ANSI colour codes. Ray colours the `(pid=...)` prefix of worker lines and the dashboard address; in a file they
  are escape sequences. `RAY_COLOR_PREFIX=0` turns the prefix colours off at the source (Ray reads it per line);
  the rest is stripped by the filter below.
- One error-level line from Ray's C++ core worker in every run: "Actor with class name: 'MapWorker(...)' ... has
  constructor arguments in the object store and max_restarts > 0" (ray-project/ray#53727). Its cause is inside
  Ray Data, not in our arguments: every actor pool is created with two ObjectRefs (the DataContext and the map
  transformer, `ray.put` by the operator) and `max_restarts=-1`. The operator holds both refs for the whole run
  and they live on the driver's node, so a restarted actor finds them; the only fix in our hands (`max_restarts=0`)
  would give up the actor restarts the reliability design relies on. The C++ logger writes it straight to fd 2
  (ERROR always goes to stderr), so only a filter on fd 2 can drop that one line.
- Now and then, when Ray Data tears an actor pool down, a warning from the same logger: "Mismatched ActorID:
  ignoring KillActor for previous actor ..., current actor ID: NIL_ID": the kill reached a worker process that had
  already let that actor go, and was ignored, as it should be. Timing decides whether it appears (one full test
  run in three on 2026-12-01), and nothing follows from it.

The filter is a small child process: fd 2 of the driver becomes a pipe into it, and it copies every line to the
original stderr except the known-noise ones, with colour codes removed. A child, not a thread, so that whatever the
driver writes just before it dies (a traceback, a C++ abort message) is still copied out after it is gone; the
child ignores SIGINT/SIGTERM and exits when the last writer closes the pipe.
"""

from __future__ import annotations

import os
import subprocess
import sys

# Lines dropped from the driver's stderr (bytes matched anywhere in the line).
NOISE = (b"has constructor arguments in the object store and max_restarts > 0",
         b"Mismatched ActorID: ignoring KillActor for previous actor")

# The child's program: no imports beyond the standard library (the project may not be importable in the child,
# e.g. under `ray job submit --working-dir` where only the driver's sys.path has it).
_CHILD = r"""
import os, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
noise = [n.encode() for n in sys.argv[1:]]
ansi = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]")
out = sys.stdout.buffer.raw if hasattr(sys.stdout.buffer, "raw") else sys.stdout.buffer
buf = b""
while True:
    try:
        chunk = os.read(0, 65536)
    except InterruptedError:
        continue
    if not chunk:
        break
    buf += chunk
    *lines, buf = buf.split(b"\n")
    for line in lines:
        if not any(n in line for n in noise):
            try:
                out.write(ansi.sub(b"", line) + b"\n")
            except OSError:
                pass
if buf and not any(n in buf for n in noise):
    out.write(ansi.sub(b"", buf))
"""

_installed = False


def strip_ansi(text: str) -> str:
    """`text` without ANSI escape sequences (what the filter does to each line)."""
    import re

    return re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]", "", text)


def quiet_noninteractive_stderr() -> bool:
    """When stderr is not a terminal, route fd 2 through the filter and turn Ray's colour prefixes off.

    Idempotent; does nothing on a terminal (colours are wanted there, and tqdm bars need the real tty). Returns
    whether the filter is installed."""
    global _installed
    if _installed:
        return True
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # read by Ray for every worker line it prints
    try:
        if sys.stderr.isatty():
            return False
        sys.stderr.flush()
        original = os.dup(2)
    except (OSError, ValueError, AttributeError):
        return False  # no usable fd 2 (closed, or replaced by an object without one)
    try:
        r, w = os.pipe()
        subprocess.Popen([sys.executable, "-S", "-u", "-c", _CHILD, *(n.decode() for n in NOISE)], stdin=r,
                         stdout=original, stderr=original, close_fds=True, start_new_session=False)
    except OSError:
        os.close(original)
        return False
    os.close(r)
    os.dup2(w, 2)
    os.close(w)
    os.close(original)
    _installed = True
    return True
