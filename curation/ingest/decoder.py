"""The decoder process: hard limits on decoding untrusted files, one helper subprocess per Ray worker, with a deadline
and a memory cap.

Why a subprocess. Probing, scene splitting and frame decoding run FFmpeg (PyAV, decord) and Pillow on whatever
bytes a source holds. Three failure modes cannot be handled inside the Ray worker that runs the task:
- a hang in C code (decord's `get_batch`, a blocking `open`) cannot be interrupted from Python, so a cooperative
  deadline alone is not a time limit;
- a crash in C code (a decoder bug hit by a crafted file) kills the worker; Ray Data then retries the task on
  another worker, where it crashes again — with Ray Data's default of infinite retries the job never ends;
- a decoder that allocates without limit takes the whole node's memory (and Ray's OOM killer then picks victims).

So each Ray worker keeps one long-lived helper process (`python -m curation.ingest --serve`) and sends it one
request per source or clip. The worker waits at most `limits.decode_timeout_s` (+ a small grace), then kills the
helper and fails that row (`DecodeTimeout`). A helper that dies mid-request is replaced and the request retried once
(the OOM killer may have picked a healthy decoder); a second death fails the row (`DecoderCrashed`). The helper runs
with `RLIMIT_DATA` (heap + anonymous mappings) capped at `decoder_memory_bytes()`, so an allocation beyond the cap
fails inside the decoder (`MemoryError`) instead of growing. The cost is one process start per worker (~1 s of
imports) and the decoded views crossing a pipe (~3 ms for a clip's ~4 MB); bench/BENCHMARKS.md, "Reliability" has the
measurements.

Nothing from the helper is unpickled: replies are a JSON header plus raw array bytes with whitelisted dtypes, so a
decoder compromised by a crafted file cannot run code in the worker through the reply channel.

`CURATION_DECODER_ISOLATION=inline` runs the same functions in the worker process (debugging, benchmarks).
`CURATION_DECODER_MEMORY_MB` overrides the memory cap.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

# The worker waits this long past the per-file deadline for the helper's own (cooperative) timeout before killing.
KILL_GRACE_S = 5.0
# Starting the helper (imports) is not charged to any file's deadline, but it must not hang either.
START_TIMEOUT_S = 60.0

log = logging.getLogger(__name__)

_ALLOWED_DTYPES = {"uint8", "int64", "float64"}
_HEADER = struct.Struct(">I")


class DecoderError(Exception):
    """A request to the decoder failed; `kind` names the cause (e.g. ProbeError, DecodeTimeout, DecoderCrashed)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind

    def describe(self) -> str:
        """`Kind: message`, the form used in a failed row's `error`."""
        return f"{self.kind}: {self}"


def decoder_memory_bytes(max_pixels: int) -> int:
    """The helper's memory cap: a fixed base for the interpreter and libraries, plus room for a decoder's
    reference frames at the largest size the probe lets through (about 16 frames of yuv420 at `max_pixels`)."""
    env = os.environ.get("CURATION_DECODER_MEMORY_MB")
    if env:
        return int(float(env) * 1024 * 1024)
    return 1024 * 1024 * 1024 + 16 * max_pixels * 3 // 2


def isolation_enabled() -> bool:
    """False when CURATION_DECODER_ISOLATION=inline (decode in the worker process itself)."""
    return os.environ.get("CURATION_DECODER_ISOLATION", "subprocess").lower() not in ("inline", "0", "off", "false")


# ----------------------------------------------------------------------------------------------------------------
# Framing: JSON header + raw array bytes, both directions


def _pack_parts(header: dict, arrays: dict[str, np.ndarray] | None = None) -> list:
    """A message as buffers to write one after the other: sizes + JSON header, then each array's raw bytes."""
    meta, blobs, nbody = [], [], 0
    for name, arr in (arrays or {}).items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype.name not in _ALLOWED_DTYPES:
            raise TypeError(f"array {name}: dtype {arr.dtype} not allowed")
        meta.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape)})
        blobs.append(memoryview(arr).cast("B"))
        nbody += arr.nbytes
    head = json.dumps({**header, "arrays": meta}).encode("utf-8")
    return [_HEADER.pack(len(head)) + _HEADER.pack(nbody) + head, *blobs]


