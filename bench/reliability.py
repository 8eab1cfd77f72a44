"""Fault injection for the curation graph: what happens to rows, sources and memory when things break.

    .venv/bin/python bench/reliability.py table [--work DIR]          # every scenario, then the markdown table
    .venv/bin/python bench/reliability.py run --input D --output O --config C --report R.json [--fault ...]

`run` is a driver (like pipelines/pretrain_mix.py, local Ray) that also
- samples the peak RSS (the kernel's high-water mark, VmHWM) of every process it started: Ray workers, decoder
  helpers (curation/ingest/decoder.py), Ray's own daemons;
- injects a fault while the graph runs (`--fault decoder-crash|decoder-hang|worker-kill`);
- reads Ray's worker table at the end: how many workers died and why (exit type).
The tests import the helpers below (tests/test_hostile_pipeline.py, test_driver_crash.py, test_node_loss.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# ----------------------------------------------------------------------------------------------------------------
# Process roles and memory


RAY_DAEMON_TITLES = ("DashboardAgent", "RuntimeEnvAgent")


def role_of(cmdline: list[str]) -> str:
    """What a process is, from its command line (Ray workers retitle themselves `ray::<task or actor>`):
    decoder (our helper), worker (a Ray task worker), actor (a Ray actor: job supervisor, Ray Data's stats actor,
    operator actor pools), ray (raylet, GCS, dashboard, agents), driver, or other."""
    cmd = " ".join(cmdline).strip()
    if "curation.ingest" in cmd and "--serve" in cmd:
        return "decoder"
    if cmd.startswith("ray::"):
        title = cmd[5:].split()[0] if len(cmd) > 5 else ""
        if title.startswith(RAY_DAEMON_TITLES):
            return "ray"
        if title in ("IDLE", "_map_task") or title.startswith(("MapBatches", "Map(", "_map_task", "ReadRange")):
            return "worker"
        return "actor"
    first = cmdline[0] if cmdline else ""
    if first.endswith(("raylet", "gcs_server")) or any(
            k in cmd for k in ("dashboard/dashboard.py", "dashboard/agent.py", "log_monitor", "runtime_env/agent",
                               "monitor.py", "ray_client_server", "ray/util/client")):
        return "ray"
    if "default_worker.py" in cmd:
        return "worker"
    if "pretrain_mix.py" in cmd or "reliability.py" in cmd:
        return "driver"
    return "other"


def vm_hwm_kb(pid: int) -> int | None:
    """Peak resident set size of a process so far (kB), from /proc; None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class ProcessMonitor:
    """Polls the processes that `roots()` returns (and their descendants) and keeps each one's peak RSS."""

    def __init__(self, roots: Callable[[], list[int]], interval_s: float = 0.2):
        self.roots = roots
        self.interval_s = interval_s
        self.procs: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ProcessMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        """One pass over the process tree."""
        seen: list[psutil.Process] = []
        for pid in self.roots():
            try:
                p = psutil.Process(pid)
                seen.append(p)
                seen.extend(p.children(recursive=True))
            except psutil.Error:
                continue
        for p in seen:
            hwm = vm_hwm_kb(p.pid)
            if hwm is None:
                continue
            try:
                cmd = p.cmdline()
            except psutil.Error:
                continue
            role = role_of(cmd)
            rec = self.procs.get(p.pid)
            if rec is None:
                rec = self.procs[p.pid] = {"role": role, "titles": [], "hwm_kb": 0}
            elif role == "decoder" and rec["role"] != "decoder":
                # Seen between fork and exec (still showing the worker's title): the high-water mark restarts
                # with the new program image, so forget what the forked copy of the worker showed.
                rec["role"], rec["hwm_kb"] = "decoder", 0
            elif role == "actor" or (role == "worker" and rec["role"] not in ("actor", "decoder")):
                rec["role"] = role  # a worker becomes an actor when an actor is placed on it
            title = " ".join(cmd)[:60].strip()
            if title not in rec["titles"] and len(rec["titles"]) < 8:
                rec["titles"].append(title)
            rec["hwm_kb"] = max(rec["hwm_kb"], hwm)

    def pids(self, role: str) -> list[int]:
        """Live pids of a role."""
        return [pid for pid, r in self.procs.items() if r["role"] == role and psutil.pid_exists(pid)]

    def peaks_mb(self) -> dict[str, float]:
        """The largest peak RSS of any one process, per role (MiB)."""
        out: dict[str, float] = {}
        for r in self.procs.values():
            out[r["role"]] = max(out.get(r["role"], 0.0), round(r["hwm_kb"] / 1024, 1))
        return out

    def top(self, n: int = 6) -> list[dict]:
        """The `n` processes with the largest peak RSS: role, MiB, and the titles they showed."""
        recs = sorted(self.procs.values(), key=lambda r: -r["hwm_kb"])[:n]
        return [{"role": r["role"], "peak_mb": round(r["hwm_kb"] / 1024, 1), "titles": r["titles"][:4]} for r in recs]

    def counts(self) -> dict[str, int]:
        """How many distinct processes of each role were seen."""
        out: dict[str, int] = {}
        for r in self.procs.values():
            out[r["role"]] = out.get(r["role"], 0) + 1
        return out


