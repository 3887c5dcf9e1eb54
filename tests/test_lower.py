"""`python -m maestro_jax.lower` (maestro_jax/aot.py) at tiny size: every program lowered for TPU
and CUDA from this CPU host in one run (the attention sites, the splash kernels in the TPU
programs, XLA's FLOP count), a CPU compile's memory analysis, and flag errors."""

from __future__ import annotations

import json

import pytest

from maestro_jax import cli
from tests.conftest import load_command


@pytest.fixture(scope="module")
def lower():
    return load_command("maestro_jax.lower")


def _rows(path):
    return {(r["program"], r["platform"]): r for r in json.loads(path.read_text())}


def test_programs_lower_for_tpu_and_cuda(lower, tmp_path, capsys):
    """The CFG step, the decode and the CIM step (on the 8-device mesh) in one run; the UNet
    forward and the sampler scan are the same code as the CFG step (kept out: CI time)."""
    from maestro_jax import aot

    assert aot.PROGRAMS == lower.PROGRAMS and aot.PLATFORMS == lower.PLATFORMS
    out = tmp_path / "rows.json"
    programs = ("cfg_step", "decode", "cim_train_step")
    argv = ["--platform=tpu,cuda", "--size=tiny", "--nocompile_cpu", f"--json={out}",
            f"--programs={','.join(programs)}"]  # fmt: skip
    assert cli.call(lower.main, argv) == 0
    text = capsys.readouterr().out
    assert "| program | platform | attention per site |" in text
    rows = _rows(out)
    assert set(rows) == {(p, q) for p in programs for q in ("tpu", "cuda")}
    for (program, platform), r in rows.items():
        assert r["xla_tflop"] > 0 and r["memory"] is None, (program, platform)
        if (program, platform) != ("cfg_step", "tpu"):
            assert r["kernels"] == 0 and "splash" not in r["attention"], (program, platform)
    # the video UNet's spatial self-attention at 4x8 and 2x4 latents (>= 128 keys) is splash on
    # TPU; cross-attention (77 keys: plain rows and the Mosaic edit) and temporal attention
    # (4 frames) are xla; on CUDA in bf16 every site is cuDNN
    r = rows["cfg_step", "tpu"]
    assert r["kernels"] > 0 and "self 512x512 (x5): splash" in r["attention"], r
    assert "self 32x32: xla" in r["attention"] and "temporal 4x4 (x24): xla" in r["attention"]
    assert "cross 512x77 (x10): xla" in r["attention"]  # 5 layers: plain rows + edited rows
    assert "xla" not in rows["cfg_step", "cuda"]["attention"].replace("cudnn*", "")
    assert "cross 64x77" in rows["cim_train_step", "tpu"]["attention"]  # SD 2.1 (tiny)


def test_cpu_compile_reports_memory(lower, tmp_path, capsys):
    out = tmp_path / "rows.json"
    argv = ["--platform=cuda", "--size=tiny", "--programs=decode", f"--json={out}"]
    assert cli.call(lower.main, argv) == 0
    r = _rows(out)["decode", "cuda"]
    assert r["flops_source"] == "CPU compile" and r["compile_s"] > 0
    assert 0 < r["memory"]["args"] < r["memory"]["peak"]
    assert "not compiled" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--platform=gpu"], "--platform gpu"),
        (["--programs=unet,decode"], "--programs unet,decode"),
        (["--mesh_devices=0"], "--mesh_devices 0"),
        (["--mesh_devices=64", "--programs=cim_train_step"], "--mesh_devices 64"),
    ],
)
def test_bad_flags_fail_before_lowering(lower, argv, message, capsys):
    assert cli.call(lower.main, ["--size=tiny", *argv]) == 2
    assert message in capsys.readouterr().err
