"""Evaluation CLI/library and parameter sweeps on tiny random models (CPU).

One runlocal N_D sweep (2 values, 1 two-source job) is generated once per module; the evaluate
tests then score its videos (copied into one folder so FVD has 2 videos per side). Numbers from
random weights only test the plumbing: keys, counts, ranges, FVD(x, x) = 0, file outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maestro_jax import plots
from maestro_jax.evaluation import config as eval_configs
from maestro_jax.evaluation import report as eval_report
from maestro_jax.evaluation import score as eval_score
from maestro_jax.evaluation import sweep as sw
from maestro_jax.evaluation import videos as eval_videos
from maestro_jax.video import read_png
from tests.conftest import load_config_file

lambda1_cfg = load_config_file("configs/sweeps/lambda1.py")
modes_cfg = load_config_file("configs/sweeps/modes.py")
nd_cfg = load_config_file("configs/sweeps/nd.py")
nq_cfg = load_config_file("configs/sweeps/nq.py")

REPO = Path(__file__).resolve().parents[1]
ND_VALUES = (0, 4)


def _nd_config(audio_dir: Path, outdir: Path):
    cfg = nd_cfg.get_config("runlocal")
    cfg.param_values = ND_VALUES
    cfg.audio_dir = str(audio_dir)
    cfg.stems = "dog.wav+violin.wav:LR"
    cfg.toy_jobs = 0
    cfg.outdir = str(outdir)
    cfg.generation.compilation_cache = ""
    return cfg


@pytest.fixture(scope="module")
def nd_sweep(tmp_path_factory, audio_dir):
    out = tmp_path_factory.mktemp("nd_sweep")
    cfg = _nd_config(audio_dir, out)
    res = sw.run_sweep(cfg)
    return cfg, out, res


@pytest.fixture(scope="module")
def two_videos(nd_sweep, tmp_path_factory):
    """The sweep's two videos (N_D = 0 and 4) with their .json in one folder."""
    _, out, _ = nd_sweep
    d = tmp_path_factory.mktemp("two")
    for v in ND_VALUES:
        for f in (out / f"n_d_{v}").glob("j00_*.*"):
            shutil.copy(f, d / f"nd{v}{f.suffix}")
    return d


def test_nd_sweep_outputs(nd_sweep):
    cfg, out, res = nd_sweep
    assert res["failed"] == []
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["value"] for r in rows] == list(ND_VALUES)
    for r in rows:
        assert r["n_videos"] == 1 and r["ia"]["n"] == 1 and r["av_align"]["n"] == 1
        assert -1.0 <= r["ia"]["value"] <= 1.0
        assert 0.0 <= r["av_align"]["value"] <= 1.0
        assert r["placement"]["n_boxes"] == 2
    # the two values really differ (N_D changes the sampler)
    sub = [out / f"n_d_{v}" for v in ND_VALUES]
    settings = [json.loads(next(s.glob("j00_*.json")).read_text()) for s in sub]
    assert [s["n_d"] for s in settings] == list(ND_VALUES)
    md = (out / "sweep.md").read_text()
    assert "| N_D | FVD ↓ | IA ↑ | AV-Align ↑" in md
    assert all(f"| {v} |" in md for v in ND_VALUES)
    # plots: one per metric, the plot size
    names = sorted(Path(p).name for p in res["plots"])
    assert names == ["plot_av_align.png", "plot_ia.png", "plot_placement.png"]
    for p in res["plots"]:
        img = read_png(p)
        assert img.shape == (260, 400, 3) and img.std() > 10
    # grid: rows = values, columns = frames (32 x 32 frames, 2 px padding, a label column)
    grid = read_png(out / "grid.png")
    h, w = cfg.generation.height, cfg.generation.width
    assert grid.shape[0] == len(ND_VALUES) * (h + 2) + 2
    label_w = plots.text_size("4")[1] + 8
    assert grid.shape[1] == label_w + cfg.grid_frames * (w + 2) + 2
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary leftovers


def test_nd_sweep_resumes_without_work(nd_sweep, capsys):
    cfg, out, _ = nd_sweep
    mp4 = next((out / "n_d_0").glob("*.mp4"))
    before = mp4.stat().st_mtime_ns
    res = sw.run_sweep(cfg)
    text = capsys.readouterr().out
    assert "already done" in text and text.count("evaluation unchanged") == len(ND_VALUES)
    assert mp4.stat().st_mtime_ns == before and res["failed"] == []