def worker_exits() -> dict[str, int]:
    """Exit types of the Ray workers that have exited so far in the connected cluster (from the GCS worker table).

    INTENDED_SYSTEM_EXIT is Ray retiring idle workers; SYSTEM_ERROR / NODE_OUT_OF_MEMORY / USER_ERROR are deaths.
    """
    from ray._private.state import state
    from ray.core.generated import common_pb2, gcs_pb2

    out: dict[str, int] = {}
    for raw in state._connect_and_get_accessor().get_worker_table():
        w = gcs_pb2.WorkerTableData.FromString(raw)
        if w.worker_type != common_pb2.WORKER or w.is_alive:
            continue
        name = common_pb2.WorkerExitType.Name(w.exit_type)
        out[name] = out.get(name, 0) + 1
    return out


DEATHS = ("SYSTEM_ERROR", "NODE_OUT_OF_MEMORY", "USER_ERROR")

# ----------------------------------------------------------------------------------------------------------------
# Fault injection inside a monitored run


def inject(fault: str, monitor: ProcessMonitor, count: int, stop: threading.Event, log: list[dict]) -> None:
    """Wait for a victim of the fault's role, then strike `count` times (1.5 s apart)."""
    role = "worker" if fault == "worker-kill" else "decoder"
    sig = {"decoder-crash": signal.SIGSEGV, "decoder-hang": signal.SIGSTOP, "worker-kill": signal.SIGKILL}[fault]
    rng = random.Random(0)
    done = 0
    while done < count and not stop.wait(0.3):
        # Strike processes that have been up a while: a decoder that is serving, not one still importing.
        victims = [pid for pid in monitor.pids(role) if _alive(pid, min_age_s=3.0)]
        if role == "worker":
            # A worker that is running one of our tasks (it has a decoder helper below it), not an idle one.
            busy = []
            for pid in victims:
                try:
                    if any(role_of(c.cmdline()) == "decoder" for c in psutil.Process(pid).children()):
                        busy.append(pid)
                except psutil.Error:
                    pass
            victims = busy
        if not victims:
            continue
        pid = rng.choice(sorted(victims))
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue
        log.append({"fault": fault, "pid": pid, "signal": sig.name, "t": round(time.time(), 2)})
        done += 1
        stop.wait(1.5)


def _title(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _role(p: psutil.Process) -> str:
    try:
        return role_of(p.cmdline())
    except psutil.Error:
        return "gone"


def _alive(pid: int, min_age_s: float = 0.0) -> bool:
    try:
        p = psutil.Process(pid)
        return (p.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD, psutil.STATUS_STOPPED)
                and time.time() - p.create_time() >= min_age_s)
    except psutil.Error:
        return False


def run_monitored(inputs: list[str], output: str, config: str, fault: str | None = None, fault_count: int = 1,
                  limit: int | None = None) -> dict:
    """Run the graph in this process on a local Ray, with memory monitoring and an optional injected fault."""
    from curation.config import load_config
    from curation.run import run_pipeline
    from curation.rayinit import init_ray

    cfg = load_config(config)
    init_ray(None)
    me = os.getpid()
    faults: list[dict] = []
    stop = threading.Event()
    t0 = time.time()
    with ProcessMonitor(lambda: [me]) as mon:
        injector = None
        if fault:
            injector = threading.Thread(target=inject, args=(fault, mon, fault_count, stop, faults), daemon=True)
            injector.start()
        summary = run_pipeline(inputs, output, cfg, limit=limit, config_path=config)
        stop.set()
        if injector is not None:
            injector.join(timeout=10)
    exits = worker_exits()
    return {
        "summary": {k: summary[k] for k in ("sources_listed", "sources_processed", "sources_skipped_as_finished",
                                            "rows_written_this_run", "counts", "non_media_files_skipped")},
        "peak_rss_mb": mon.peaks_mb(),
        "processes": mon.counts(),
        "top_processes": mon.top(),
        "files_written_this_run": summary["files_written_this_run"],
        "worker_exits": exits,
        "worker_deaths": sum(v for k, v in exits.items() if k in DEATHS),
        "faults": faults,
        "elapsed_s": round(time.time() - t0, 1),
    }


def run_cli(inputs: list[str], output: Path, config: Path, report: Path, fault: str | None = None,
            fault_count: int = 1, env: dict | None = None, prefix: list[str] | None = None,
            timeout: int = 900) -> subprocess.CompletedProcess:
    """`bench/reliability.py run ...` in its own process (own local Ray); the report lands in `report`."""
    cmd = [*(prefix or []), sys.executable, str(Path(__file__).resolve()), "run", "--output", str(output),
           "--config", str(config), "--report", str(report)]
    for i in inputs:
        cmd += ["--input", str(i)]
    if fault:
        cmd += ["--fault", fault, "--fault-count", str(fault_count)]
    e = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    e.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e, cwd=ROOT)


