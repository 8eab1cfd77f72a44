"""The one typed config reader (curation.typed): nested sections, unknown keys, wrong types, bounds, choices."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from curation.errors import ConfigError
from curation.typed import read, setting


@dataclass(frozen=True)
class Inner:
    """A nested section."""

    steps: int = setting(1, ge=1)
    lr: float = setting(1e-3, gt=0)
    mode: Literal["fast", "slow"] = "fast"
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outer:
    """A top-level config."""

    name: str
    inner: Inner = Inner()
    phases: list[Inner] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    seed: int | None = None
    dtype: str = setting("bf16", choices=("bf16", "fp32"))
    low: float = 0.0
    high: float = 1.0

    def config_check(self) -> None:
        """low <= high."""
        if self.low > self.high:
            raise ConfigError(f"low {self.low} is above high {self.high}")


def _err(data) -> str:
    with pytest.raises(ConfigError) as exc:
        read(Outer, data, "run")
    return str(exc.value)


def test_reads_nested_lists_dicts_optionals_and_defaults():
    cfg = read(Outer, {"name": "a", "inner": {"steps": 3, "lr": "1e-4", "tags": ["x"]},
                       "phases": [{"mode": "slow"}], "ratios": {"s1": 2, 7: 1.5}, "seed": None})
    assert cfg.inner == Inner(steps=3, lr=1e-4, tags=("x",))
    assert cfg.phases == [Inner(mode="slow")] and cfg.ratios == {"s1": 2.0, "7": 1.5} and cfg.seed is None
    assert read(Outer, {"name": "b"}, "run") == Outer(name="b")


@pytest.mark.parametrize("data, message", [
    ({"name": "a", "inner": {"stepz": 1}}, "unknown config key run.inner.stepz"),
    ({"name": "a", "inner": {"steps": "x"}}, "run.inner.steps: expected an integer, got 'x'"),
    ({"name": "a", "inner": {"steps": True}}, "run.inner.steps: expected an integer, got True"),
    ({"name": "a", "phases": [{}, {"steps": 0}]}, "run.phases[1].steps: must be >= 1, got 0"),
    ({"name": "a", "inner": {"lr": 0}}, "run.inner.lr: must be > 0, got 0.0"),
    ({"name": "a", "inner": {"mode": "warp"}}, "run.inner.mode: 'warp' is not one of ['fast', 'slow']"),
    ({"name": "a", "dtype": "fp8"}, "run.dtype: 'fp8' is not one of ['bf16', 'fp32']"),
    ({"name": "a", "ratios": {"s1": "lots"}}, "run.ratios.s1: expected a number, got 'lots'"),
    ({"name": "a", "inner": [1]}, "run.inner: expected a mapping, got [1]"),
    ({"name": "a", "low": 2, "high": 1}, "run: low 2.0 is above high 1.0"),
    ({}, "missing required config key run.name"),
])
def test_errors_name_the_key(data, message):
    assert _err(data) == message or _err(data).startswith(message + " ")


def test_a_missing_or_unreadable_config_file_is_one_line_for_every_command(tmp_path, capsys):
    """The one config reader turns a missing file, a folder or non-UTF-8 bytes into a ConfigError, so every command
    says 'config error:' and exits 2 (trainer.prepare and train_vae printed a FileNotFoundError traceback)."""
    from curation.errors import ConfigError
    from curation.typed import load_yaml_file
    from trainer import prepare, train_vae

    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_yaml_file(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_yaml_file(tmp_path)
    (tmp_path / "latin1.yaml").write_bytes("a: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_yaml_file(tmp_path / "latin1.yaml")
    missing = str(tmp_path / "nope.yaml")
    assert prepare.main(["--stages", str(tmp_path), "--out", str(tmp_path / "lat"), "--config", missing]) == 2
    assert train_vae.main(["--config", missing, "--stages", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("config error: config file not found") == 2 and "Traceback" not in err