def _pack(header: dict, arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """A whole message as one bytes object (small messages, tests)."""
    return b"".join(bytes(p) for p in _pack_parts(header, arrays))


def _unpack(head: bytes, body: bytes | bytearray) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse a message; arrays are views of `body` (copied first if it is immutable bytes)."""
    header = json.loads(head.decode("utf-8"))
    if isinstance(body, bytes):
        body = bytearray(body)  # writable arrays, like any decoded frames
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for m in header.pop("arrays", []):
        if m["dtype"] not in _ALLOWED_DTYPES:
            raise DecoderError("DecoderProtocolError", f"unexpected dtype {m['dtype']!r} from the decoder")
        dtype = np.dtype(m["dtype"])
        shape = tuple(int(s) for s in m["shape"])
        if any(s < 0 for s in shape):
            raise DecoderError("DecoderProtocolError", "negative array shape from the decoder")
        count = int(np.prod(shape, dtype=np.int64))
        if offset + count * dtype.itemsize > len(body):
            raise DecoderError("DecoderProtocolError", "decoder reply shorter than its header says")
        arrays[str(m["name"])] = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape)
        offset += count * dtype.itemsize
    return header, arrays


# ----------------------------------------------------------------------------------------------------------------
# The worker side


class _Died(Exception):
    """The helper went away mid-request (internal)."""


class _Timeout(Exception):
    """No answer before the deadline (internal; not builtin TimeoutError, which is an OSError)."""


class DecoderProcess:
    """One helper process, started on first use and restarted after a crash or a kill."""

    def __init__(self, memory_bytes: int):
        self.memory_bytes = memory_bytes
        self.proc: subprocess.Popen | None = None
        self.started = 0
        self.killed = 0
        self.crashed = 0
        self.last_op_s: float | None = None
        self.lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The helper's pid, or None when none is running."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parents[2])  # the repository root: curation/ingest/decoder.py
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["MALLOC_ARENA_MAX"] = "2"  # glibc arenas per thread would otherwise eat the memory cap in reservations
        env.pop("CURATION_DECODER_ISOLATION", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "curation.ingest", "--serve", str(self.memory_bytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=env, close_fds=True, cwd=root,
        )
        self.started += 1
        _grow_pipe(self.proc.stdout.fileno())
        _grow_pipe(self.proc.stdin.fileno())
        try:
            header, _ = self._read(time.monotonic() + START_TIMEOUT_S)
        except (_Timeout, _Died):
            header = {}
        if header.get("ready") is not True:
            self.kill()
            raise _Died("did not start")

    def _ensure_started(self) -> None:
        # A helper that fails to start is the machine's problem, not the file's: try twice before giving up.
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = None
        try:
            self._start()
        except _Died:
            try:
                self._start()
            except _Died:
                raise DecoderError("DecoderUnavailable", "the decoder process could not be started twice in a row "
                                                         "(see the worker's log); this file was not tried") from None

    def kill(self) -> None:
        """SIGKILL the helper (it may be stuck in C code) and reap it."""
        if self.proc is None:
            return
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.proc = None

    def _read_exact(self, n: int, deadline: float) -> bytearray:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Timeout
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            k = os.readv(fd, [view[got:]])
            if k == 0:
                raise _Died("end of output")
            got += k
        return buf

    def _read(self, deadline: float) -> tuple[dict, dict[str, np.ndarray]]:
        try:
            sizes = bytes(self._read_exact(8, deadline))
            nhead, nbody = _HEADER.unpack(sizes[:4])[0], _HEADER.unpack(sizes[4:])[0]
            head = self._read_exact(nhead, deadline)
            body = self._read_exact(nbody, deadline)
        except OSError as exc:
            raise _Died(str(exc)) from None
        return _unpack(bytes(head), body)

    def _died(self) -> str:
        rc = None
        if self.proc is not None:
            try:
                rc = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None
        return _describe_exit(rc)

    def _request(self, op: str, args: dict, timeout_s: float) -> tuple[dict, dict[str, np.ndarray]]:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(_pack({"op": op, "args": args}))
            self.proc.stdin.flush()
        except OSError:
            raise _Died(self._died()) from None
        try:
            return self._read(time.monotonic() + timeout_s + KILL_GRACE_S)
        except _Timeout:
            self.kill()
            self.killed += 1
            raise DecoderError("DecodeTimeout", f"no answer from the decoder within {timeout_s:.0f} s "
                                                f"(limits.decode_timeout_s) + {KILL_GRACE_S:.0f} s grace ({op}); "
                                                "the decoder process was killed") from None
        except _Died:
            raise _Died(self._died()) from None
        except (DecoderError, ValueError, TypeError, KeyError) as exc:
            # A reply that does not parse: the helper's state is unknown, so it goes.
            self.kill()
            raise DecoderError("DecoderProtocolError", f"unreadable reply from the decoder ({op}): {exc}") from None

    def call(self, op: str, args: dict, timeout_s: float) -> tuple[dict, dict[str, np.ndarray]]:
        """Run `op` in the helper; raise DecoderError on failure, timeout (helper killed) or crash.

        A helper that dies mid-request is replaced and the request tried once more: the OOM killer or a lost
        neighbour can kill a healthy decoder, while a file that crashes the decoder does it again. Only a second
        death is put on the file (`DecoderCrashed`).
        """
        with self.lock:
            first = ""
            for attempt in (1, 2):
                self._ensure_started()
                try:
                    header, arrays = self._request(op, args, timeout_s)
                    break
                except _Died as exc:
                    self.crashed += 1
                    if attempt == 2:
                        raise DecoderError("DecoderCrashed", f"decoder process died twice on this file ({first}, "
                                                             f"then {exc}) during {op}") from None
                    first = str(exc)
                    log.warning("decoder process died (%s) during %s; retrying once in a new one", exc, op)
        self.last_op_s = header.get("op_s")  # time spent in the helper itself (the rest is transport)
        if not header.get("ok"):
            raise DecoderError(str(header.get("kind", "Error")), str(header.get("message", "")))
        return header.get("result", {}), arrays


def _grow_pipe(fd: int) -> None:
    # A clip's views are a few MB; with the default 64 KiB pipe every 64 KiB costs two context switches, which on
    # a busy node (more runnable processes than cores) adds tens of ms per clip. 1 MiB is Linux's default cap.
    try:
        import fcntl

        fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ
    except (OSError, ImportError, AttributeError):
        pass


def _describe_exit(rc: int | None) -> str:
    if rc is None:
        return "exit status unknown"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


# One helper per worker process, reused across tasks (Ray reuses worker processes): like a connection pool, it is
# process-local state on purpose, so the import cost is paid once per worker, not once per file.
_PROCESS: DecoderProcess | None = None
_PROCESS_LOCK = threading.Lock()


def decoder_process(memory_bytes: int) -> DecoderProcess:
    """This worker's helper (created on first use; replaced when the memory cap asked for changes)."""
    global _PROCESS
    with _PROCESS_LOCK:
        if _PROCESS is None or _PROCESS.memory_bytes != memory_bytes:
            if _PROCESS is not None:
                _PROCESS.kill()
            _PROCESS = DecoderProcess(memory_bytes)
        return _PROCESS


def run_isolated(op: str, args: dict, timeout_s: float, max_pixels: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Run `op(**args)` in this worker's decoder helper (or inline when isolation is off)."""
    if not isolation_enabled():
        from curation.ingest.jobs import OPS

        try:
            return OPS[op](**args)
        except DecoderError:
            raise
        except Exception as exc:  # noqa: BLE001 - same classification as in the helper
            raise DecoderError(type(exc).__name__, str(exc)) from exc
    return decoder_process(decoder_memory_bytes(max_pixels)).call(op, args, timeout_s)


# ----------------------------------------------------------------------------------------------------------------
# The helper side


def _die_with_parent() -> None:
    # The kernel sends SIGKILL when the worker dies, even if we are stuck in C code holding the GIL (where the
    # watcher thread below could not run).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _watch_parent(parent: int) -> None:
    # If the worker dies while we are stuck in a decoder, nobody will read our answer: go.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def serve(memory_bytes: int) -> None:
    """The helper's loop: read a request from stdin, answer on the original stdout, until stdin closes."""
    # Libraries may print to fd 1; keep the protocol on a private copy of it and send fd 1 to stderr.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    inp = os.fdopen(os.dup(0), "rb", buffering=0)
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))
    except (ValueError, OSError):
        pass  # the hard limit is lower already; keep it
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the worker died before we could ask
        return
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    # Import the decoders now, so that the first request's deadline is not spent on imports.
    from curation.ingest.jobs import OPS

    _write_all(out, _pack_parts({"ready": True}))
    while True:
        sizes = _read_all(inp, 8)
        if sizes is None:
            return
        nhead, nbody = _HEADER.unpack(sizes[:4])[0], _HEADER.unpack(sizes[4:])[0]
        head, body = _read_all(inp, nhead), _read_all(inp, nbody)
        if head is None or body is None:
            return
        request, _ = _unpack(head, body)
        t0 = time.perf_counter()
        try:
            result, arrays = OPS[request["op"]](**request.get("args", {}))
            reply = _pack_parts({"ok": True, "result": result, "op_s": time.perf_counter() - t0}, arrays)
        except MemoryError as exc:
            detail = f": {exc}" if str(exc) else ""
            reply = _pack_parts({"ok": False, "kind": "MemoryError",
                                 "message": f"decoding needs more memory than the decoder's cap "
                                            f"({memory_bytes // 2**20} MiB, see curation/ingest/decoder.py){detail}"})
        except Exception as exc:  # noqa: BLE001 - every failure is this file's problem; report it, keep serving
            kind = getattr(exc, "kind", None) or type(exc).__name__
            reply = _pack_parts({"ok": False, "kind": kind, "message": str(exc)})
        _write_all(out, reply)


def _write_all(f, parts: list) -> None:
    for part in parts:
        view = memoryview(part)
        while view:
            n = f.write(view)  # a raw (unbuffered) file may write less than asked
            view = view[n:]


def _read_all(f, n: int) -> bytes | None:
    chunks = []
    while n > 0:
        chunk = f.read(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)