# ----------------------------------------------------------------------------------------------------------------
# Checks on an output directory


def audit(output: Path, expected_sources: set[str]) -> dict:
    """Rows lost / duplicated: every expected source present, with all its clips, each sample_id once."""
    import pandas as pd

    files = sorted((Path(output) / "samples").glob("part-*.parquet"))
    if not files:
        return {"rows": 0, "sources": 0, "missing_sources": sorted(expected_sources), "unexpected_sources": [],
                "duplicate_sample_ids": 0, "incomplete_sources": 0, "status": {}}
    df = pd.read_parquet(Path(output) / "samples")
    per_source = df.groupby("source_uri").agg(n=("sample_id", "size"), want=("clips_in_source", "max"))
    incomplete = per_source[per_source["n"] != per_source["want"]]
    return {
        "rows": int(len(df)),
        "sources": int(df["source_uri"].nunique()),
        "missing_sources": sorted(expected_sources - set(df["source_uri"])),
        "unexpected_sources": sorted(set(df["source_uri"]) - expected_sources),
        "duplicate_sample_ids": int(df["sample_id"].duplicated().sum()),
        "incomplete_sources": int(len(incomplete)),
        "status": {k: int(v) for k, v in df["status"].value_counts().items()},
    }


def source_attempts(log_dir: Path) -> dict[str, int]:
    """How many times each source was started (curation.ingest.log_source_attempt, $CURATION_SOURCE_LOG)."""
    out: dict[str, int] = {}
    for f in Path(log_dir).glob("*.jsonl"):
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                uri = json.loads(line)["uri"]
            except (ValueError, KeyError):
                continue  # a line cut short by a SIGKILL
            out[uri] = out.get(uri, 0) + 1
    return out


def _pid_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["pid"])
    except (ValueError, KeyError, TypeError):
        return None


def _lines_from(log_dir: Path, pids: set[int]) -> int:
    """Source starts logged by these processes."""
    return sum(1 for f in Path(log_dir).glob("*.jsonl") for line in f.read_text(encoding="utf-8").splitlines()
               if _pid_of(line) in pids)


def recomputed(attempts: dict[str, int]) -> int:
    """Extra starts beyond the first, summed over sources."""
    return sum(n - 1 for n in attempts.values() if n > 1)


def files_outside(root: Path, allowed: Path, before: set[str]) -> list[str]:
    """Files under `root` that appeared since `before` and are not inside `allowed` (the output directory)."""
    now = {str(p) for p in root.rglob("*")}
    allowed_s = str(allowed.resolve())
    return sorted(p for p in now - before if not str(Path(p).resolve()).startswith(allowed_s))


