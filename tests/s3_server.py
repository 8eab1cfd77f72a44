"""A real S3-compatible server for tests: moto's server mode in its own process on 127.0.0.1, a free port, dummy
credentials. Clients reach it over HTTP through `AWS_ENDPOINT_URL`, exactly as they would reach MinIO or AWS."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def s3_server(log_dir: Path, timeout_s: float = 60.0) -> Iterator[dict[str, str]]:
    """Start the server; yield the environment a client needs (credentials, region, endpoint); stop it after."""
    port = _free_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    log = open(log_dir / "moto_server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        deadline = time.monotonic() + timeout_s
        while True:  # ready when it answers HTTP (as a user's script would wait for a service)
            try:
                urllib.request.urlopen(env["AWS_ENDPOINT_URL"] + "/moto-api/", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {(log_dir / 'moto_server.log').read_text()}")
                time.sleep(0.2)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
