"""benchmarks/speed_targets.py: the CPU smoke run end to end (tiny models), and its table logic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def speed_targets():
    from tests.conftest import load_command

    return load_command("benchmarks.speed_targets")


def test_tiny_smoke_runs_end_to_end(speed_targets, tmp_path):
    """One tiny Maestro sample (2 sources, both phases) + decode, timed, in this process."""
    from maestro_jax import cli

    out = tmp_path / "r.json"
    argv = ["--size=tiny", "--skip_train", "--skip_forwards", "--in_process", "--steps=5",
            "--sample_runs=1", f"--json={out}"]  # fmt: skip
    assert cli.call(speed_targets.main, argv) == 0
    r = json.loads(out.read_text())
    assert not {k: v for k, v in r["errors"].items() if k != "process"}, r["errors"]
    s = r["sample"]
    assert s["sampling_s"] > 0 and s["decode_s"] > 0 and s["compile_s"] > 0
    assert r["matmul"]["tflops"] > 0
    targets = [row["target"] for row in r["table_rows"]]
    assert any(t.startswith("(2) whole sample") for t in targets)
    assert any(t.startswith("(3) peak device memory") for t in targets)


def test_platform_other_than_the_device_stops(speed_targets, capsys):
    """--platform tpu on this CPU: one error line, exit 2, nothing measured (the sample phase
    runs in this process here; a child reports the same to the parent)."""
    from maestro_jax import cli

    argv = ["--platform=tpu", "--size=tiny", "--in_process", "--skip_train"]
    assert cli.call(speed_targets.main, argv) == 2
    out = capsys.readouterr().out
    assert "--platform tpu: JAX runs on cpu here" in out and "(2) whole sample" in out
    assert speed_targets.settings(platform="tpu").attn_impl is None  # resolved on the device
    assert speed_targets.PLATFORM_ATTN["tpu"] == "auto"


def test_pooled_random_like_follows_random_like_rules():
    import jax
    import jax.numpy as jnp

    from maestro_jax.nn.random_init import random_like

    shapes = {
        "d": {"kernel": jax.ShapeDtypeStruct((256, 64), jnp.float32),
              "bias": jax.ShapeDtypeStruct((64,), jnp.float32)},
        "n": {"scale": jax.ShapeDtypeStruct((64,), jnp.float32)},
        "emb": jax.ShapeDtypeStruct((1000, 8), jnp.float32),
    }  # fmt: skip
    p = random_like(shapes, 0, pool_size=1 << 16)
    assert p["d"]["kernel"].shape == (256, 64)
    assert abs(p["d"]["kernel"].std() - 1 / 16) < 0.01  # N(0, 1/fan_in), fan_in 256
    assert np.all(p["d"]["bias"] == 0) and np.all(p["n"]["scale"] == 1)
    assert abs(p["emb"].std() - 0.02) < 0.003


def test_full_size_verdicts(speed_targets):
    """PASS/FAIL against the issue's targets from made-up full-size numbers."""
    r = {
        "device": {"kind": "NVIDIA H100 80GB HBM3", "platform": "gpu", "count": 1, "jax": "x"},
        "size": {"frames": 16, "height": 320, "width": 512, "steps": 50},
        "models": {"attn_impls": {}},
        "matmul": {"tflops": 800.0, "n": 8192, "dtype": "bfloat16", "ms": 1.0},
        "cfg_step": {"ms": 70.0, "compile_s": 30.0, "xla_tflop": 25.1},
        "fwd_b1": {"ms": 300.0, "compile_s": 30.0, "xla_tflop": 12.4},
        "sample": {
            "total_s": 5.5, "sampling_s": 5.2, "decode_s": 0.3, "runs": [(5.2, 0.3)] * 2,
            "per_step_ms": 104.0, "peak_gb": 30.0, "compile_s": 80.0,
            "compile_events_s": {"trace": 5.0, "lower": 1.0, "backend": 74.0},
            "compile_est_s": 81.0,
        },
        "errors": {},
    }  # fmt: skip
    table, rows = speed_targets.build_table(r, speed_targets.settings(size="full"))
    by = {row["target"]: row for row in rows}
    mfu = by["(1) CFG step MFU vs measured matmul"]
    assert mfu["ours"] == f"{100 * 25.16 / 0.07 / 800:.1f} %" and mfu["verdict"] == "PASS"
    assert by["(2) whole sample incl. decode (wall)"]["verdict"] == "PASS"  # 5.5 s, 4.3x
    assert by["(3) peak device memory, one sample"]["verdict"] == "FAIL"  # 30 > 24 GB
    assert by["UNet forward batch 1"]["verdict"] == "FAIL"  # 300 ms vs 234 ms reference
    assert "error: sample" not in table and "NVIDIA H100" in table


def test_parse_train_output(speed_targets):
    text = """
CIM train step
  compile                   13.6 s
  step time                 262.0 ms (median of 3; min 258.1)
  clips/s/device            3.816
  frames/s/device           19.08
  peak memory/device        12.50 GiB
  FLOPs/step/device (XLA)   8.120 T
  FLOPs/step/device (spec)  n/a (full size only)
  MFU (spec FLOPs)          n/a
  loss (sanity)             2.0100
"""
    t = speed_targets.parse_train_output(text)
    assert t == {
        "compile_s": 13.6, "step_ms": 262.0, "clips_per_s_per_device": 3.816,
        "frames_per_s_per_device": 19.08, "peak_gib": 12.5, "xla_tflop": 8.12, "loss": 2.01,
    }  # fmt: skip