# ----------------------------------------------------------------------------------------------------------------
# A two-node Ray cluster on loopback


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackCluster:
    """`ray start --head` plus extra nodes, all on 127.0.0.1, each with its own resources and ports.

    Nodes are told apart by a custom resource (`node_<name>`), which also appears on their raylet's command line,
    so one node's whole process tree (raylet, its workers, their decoder helpers) can be killed at once: a lost
    machine, as far as Ray can tell.
    """

    def __init__(self, head_cpus: int = 1, object_store_mb: int = 400, extra_env: dict | None = None):
        # Ray's Unix socket paths live under the temp dir and must stay short.
        self.tmp = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        # Token authentication on the GCS and the job API, as ray_cluster.yaml sets it up (every node and the
        # client share the token).
        token = self.tmp / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN_PATH"] = str(token)
        # Job entrypoints run `python` from the PATH of the process that started Ray: the project venv first.
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env["RAY_TMPDIR"] = str(self.tmp)
        # Ray's node failure detector: the GCS health-checks every raylet; defaults are a check every 3 s and
        # death after 5 misses. Here 1 s x 3, so a lost node is declared dead (and its tasks retried) sooner.
        env.update(RAY_health_check_initial_delay_ms="1000", RAY_health_check_period_ms="1000",
                   RAY_health_check_timeout_ms="1000", RAY_health_check_failure_threshold="3")
        env.update(extra_env or {})  # inherited by every raylet, hence every worker
        self.env = env
        self.port = free_port()
        self.dash = free_port()
        self.head_cpus = head_cpus
        self.object_store = object_store_mb * 1024 * 1024
        self.gcs = f"127.0.0.1:{self.port}"
        self.api = f"http://127.0.0.1:{self.dash}"

    def ray(self, *args: str, timeout: int = 180, check: bool = True) -> subprocess.CompletedProcess:
        """Run the `ray` CLI against this cluster."""
        p = subprocess.run([str(BIN / "ray"), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        return p

    def __enter__(self) -> LoopbackCluster:
        self.ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
                 "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dash}", f"--num-cpus={self.head_cpus}",
                 "--resources", json.dumps({"node_head": 1}), f"--object-store-memory={self.object_store}",
                 *self._ports(), f"--temp-dir={self.tmp}", "--disable-usage-stats")
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.ray("job", "list", "--address", self.api, check=False, timeout=60).returncode == 0:
                return self
            time.sleep(2)
        raise RuntimeError("Ray job API did not come up")

    @staticmethod
    def _ports() -> list[str]:
        # Per-node agent and metrics ports default to fixed numbers (52365, ...): two nodes on one machine, or
        # another Ray on it, would collide and leave a node without the agent that job submission needs.
        return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]

    def add_node(self, name: str, cpus: int) -> None:
        """Start another node (its own raylet, ports and resources) and wait until the cluster sees it."""
        self.ray("start", f"--address={self.gcs}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                 "--resources", json.dumps({f"node_{name}": 1}), f"--object-store-memory={self.object_store}",
                 *self._ports(), "--disable-usage-stats")
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.node_raylet(name) is not None:
                return
            time.sleep(1)
        raise RuntimeError(f"node {name} did not start")

    def node_raylet(self, name: str) -> psutil.Process | None:
        """The raylet of node `name` (found by its custom resource on the command line)."""
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if "raylet" in cmd and f"node_{name}" in cmd and str(self.tmp) in cmd:
                return p
        return None

    def node_processes(self, name: str) -> list[psutil.Process]:
        """Every process of node `name`: its raylet and all descendants (workers, agents, decoder helpers)."""
        raylet = self.node_raylet(name)
        if raylet is None:
            return []
        try:
            return [raylet, *raylet.children(recursive=True)]
        except psutil.Error:
            return [raylet]

    def kill_node(self, name: str) -> int:
        """SIGKILL the whole process tree of node `name` at once (a machine lost); returns how many processes."""
        procs = self.node_processes(name)
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=30)
        return len(procs)

    def cluster_pids(self) -> list[int]:
        """Pids of every process of this cluster (their command lines carry the temp dir or the GCS address)."""
        out = []
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if str(self.tmp) in cmd or self.gcs in cmd:
                out.append(p.pid)
        return out

    def submit(self, entry: list[str], no_wait: bool = True) -> str:
        """`ray job submit --working-dir <repo>`; returns the submission id."""
        sub_id = f"curation-{secrets.token_hex(4)}"
        args = ["job", "submit", "--address", self.api, "--working-dir", str(ROOT), "--submission-id", sub_id]
        if no_wait:
            args.append("--no-wait")
        deadline = time.time() + 120
        while True:
            p = self.ray(*args, "--", *entry, timeout=600, check=False)
            if p.returncode == 0:
                return sub_id
            # Right after `ray start` the job API may answer before the node's agent has registered.
            if "No available agent" not in p.stdout + p.stderr or time.time() > deadline:
                raise RuntimeError(f"ray job submit failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
            time.sleep(2)

    def job_status(self, sub_id: str) -> str:
        """PENDING / RUNNING / SUCCEEDED / FAILED / STOPPED."""
        p = self.ray("job", "status", "--address", self.api, sub_id, check=False, timeout=60)
        text = (p.stdout + p.stderr).lower()
        # "Job '<id>' succeeded" / "was stopped" / "failed", else "Status for job '<id>': RUNNING".
        for word, status in (("succeeded", "SUCCEEDED"), ("was stopped", "STOPPED"), ("' failed", "FAILED"),
                             (": running", "RUNNING"), (": pending", "PENDING")):
            if word in text:
                return status
        return "UNKNOWN"

    def wait_job(self, sub_id: str, timeout_s: float = 900) -> str:
        """Poll until the job ends; returns its final status."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            s = self.job_status(sub_id)
            if s in ("SUCCEEDED", "FAILED", "STOPPED"):
                return s
            time.sleep(2)
        return "TIMEOUT"

    def job_logs(self, sub_id: str) -> str:
        """The driver's output."""
        return self.ray("job", "logs", "--address", self.api, sub_id, check=False, timeout=120).stdout

    def retried_tasks(self) -> dict[str, int]:
        """Task attempts beyond the first, per task name, from Ray's state API (what Ray re-executed)."""
        p = self.ray("list", "tasks", "--address", self.api, "--detail", "--format", "json", "--limit", "10000",
                     check=False, timeout=300)
        try:
            tasks = json.loads(p.stdout)
        except json.JSONDecodeError:
            self.state_api_error = (p.stdout[-500:] + p.stderr[-1500:]).strip()
            return {"<state API unavailable>": -1}
        out: dict[str, int] = {}
        for t in tasks:
            if int(t.get("attempt_number") or 0) > 0 and t.get("type") == "NORMAL_TASK":
                name = str(t.get("name") or t.get("func_or_class_name") or "?")
                out[name] = out.get(name, 0) + 1
        return out

    def __exit__(self, *exc) -> None:
        # Only this cluster's processes (`ray stop` would stop every Ray on the machine).
        procs = []
        for pid in self.cluster_pids():
            try:
                p = psutil.Process(pid)
                procs.extend([p, *p.children(recursive=True)])
            except psutil.Error:
                pass
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=30)
        shutil.rmtree(self.tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# Inputs for the scenarios


RELIABILITY_CONFIG = {
    # The structural filters of demo.yaml, one task operator and one actor pool: what the faults below hit is the
    # graph's machinery (listing, decode, tasks, actors, writer), independent of which scorers a profile runs.
    "name": "reliability",
    "profile": "offline",
    "operators": [
        {"name": "basic"},
        {"name": "quality_scorer", "num_cpus": 0.25, "concurrency": 1},  # an actor pool (null scores, no model)
    ],
    "decide": {"duration_s": {"min": 1.0, "max": 600.0}, "short_side": {"min": 128},
               "aspect_ratio": {"min": 0.33, "max": 3.0}},
}


def reliability_config(dst: Path, streaming: bool = False, **overrides) -> Path:
    """Write the reliability config; `streaming`: one row per part file and batches of one row, so rows stream
    out while the graph runs and a kill falls between finished sources."""
    import yaml

    data = json.loads(json.dumps(RELIABILITY_CONFIG))
    if streaming:
        data["rows_per_file"] = 1
        data["operators"] = [{**o, "batch_size": 1} for o in data["operators"]]
    data.update(overrides)
    dst.write_text(yaml.safe_dump(data))
    return dst


def replicated_inputs(src: Path, dst: Path, copies: int) -> list[Path]:
    """`copies` hard-linked copies of the sample set's videos and images (different names: different sources)."""
    out = []
    files = [p for p in sorted(src.rglob("*")) if p.is_file() and p.suffix.lower() in (".mp4", ".jpg", ".png")]
    for c in range(copies):
        for p in files:
            q = dst / f"copy{c}" / p.relative_to(src)
            q.parent.mkdir(parents=True, exist_ok=True)
            if not q.exists():
                os.link(p, q)
            out.append(q)
    return out


# ----------------------------------------------------------------------------------------------------------------
# The scenarios behind the table


def _listed(inputs: list[Path]) -> set[str]:
    from curation.config import PipelineConfig
    from curation.ingest.sources import list_sources

    cfg = PipelineConfig()
    return set(list_sources([str(i) for i in inputs], cfg.image_extensions + cfg.video_extensions).uris)


def scenario_monitored(work: Path, name: str, inputs: list[Path], config: Path, fault: str | None = None,
                       fault_count: int = 1, env: dict | None = None, prefix: list[str] | None = None) -> dict:
    """One monitored run (optionally with a fault) and its audit."""
    out = work / name
    logs = work / f"{name}.sources"
    for d in (out, logs):
        shutil.rmtree(d, ignore_errors=True)
    logs.mkdir(parents=True)
    report = work / f"{name}.json"
    p = run_cli([str(i) for i in inputs], out, config, report, fault=fault, fault_count=fault_count,
                env={**(env or {}), "CURATION_SOURCE_LOG": str(logs)}, prefix=prefix)
    if p.returncode != 0:
        raise RuntimeError(f"{name}: run failed\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    rep = json.loads(report.read_text())
    rep["audit"] = audit(out, _listed(inputs))
    rep["sources_recomputed"] = recomputed(source_attempts(logs))
    return rep


def scenario_driver_kill(work: Path, inputs: list[Path], config: Path, after_parts: int = 5) -> dict:
    """SIGKILL the driver (its whole process group: local Ray, workers, decoders) part-way, then run again."""
    from curation.manifest import finished_sources, part_files

    out = work / "driver_kill"
    logs1, logs2 = work / "driver_kill.sources1", work / "driver_kill.sources2"
    for d in (out, logs1, logs2):
        shutil.rmtree(d, ignore_errors=True)
    logs1.mkdir(parents=True)
    logs2.mkdir(parents=True)
    cmd = [sys.executable, str(ROOT / "pipelines" / "pretrain_mix.py"), "--config", str(config), "--output",
           str(out)]
    for i in inputs:
        cmd += ["--input", str(i)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["CURATION_SOURCE_LOG"] = str(logs1)
    # Its own session: the SIGKILL below takes the driver and everything it started (local Ray, workers,
    # decoder helpers) at once, as a lost driver machine would.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and len(part_files(out / "samples")) < after_parts and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    exited_early = proc.returncode != -signal.SIGKILL
    finished = finished_sources(out)
    first = source_attempts(logs1)
    report = work / "driver_kill.json"
    p = run_cli([str(i) for i in inputs], out, config, report, env={"CURATION_SOURCE_LOG": str(logs2)})
    if p.returncode != 0:
        raise RuntimeError(f"resume failed\n{p.stderr[-5000:]}")
    second = source_attempts(logs2)
    rep = json.loads(report.read_text())
    rep.update(
        exited_before_kill=exited_early,
        parts_before_kill=len([f for f in part_files(out / "samples")
                               if os.path.basename(f) not in rep.get("files_written_this_run", [])]),
        finished_before_kill=len(finished),
        started_before_kill=len(first),
        # Sources the second run started again although the first had finished them (must be 0) ...
        finished_recomputed=len(set(second) & finished),
        # ... and sources started by both runs (in flight at the kill, or queued: these are recomputed).
        sources_recomputed=len(set(second) & set(first)),
        second_run_started=len(second),
        audit=audit(out, _listed(inputs)),
    )
    return rep


def scenario_node_loss(work: Path, inputs: list[Path], config: Path, after_parts: int = 5) -> dict:
    """Head (2 CPUs) + node b (2 CPUs) on loopback; `ray job submit`; SIGKILL node b part-way; job must finish."""
    from curation.manifest import part_files

    out = work / "node_loss"
    logs = work / "node_loss.sources"
    for d in (out, logs):
        shutil.rmtree(d, ignore_errors=True)
    logs.mkdir(parents=True)
    # After the loss the head alone must still fit a decode task (1 CPU) next to the actor pool (0.25 CPU): with
    # less, the job would wait for a replacement node (the autoscaler's job on a real cluster) forever.
    with LoopbackCluster(head_cpus=2, extra_env={"CURATION_SOURCE_LOG": str(logs)}) as cluster:
        cluster.add_node("b", cpus=2)
        entry = ["python", "pipelines/pretrain_mix.py", "--config", str(config), "--output", str(out)]
        for i in inputs:
            entry += ["--input", str(i)]
        with ProcessMonitor(cluster.cluster_pids) as mon:
            sub = cluster.submit(entry)
            deadline, checked = time.time() + 600, time.time()
            busy: list[str] = []
            running_before: set[int] = set()
            while time.time() < deadline:
                # Strike once rows are streaming out and node b is in the middle of a task: a Ray worker's title
                # names the task it runs (`ray::IDLE` otherwise); seen on two polls in a row, so that it is not a
                # task finishing this instant.
                if len(part_files(out / "samples")) >= after_parts:
                    procs = cluster.node_processes("b")
                    running = {p.pid for p in procs if _title(p).startswith("ray::MapBatches")}
                    # ... and past its start-up: node b's workers have begun sources (not just imported code).
                    started = _lines_from(logs, {p.pid for p in procs})
                    if running & running_before and started:
                        busy = sorted(_title(psutil.Process(pid))[:60] for pid in running & running_before
                                      if psutil.pid_exists(pid))
                        break
                    running_before = running
                if time.time() - checked > 10:
                    checked = time.time()
                    if cluster.job_status(sub) in ("FAILED", "STOPPED", "SUCCEEDED"):
                        break
                time.sleep(0.15)
            parts_at_kill = len(part_files(out / "samples"))
            lost = {p.pid: _title(p)[:50] for p in cluster.node_processes("b")}
            lost_pids = set(lost)
            killed = cluster.kill_node("b")
            status = cluster.wait_job(sub, timeout_s=420)
        job_log = cluster.job_logs(sub)
        retried = cluster.retried_tasks()
        state_error = getattr(cluster, "state_api_error", None)
    if status != "SUCCEEDED":
        raise RuntimeError(f"job {status} after node loss (processes: {mon.top(12)})\n{job_log[-5000:]}")
    run = json.loads((out / "run.json").read_text())
    return {
        "killed_processes": killed,
        "parts_written_before_kill": parts_at_kill,
        "tasks_running_on_lost_node": busy,
        "lost_node_processes": lost,
        "retried_tasks": retried,
        "state_api_error": state_error,
        "job_status": status,
        "sources_recomputed": recomputed(source_attempts(logs)),
        # Work the lost node had done or was doing (its workers' lines in the source log).
        "sources_started_on_lost_node": _lines_from(logs, lost_pids),
        "summary": {k: run[k] for k in ("sources_listed", "sources_processed", "rows_written_this_run", "counts")},
        "peak_rss_mb": mon.peaks_mb(),
        "top_processes": mon.top(),
        "audit": audit(out, _listed(inputs)),
    }


SCENARIOS = ("hostile", "decoder_crash", "decoder_hang", "worker_kill", "driver_kill", "node_loss")


def table(work: Path, only: list[str] | None = None) -> str:
    """Run the scenarios (all, or `only` these, keeping earlier results of the others in work/reliability.json)
    and return the markdown table."""
    from curation.testing.hostile import make_hostile, unprivileged_prefix
    from curation.testing.samples import make_samples

    work = work.resolve()  # `ray job submit` runs the driver elsewhere: every path it gets must be absolute
    work.mkdir(parents=True, exist_ok=True)
    samples = work / "samples"
    if not (samples / "labels.parquet").exists():
        make_samples(samples, seed=0)
    hostile = work / "corpus_hostile"
    if not (hostile / "hostile.json").exists():
        shutil.rmtree(hostile, ignore_errors=True)
        make_hostile(hostile)
    many = work / "many"
    replicated_inputs(samples, many, copies=3)
    plain = reliability_config(work / "reliability.yaml")
    streaming = reliability_config(work / "streaming.yaml", streaming=True)
    short_timeout = reliability_config(work / "timeout10.yaml", streaming=True, limits={"decode_timeout_s": 10.0})

    saved = work / "reliability.json"
    results = json.loads(saved.read_text()) if saved.exists() and only else {}
    todo = [n for n in SCENARIOS if not only or n in only]
    runs = {
        "hostile": lambda: scenario_monitored(work, "hostile", [hostile], plain, prefix=unprivileged_prefix()),
        "decoder_crash": lambda: scenario_monitored(work, "decoder_crash", [samples], streaming,
                                                    fault="decoder-crash", fault_count=3),
        "decoder_hang": lambda: scenario_monitored(work, "decoder_hang", [samples], short_timeout,
                                                   fault="decoder-hang", fault_count=1),
        "worker_kill": lambda: scenario_monitored(work, "worker_kill", [samples], streaming, fault="worker-kill",
                                                  fault_count=2),
        "driver_kill": lambda: scenario_driver_kill(work, [many], streaming),
        "node_loss": lambda: scenario_node_loss(work, [many], streaming),
    }
    for name in todo:
        t = time.time()
        results[name] = runs[name]()
        results[name]["scenario_s"] = round(time.time() - t, 1)
        saved.write_text(json.dumps(results, indent=1))
    return render(results)


def _lost(a: dict) -> int:
    return len(a["missing_sources"]) + a["incomplete_sources"]


def _peak(r: dict) -> str:
    p = r.get("peak_rss_mb", {})
    return f"worker {p.get('worker', 0):.0f} · decoder {p.get('decoder', 0):.0f}"


def render(results: dict) -> str:
    """The markdown table of a `table` run."""
    rows = []
    h = results["hostile"]
    st = h["audit"]["status"]
    rows.append((f"hostile corpus ({h['summary']['sources_listed']} sources: broken containers, PNG bombs, absurd "
                 "SPS sizes, 0 fps, VFR, audio-only, 1 frame, rotation, hostile names, symlink loops, FIFO, "
                 "/dev/zero, mode 000, non-UTF-8 name)",
                 f"completes; {st.get('failed', 0)} failed / {st.get('rejected', 0)} rejected / "
                 f"{st.get('kept', 0)} kept, as labeled, each with its error or reason; "
                 f"{h['summary']['non_media_files_skipped']} hidden/non-media files reported as skipped; "
                 f"worker deaths {h['worker_deaths']}",
                 _lost(h["audit"]), h["sources_recomputed"], _peak(h)))
    for key, what in (("decoder_crash", "SIGSEGV a busy decoder helper (×3)"),
                      ("decoder_hang", "SIGSTOP a busy decoder helper (hang in C code), `decode_timeout_s: 10`"),
                      ("worker_kill", "SIGKILL a busy Ray worker (×2)")):
        r = results.get(key)
        if r is None:
            continue
        errs = r["summary"]["counts"].get("errors", {})
        hits = len(r["faults"])
        rows.append((what, f"completes; {hits} injected; failed rows by cause {errs}; Ray worker deaths "
                           f"{r['worker_deaths']}; duplicates {r['audit']['duplicate_sample_ids']}",
                     _lost(r["audit"]), r["sources_recomputed"], _peak(r)))
    d = results.get("driver_kill")
    if d is not None:
        rows.append(("SIGKILL the driver and its local Ray part-way; re-run with the same `--output`",
                     f"{d['parts_before_kill']} parts ({d['finished_before_kill']} sources) on disk at the kill; "
                     f"re-run skips them ({d['summary']['sources_skipped_as_finished']}), processes "
                     f"{d['summary']['sources_processed']}; finished sources started again: "
                     f"{d['finished_recomputed']}; duplicates {d['audit']['duplicate_sample_ids']}",
                     _lost(d["audit"]), d["sources_recomputed"], _peak(d)))
    n = results.get("node_loss")
    if n is not None:
        rows.append(("SIGKILL every process of worker node b (2 of 4 CPUs) mid-job, under `ray job submit`",
                     f"job {n['job_status']}; {n['killed_processes']} processes killed while running "
                     f"{len(n['tasks_running_on_lost_node'])} task(s); Ray retried task attempts "
                     f"{sum(n['retried_tasks'].values())}; duplicates {n['audit']['duplicate_sample_ids']}",
                     _lost(n["audit"]), n["sources_recomputed"], _peak(n)))
    out = ["| fault injected | what happened | rows lost | sources recomputed | peak RSS per process (MiB) |",
           "|---|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    return "\n".join(out)


def overhead(samples: Path, repeat: int = 5) -> dict:
    """Cost of decoding in the helper process vs in the worker itself, per request, A/B interleaved so that load
    from other processes hits both alike: probe+split of every sample source and the views of every clip."""
    import dataclasses
    import statistics

    from curation.config import load_config
    from curation.ingest import source_to_rows
    from curation.ingest.decoder import DecoderProcess, decoder_memory_bytes
    from curation.ingest.jobs import OPS
    from curation.ingest.sources import list_sources

    cfg = load_config(reliability_config(Path(tempfile.mkdtemp()) / "c.yaml"))
    uris = list_sources([str(samples)], cfg.image_extensions + cfg.video_extensions).uris
    requests = []
    for u in uris:
        if "/broken/" in u:
            continue  # failures cost nothing to decode; time what works
        requests.append(("probe_split", {"path": u, "split": dataclasses.asdict(cfg.split),
                                         "limits": dataclasses.asdict(cfg.limits), "deadline_s": 120.0}))
        for r in source_to_rows(u, cfg):
            if r["status"] == "failed":
                continue
            rot = int(r["rotation"] or 0)
            coded = [r["height"], r["width"]] if rot in (90, 270) else [r["width"], r["height"]]
            requests.append(("views", {"path": u, "media_type": r["media_type"], "start": r["start_frame"],
                                       "end": r["end_frame"], "fps": r["fps"], "coded_wh": coded, "rotation": rot,
                                       "frames": dataclasses.asdict(cfg.frames),
                                       "max_pixels": cfg.limits.max_pixels, "deadline_s": 120.0}))
    t0 = time.perf_counter()
    helper = DecoderProcess(decoder_memory_bytes(cfg.limits.max_pixels))
    helper.call("ping", {}, 60)
    start_s = time.perf_counter() - t0
    inline = {"probe_split": [], "views": []}
    isolated = {"probe_split": [], "views": []}
    transport = {"probe_split": [], "views": []}
    for op, args in requests:
        OPS[op](**args)  # warm the page cache and both processes' decoders
        helper.call(op, args, 120)
        a, b, c = [], [], []
        for _ in range(repeat):
            t = time.perf_counter()
            OPS[op](**args)
            a.append(time.perf_counter() - t)
            t = time.perf_counter()
            helper.call(op, args, 120)
            b.append(time.perf_counter() - t)
            c.append(b[-1] - (helper.last_op_s or 0.0))
        inline[op].append(statistics.median(a))
        isolated[op].append(statistics.median(b))
        transport[op].append(statistics.median(c))
    helper.kill()
    out: dict = {"sources": len(uris), "requests": len(requests), "repeat": repeat,
                 "helper_start_s": round(start_s, 2)}
    for op in ("probe_split", "views"):
        out[op] = {
            "n": len(inline[op]),
            "inline_ms_per_call": round(1000 * statistics.fmean(inline[op]), 1),
            "isolated_ms_per_call": round(1000 * statistics.fmean(isolated[op]), 1),
            "transport_ms_median": round(1000 * statistics.median(transport[op]), 2),
        }
    tot_a = sum(map(sum, inline.values()))
    tot_b = sum(map(sum, isolated.values()))
    out["total_inline_s"] = round(tot_a, 3)
    out["total_isolated_s"] = round(tot_b, 3)
    out["overhead_pct"] = round(100 * (tot_b / tot_a - 1), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: `run` (one monitored driver) or `table` (every scenario)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--input", action="append", required=True)
    r.add_argument("--output", required=True)
    r.add_argument("--config", required=True)
    r.add_argument("--report", required=True)
    r.add_argument("--fault", choices=["decoder-crash", "decoder-hang", "worker-kill"])
    r.add_argument("--fault-count", type=int, default=1)
    t = sub.add_parser("table")
    t.add_argument("--work", default=str(ROOT / "bench" / "_out" / "reliability"))
    t.add_argument("--only", action="append", choices=SCENARIOS, help="re-run these scenarios only (repeatable)")
    o = sub.add_parser("overhead", help="decoder helper process vs decoding in the worker")
    o.add_argument("--samples", default=str(ROOT / "bench" / "_out" / "reliability" / "samples"))
    o.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    if args.cmd == "overhead":
        samples = Path(args.samples)
        if not (samples / "labels.parquet").exists():
            from curation.testing.samples import make_samples

            make_samples(samples, seed=0)
        print(json.dumps(overhead(samples, args.repeat), indent=1))
        return 0
    if args.cmd == "run":
        rep = run_monitored(args.input, args.output, args.config, args.fault, args.fault_count)
        Path(args.report).write_text(json.dumps(rep, indent=1))
        print(json.dumps({k: v for k, v in rep.items() if k != "files_written_this_run"}, indent=1))
        return 0
    print(table(Path(args.work), args.only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
