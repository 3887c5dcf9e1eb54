"""Toy-world placement evaluation (`maestro_jax.toy.placement`, `python -m maestro_jax.toy.evaluate`) and the toy N_D sweep CLI.

The weights are the toy world's (`maestro_jax/toy/config.py`: `maestro_jax/assets/toy`, or
$MAESTRO_TOY_ASSETS, e.g. the untrained smoke build). These tests check the plumbing with 4 DDIM
steps and 3 jobs; accuracy thresholds on trained weights live elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maestro_jax.metrics import placement as colour_pl
from maestro_jax.toy import config as toy_cfg
from maestro_jax.toy import placement as te
from maestro_jax.toy import world as tw
from maestro_jax.video import read_png

REPO = Path(__file__).resolve().parents[1]
MODES = ("mosaic", "maestro")  # one compiled sampler serves both (N_D traced)


def _cfg():
    cfg = toy_cfg.get_config("generate")
    cfg.steps = 4
    cfg.n_d = 2
    cfg.compilation_cache = ""
    return cfg


def test_make_jobs_deterministic():
    a = te.make_jobs(2, (2, 3), seed=0)
    b = te.make_jobs(2, (2, 3), seed=0)
    longer = te.make_jobs(3, (2, 3), seed=0)
    other = te.make_jobs(2, (2, 3), seed=1)
    assert [j.name for j in a] == ["k2_000", "k2_001", "k3_000", "k3_001"]
    assert [j.k for j in a] == [2, 2, 3, 3]
    for x, y in zip(a, b):
        assert x.classes == y.classes and x.seed == y.seed
        np.testing.assert_array_equal(x.boxes, y.boxes)
        np.testing.assert_array_equal(x.stems, y.stems)
    # job i of count k depends on (seed, k, i) only: a longer set starts with the shorter one
    by_name = {j.name: j for j in longer}
    for x in a:
        np.testing.assert_array_equal(x.stems, by_name[x.name].stems)
    assert any(x.classes != y.classes or x.seed != y.seed for x, y in zip(a, other))
    n = int(round(tw.SECONDS * tw.SR))
    for j in a:
        assert len(set(j.classes)) == j.k and all(0 <= c < len(tw.OBJECTS) for c in j.classes)
        assert j.stems.shape == (j.k, n) and j.stems.dtype == np.float32
        assert j.boxes.shape == (j.k, 4) and np.all((j.boxes >= 0) & (j.boxes <= 1))
        # each stem is its class's sound: what the renderer would draw for it is its colour
        assert np.all(np.abs(j.stems).max(axis=1) > 0.25)
        for p in range(j.k):
            for q in range(p + 1, j.k):
                bp, bq = j.boxes[p], j.boxes[q]
                overlap_x = min(bp[2], bq[2]) - max(bp[0], bq[0])
                overlap_y = min(bp[3], bq[3]) - max(bp[1], bq[1])
                assert overlap_x <= 0 or overlap_y <= 0
    for bad in [dict(n_per_k=0), dict(n_per_k=1, ks=(5,)), dict(n_per_k=1, ks=(2, 2))]:
        with pytest.raises(te.ToyEvalError):
            te.make_jobs(**bad)


def test_bad_inputs(tmp_path):
    cfg = _cfg()
    jobs = te.make_jobs(1, (2,))
    with pytest.raises(te.ToyEvalError, match="modes"):
        te.evaluate_placement(cfg, jobs, ("vanilla", "nope"))
    cfg.assets = str(tmp_path / "nowhere")
    with pytest.raises(te.ToyEvalError, match="make toy-world"):
        te.evaluate_placement(cfg, jobs, ("maestro",))


@pytest.fixture(scope="module")
def result():
    # 3 two-source jobs, batch 2: the last batch is padded (one compiled shape)
    jobs = te.make_jobs(3, (2,))
    return jobs, te.evaluate_placement(_cfg(), jobs, MODES, batch=2, progress=False)


def test_evaluate_placement(result):
    jobs, res = result
    assert list(res["modes"]) == list(MODES) and res["sources"] == [2]
    assert [j["name"] for j in res["jobs"]] == [j.name for j in jobs]
    for m in MODES:
        r = res["modes"][m]
        assert r["jobs"] == 3 and r["box_frames"] == 3 * 2 * tw.NUM_FRAMES
        per_job = [j["accuracy"][m] for j in res["jobs"]]
        assert r["accuracy"] == pytest.approx(np.mean(per_job))
        assert r["by_sources"] == {"2": pytest.approx(r["accuracy"])}
        # outcomes partition the (box, frame) pairs; 'correct' is the accuracy
        assert list(r["outcomes"]) == list(colour_pl.COLOUR_OUTCOMES)
        assert sum(r["outcomes"].values()) == pytest.approx(1.0)
        assert r["outcomes"]["correct"] == pytest.approx(r["accuracy"])
        # per class: the mean over the boxes holding it, weighted back to the accuracy
        labs = [lab for j in jobs for lab in j.labels]
        assert set(r["by_class"]) == set(labs)
        weighted = sum(r["by_class"][lab] * labs.count(lab) for lab in set(labs)) / len(labs)
        assert weighted == pytest.approx(r["accuracy"])
        assert all(0.0 <= a <= 1.0 and a * 16 == round(a * 16) for a in per_job)
        assert r["seconds"] > 0
    # mosaic (N_D = 0) and maestro (N_D = 2) share one compiled sampler: every maestro call
    # after mosaic's first is warm; and the traced N_D really changes the samples
    assert res["modes"]["maestro"]["seconds_per_job_warm"] is not None
    ex = res["examples"]
    assert list(ex) == ["k2_000", "k2_001"]
    fr = ex["k2_000"]
    assert fr["maestro"].shape == (tw.NUM_FRAMES, tw.RES, tw.RES, 3)
    assert fr["maestro"].dtype == np.uint8
    assert not np.array_equal(fr["mosaic"], fr["maestro"])
    # the scores are colour_pl.colour_placement of exactly those frames
    j0 = jobs[0]
    for m in MODES:
        acc = colour_pl.colour_placement(fr[m], j0.boxes, j0.classes, tw.OBJECT_COLORS).mean()
        assert res["jobs"][0]["accuracy"][m] == pytest.approx(acc)


def test_write_results(result, tmp_path):
    _, res = result
    paths = te.write_results(res, tmp_path / "out")
    body = json.loads(paths["json"].read_text())
    assert "examples" not in body and set(body["modes"]) == set(MODES)
    md = paths["md"].read_text()
    assert "| Mode | 2 sources | All | Jobs |" in md
    assert "| correct | other | elsewhere | absent |" in md
    for m in MODES:
        assert f"| {m} | " in md
    img = read_png(paths["examples"])
    scale = 4
    assert img.shape[0] == 2 * len(MODES) * (tw.RES * scale + 2) + 2  # 2 jobs x modes rows
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_toy_nd_sweep_cli(tmp_path):
    out = tmp_path / "sweep"
    cmd = [
        sys.executable, "-m", "maestro_jax.sweep", "--config=configs/toy.py:sweep_nd",
        "--config.param_values=(0,4)", "--config.toy_jobs=1", "--config.toy_sources=(2,)",
        "--config.generation.steps=4", f"--config.outdir={out}",
        f"--config.generation.assets={_cfg().assets}", "--config.generation.compilation_cache=",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as users run
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["values"] == [0, 4] and summary["failed"] == []
    for row in summary["rows"]:
        assert row["n_videos"] == 1 and row["ia"] is None
        p = row["placement"]
        assert p["metric"] == "toy_colour" and p["n_box_frames"] == 2 * tw.NUM_FRAMES
        assert 0.0 <= p["accuracy"] <= 1.0
    md = (out / "sweep.md").read_text()
    assert "Placement ↑" in md and "| 0 |" in md and "| 4 |" in md
    assert sorted(q.name for q in out.glob("plot_*.png")) == [
        "plot_av_align.png",
        "plot_placement.png",
    ]
    # the truth sidecar holds the classes make_jobs drew
    job = te.make_jobs(1, (2,))[0]
    truth = json.loads((out / "toy_jobs" / te.TRUTH_FILE).read_text())["stems"]
    assert [truth[f"k2_000_{i}.wav"]["class"] for i in range(2)] == list(job.classes)
    settings = json.loads((out / "n_d_4" / "k2_000.json").read_text())
    assert settings["n_d"] == 4
    np.testing.assert_allclose(settings["boxes_per_frame"][0], job.boxes, atol=1e-6)


def test_command_names_bad_flags_in_one_line(tmp_path, capsys):
    """The command refuses bad input before loading anything, in one line."""
    from maestro_jax import cli
    from tests.conftest import load_command

    cmd = load_command("maestro_jax.toy.evaluate")
    argv = ["--sources", "two", "--out", str(tmp_path / "r")]
    assert cli.call(cmd.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--sources 'two'" in err
    assert cli.call(cmd.main, ["--assets", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err