def test_evaluate_with_reference(two_videos, tmp_path):
    cfg = eval_configs.get_config("runlocal")
    res = eval_score.evaluate_dirs([("maestro", two_videos)], cfg, reference=two_videos)
    js, md = eval_report.write_report(tmp_path / "e.json", res, cfg)
    r = json.loads(js.read_text())
    assert r["n_videos"] == 2 and r["ia"]["n"] == 2 and r["av_align"]["n"] == 2
    assert r["av_align"]["rule"] == "2025" and 0 <= r["av_align"]["value"] <= 1
    assert r["av_align_2023"]["rule"] == "2023" and "exceed 1" in r["av_align_2023"]["note"]
    assert r["fvd"]["n_gen"] == 2 and r["fvd"]["n_real"] == 2 and r["fvd"]["n"] == 2
    assert abs(r["fvd"]["value"]) < 1e-6
    assert r["placement"]["n_boxes"] == 4 and r["placement"]["n"] == 2
    assert set(r["per_video"]) == {"nd0", "nd4"}
    assert r["config"]["ia_audio"] == "mixture"
    table = md.read_text().splitlines()
    assert table[0].startswith("| Method | FVD ↓ | IA ↑ | AV-Align ↑")
    assert table[2].startswith("| maestro | 0.0 | ")
    assert md.with_suffix(".json") == js


def test_evaluate_ia_options_and_rows(two_videos, nd_sweep):
    """Stems + per-segment IA differs from mixture IA; several folders give several rows."""
    _, out, _ = nd_sweep
    cfg = eval_configs.get_config("runlocal")
    mix = eval_score.evaluate_dirs([("two", two_videos)], cfg)[0]
    cfg.ia_audio, cfg.ia_embedding = "stems", "segments"
    stems = eval_score.evaluate_dirs([("two", two_videos), ("nd0", out / "n_d_0")], cfg)
    assert stems[0]["ia"]["audio"] == "stems" and stems[0]["ia"]["embedding"] == "segments"
    assert stems[0]["ia"]["n"] == 2 and stems[1]["ia"]["n"] == 1
    assert abs(stems[0]["ia"]["value"] - mix["ia"]["value"]) > 1e-6
    assert "fvd" not in mix
    table = eval_report.markdown_table(stems)
    assert "| two |" in table and "| nd0 |" in table and "FVD: – (no reference" in table


