"""Start or join Ray the way every entry point does (runs, passes, visual-text, the trainer's latent pass)."""

from __future__ import annotations

import os
import sys


def init_ray(address: str | None = None, quiet_logs: bool = False) -> None:
    """Join the cluster at `address`/$RAY_ADDRESS (as under `ray job submit`), else start a local Ray.

    `quiet_logs` (command-line entry points only, never inside pytest or a notebook: it takes over fd 2): when stderr
    is not a terminal, drop log noise nobody can act on and colour codes (`curation/logfilter.py`)."""
    import ray

    if ray.is_initialized():
        return
    if quiet_logs:
        from curation.logfilter import quiet_noninteractive_stderr

        quiet_noninteractive_stderr()
    address = address or os.environ.get("RAY_ADDRESS")
    # Workers import our packages from the installed project; the driver's code dir is shipped only when joining
    # a remote cluster without `ray job submit --working-dir`.
    kwargs = {"log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", include_dashboard=False, **kwargs)
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    # Reliability (README, "Reliability"): a block whose task raised must fail the run, never be dropped, or rows
    # would vanish without a trace (per-file errors are caught inside the tasks and become `failed` rows).
    # Lost workers and nodes are Ray's job: Ray Data runs map tasks with max_retries=-1 (retried on worker/node
    # death, with lineage reconstruction of lost blocks) and actor pools with max_restarts=-1, max_task_retries=-1.
    ctx.max_errored_blocks = 0
