"""A real Ray cluster on loopback: `ray start --head`, then `ray job submit` of the pipeline, as users run it."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env(tmp: Path) -> dict:
    """The environment of this cluster's processes and CLI calls: a fresh auth token, the venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # Token authentication on the job API and GCS, as ray_cluster.yaml sets it up: a fresh token per cluster.
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(token)
    # Job entrypoints run `python` from the PATH of the process that started Ray: put the project venv first.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_TMPDIR"] = str(tmp)
    return env


class RayCluster:
    """A head node on 127.0.0.1 with its own temp dir, stopped on exit."""

    def __init__(self, tmp: Path, num_cpus: int = 2):
        # Ray's Unix socket paths live under the temp dir and must stay under ~107 bytes: keep it short.
        self.tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
        self.env = cluster_env(self.tmp)
        self.port = free_port()
        self.dash = free_port()
        self.num_cpus = num_cpus

    def __enter__(self):
        subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
                        f"--port={self.port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dash}",
                        f"--num-cpus={self.num_cpus}", f"--temp-dir={self.tmp}", "--disable-usage-stats",
                        *agent_ports()],
                       check=True, env=self.env, capture_output=True, text=True, timeout=180)
        self.gcs = f"127.0.0.1:{self.port}"
        self.api = f"http://127.0.0.1:{self.dash}"
        try:
            self.wait_job_agent()
        except BaseException:
            self.__exit__()  # `with` does not call __exit__ when __enter__ raises: stop the processes here
            raise
        return self

    def wait_job_agent(self, timeout_s: float = 240) -> None:
        """Wait until the cluster runs jobs, as a user's script would: submit a no-op job until it succeeds.

        The job API (the dashboard) answers before the head's job agent has registered, and a submission in between
        gets "No available agent to submit job"; `ray job list` does not touch the agent, so it cannot tell."""
        deadline = time.time() + timeout_s
        last = None
        while time.time() < deadline:
            last = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", self.api, "--", "python", "-c",
                                   "print('job agent ready')"], env=self.env, capture_output=True, text=True,
                                  timeout=120)
            if last.returncode == 0 and "job agent ready" in last.stdout:
                return
            time.sleep(2)
        agent_log = sorted(self.tmp.glob("session_*/logs/dashboard_agent.log"))
        tail = agent_log[-1].read_text(errors="replace")[-2000:] if agent_log else "(no dashboard_agent.log)"
        raise RuntimeError(f"the cluster's job agent did not accept a job within {timeout_s:.0f} s:\n"
                           f"{(last.stdout + last.stderr)[-2000:] if last else ''}\nagent log:\n{tail}")

    def __exit__(self, *exc) -> None:
        # `ray stop` would stop every Ray on the machine; stop only this cluster's processes (they all carry
        # its temp dir on their command line).
        stop_processes_matching(str(self.tmp))
        shutil.rmtree(self.tmp, ignore_errors=True)


def stop_processes_matching(needle: str) -> None:
    """SIGKILL every process whose command line mentions `needle`, and wait for them to go."""
    procs = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid != os.getpid() and any(needle in part for part in (p.info["cmdline"] or [])):
                p.kill()
                procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    psutil.wait_procs(procs, timeout=30)


def agent_ports() -> list[str]:
    """Free ports for the node's agents. Their defaults are fixed numbers (the job agent's HTTP port is 52365):
    with another Ray on the machine (a busy CI host) the agent cannot bind, stays up without its HTTP service, and
    every submission gets "No available agent to submit job" for good."""
    return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--ray-client-server-port={free_port()}"]


def submit(cluster: RayCluster, entry_args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir <repo> -- python pipelines/pretrain_mix.py ...` and wait for it."""
    cmd = [str(BIN / "ray"), "job", "submit", "--address", cluster.api, "--working-dir", str(ROOT),
           "--", "python", "pipelines/pretrain_mix.py", *entry_args]
    return subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=timeout)


def hold_port(port: int) -> socket.socket | None:
    """Bind `port` on loopback as another Ray on the machine would (None: something already holds it)."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        s.listen()
        return s
    except OSError:
        s.close()
        return None


@pytest.mark.skipif(shutil.which("ray", path=str(BIN)) is None, reason="ray CLI not installed in this environment")
def test_ray_job_submit_on_real_cluster(sample_dir, labels, tmp_path):
    out = tmp_path / "out"
    # A busy machine: another Ray's job agent holds the default agent port (52365). The CI flake "No available agent
    # to submit job" was this collision; the cluster must come up and take jobs all the same.
    busy = hold_port(52365)
    try:
        with RayCluster(tmp_path / "ray") as cluster:
            proc = submit(cluster, ["--input", str(sample_dir), "--output", str(out),
                                    "--config", "pipelines/configs/demo.yaml"])
    finally:
        if busy is not None:
            busy.close()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "succeeded" in proc.stdout.lower()
    assert "rows:" in proc.stdout
    df = pd.read_parquet(out / "samples")
    assert set(df["source_uri"]) == set(labels["source_uri"])
    assert df["sample_id"].is_unique
    failed = set(labels.loc[labels["expected_status"] == "failed", "source_uri"])
    got_failed = df[df["status"] == "failed"]
    assert set(got_failed["source_uri"]) == failed, got_failed[["source_uri", "error"]].to_string()