def test_bad_inputs(tmp_path, two_videos):
    cfg = eval_configs.get_config("runlocal")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(eval_videos.EvalError, match="no videos"):
        eval_score.evaluate_dirs([("e", empty)], cfg)
    with pytest.raises(eval_videos.EvalError, match="not found"):
        eval_score.evaluate_dirs([("x", tmp_path / "nope")], cfg)
    with pytest.raises(eval_videos.EvalError, match="at least 2 reference videos"):
        eval_score.evaluate_dirs([("t", two_videos)], cfg, reference=empty)
    cfg.ia_audio = "both"
    with pytest.raises(eval_videos.EvalError, match="ia_audio"):
        eval_score.evaluate_dirs([("t", two_videos)], cfg)
    full = eval_configs.get_config()
    with pytest.raises(eval_videos.EvalError, match="imagebind_checkpoint"):
        eval_score.evaluate_dirs([("t", two_videos)], full)
    # the CLI: exit status 2 and the problem named, before any compute
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    r = subprocess.run(
        [sys.executable, "-m", "maestro_jax.evaluate", "--config=configs/evaluate.py:runlocal",
         "--videos", str(empty), "--out", str(tmp_path / "e.json")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert "no videos" in r.stderr and str(empty) in r.stderr
    assert not (tmp_path / "e.json").exists()


def test_sweep_plans(audio_dir, tmp_path):
    """Every sweep config plans before compute: what each value changes."""
    cfgs = {}
    for mod in (nd_cfg, modes_cfg, nq_cfg, lambda1_cfg):
        for variant in ("default", "runlocal"):
            c = mod.get_config(variant)
            c.audio_dir, c.outdir, c.toy_jobs = str(audio_dir), str(tmp_path / c.param), 0
            cfgs[(c.param, variant)] = c
    assert tuple(cfgs[("n_d", "default")].param_values) == (0, 2, 4, 6, 8, 12, 50)
    pts = sw.plan(cfgs[("n_d", "runlocal")])
    assert [p.jobs[0].n_d for p in pts] == [0, 1, 2, 4]
    assert len({p.gen_cfg.to_json_best_effort() for p in pts}) == 1  # one models object
    pts = sw.plan(cfgs[("mode", "runlocal")])
    assert [p.gen_cfg.mode for p in pts] == ["vanilla", "locate", "mosaic", "maestro"]
    pts = sw.plan(cfgs[("num_queries", "runlocal")])
    assert [p.gen_cfg.num_queries for p in pts] == [1, 2, 4]
    assert all(p.make_tiny_cim and p.jobs[0].checkpoint == p.cim for p in pts)
    pts = sw.plan(cfgs[("lambda1", "runlocal")])
    assert [p.label for p in pts] == ["0", "0.9"] and len({p.cim for p in pts}) == 2
    # full-size N_Q / lambda1 sweeps need one CIM per value, named before any compute
    with pytest.raises(sw.SweepError, match="missing: 0: none given"):
        sw.plan(cfgs[("lambda1", "default")])
    c = cfgs[("num_queries", "default")]
    c.checkpoint_pattern = str(tmp_path / "cim_q{value}")
    with pytest.raises(sw.SweepError, match="cim_q20"):
        sw.plan(c)
    c = cfgs[("n_d", "runlocal")]
    c.param_values = (0, 9)
    with pytest.raises(sw.SweepError, match="N_D = 9"):
        sw.plan(c)
    c.param_values, c.stems = (0,), "nope.wav+dog.wav"
    with pytest.raises(sw.SweepError, match="nope.wav"):
        sw.plan(c)


def test_tiny_cim_checkpoint_loads(tmp_path):
    """The runlocal stand-in CIM folder loads through generate's checkpoint path."""
    from maestro_jax.generation import config as gen_configs
    from maestro_jax.generation import runner as gen

    sw.write_tiny_cim(tmp_path / "cim", num_queries=2, seed=3)
    cfg = gen_configs.get_config("runlocal")
    cfg.num_queries = 2
    models = gen.build_models(cfg, str(tmp_path / "cim"))
    assert models.audio.num_queries == 2


def test_line_plot_rasteriser():
    img = plots.line_plot(["0", "2", "4"], {"a": [0.1, np.nan, 0.3]}, height=120, width=200)
    assert img.shape == (120, 200, 3) and img.dtype == np.uint8
    blue = np.all(img == plots.COLORS[0], axis=-1)
    cols = np.nonzero(blue.any(axis=0))[0]
    # two markers, no line through the NaN gap: the middle third has no series colour
    assert cols.size > 0 and not blue[:, 95:105].any()
    with pytest.raises(ValueError, match="3 x labels"):
        plots.line_plot(["0", "1", "2"], {"a": [1.0]})
    assert plots.format_value(0.12345) == "0.123" and plots.format_value(585.9) == "586"


def test_one_bad_video_does_not_sink_the_evaluation(two_videos, tmp_path):
    """An unreadable .mp4 is reported and skipped (the others are scored, the report written,
    a failures file lists it, exit status 1); a truncated video is scored with a warning."""
    d = tmp_path / "mixed"
    shutil.copytree(two_videos, d)
    (d / "broken.mp4").write_bytes(b"not a video at all")
    # nd4 truncated: its job said 16 frames, keep the first 8
    from maestro_jax.audio import load_audio
    from maestro_jax.video import read_video, write_video

    frames, fps = read_video(d / "nd4.mp4")
    audio, sr = load_audio(d / "nd4.mp4")
    write_video(d / "nd4.mp4", frames[:8], fps, audio[:, : int(sr * 8 / fps)], sr)
    cfg = eval_configs.get_config("runlocal")
    logs: list[str] = []
    (r,) = eval_score.evaluate_dirs([("mixed", d)], cfg, log=logs.append)
    assert set(r["per_video"]) == {"nd0", "nd4"} and list(r["failed"]) == ["broken"], r["failed"]
    assert r["n_videos"] == 3 and r["n_scored"] == 2 and r["av_align"]["n"] == 2
    assert any("truncated" in w for w in r["per_video"]["nd4"]["warnings"])
    assert any("broken: FAILED" in line for line in logs)
    assert "Could not be scored (skipped): mixed/broken" in eval_report.markdown_table([r])
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    out = tmp_path / "e.json"
    p = subprocess.run(
        [sys.executable, "-m", "maestro_jax.evaluate", "--config=configs/evaluate.py:runlocal",
         "--videos", str(d), "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert p.returncode == 1, p.stderr[-2000:]
    assert json.loads(out.read_text())["n_scored"] == 2
    (fail,) = [json.loads(x) for x in out.with_suffix(".failures.jsonl").read_text().splitlines()]
    assert fail["video"] == "broken" and fail["folder"] == "mixed" and fail["reason"]


def test_runlocal_sweep_needs_no_files(tmp_path):
    """The runlocal sweeps run on toy scenes made on the fly (no audio folder to give)."""
    c = nd_cfg.get_config("runlocal")
    assert c.audio_dir == "" and c.toy_jobs == 1
    c.outdir = str(tmp_path)
    pts = sw.plan(c)
    stems = [Path(s) for s in pts[0].jobs[0].audio]
    assert stems and all(p.is_file() and str(tmp_path) in str(p) for p in stems)
