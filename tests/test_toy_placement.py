"""The committed toy-world weights (`maestro_jax/assets/toy`, made by `make toy-world`): they are
complete and small, `make demo` runs on them, and the full method puts each source in its own
box far more often than vanilla conditioning (the README's placement bars).

The test runs a fixed subset of the README's held-out jobs (job seed 1, none used to tune the
settings; the first `N_PER_K` of each source count: `toy_eval.make_jobs` is prefix-stable) for
vanilla and the full method, a few minutes on 2 CPU cores. The bars are the issue's: the full
method at least 0.8, and at least 0.3 above vanilla. Measured on that subset (this machine,
float32, configs/toy.py:generate): the full method 0.929, vanilla 0.267 (on all 50 held-out
jobs 0.907 and 0.279).
"""

from __future__ import annotations

import json

import pytest

from maestro_jax.toy import config as toy_generate
from maestro_jax.toy import placement as toy_eval

ASSETS = toy_generate.ASSETS
N_PER_K = 6
JOB_SEED = 1  # the held-out job set (the settings were tuned on seed 0's first jobs)
BAR_MAESTRO = 0.8  # the full method's accuracy on the subset is at least this (measured 0.929)
BAR_GAP = 0.3  # ... and beats vanilla by at least this (measured 0.662)


def test_committed_weights_are_complete_and_small():
    build = json.loads((ASSETS / "build.json").read_text())
    for sub in ("vc/unet", "vc/vae", "vc/text", "t2i", "imagebind", "cim", "separator"):
        assert (ASSETS / sub / "params").is_dir(), sub
        assert (ASSETS / sub / "config.json").is_file(), sub
    size = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert size <= 50 * 2**20
    assert set(build["stages"]) == {
        "text", "imagebind", "vae", "t2i", "t2v", "t2v_layout", "separator", "cim"
    }  # fmt: skip
    for stage, rec in build["stages"].items():
        assert rec["command"].startswith("python -m maestro_jax.train --config=configs/toy.py:")
        assert stage in rec["command"]
    # every trained stage logged finite numbers at its end
    for stage in ("vae", "t2i", "t2v", "t2v_layout", "separator", "cim"):
        last = build["stages"][stage]["final_metrics"]
        assert last and all(v == v for v in last.values() if isinstance(v, float)), stage


@pytest.fixture(scope="module")
def placement():
    cfg = toy_generate.generate_config()
    cfg.assets = str(ASSETS)
    jobs = toy_eval.make_jobs(N_PER_K, ks=(2, 3), seed=JOB_SEED)
    return toy_eval.evaluate_placement(
        cfg, jobs, modes=("vanilla", "maestro"), batch=N_PER_K, examples=0, progress=False
    )


def test_full_method_places_sources_in_their_boxes(placement):
    acc = {m: placement["modes"][m]["accuracy"] for m in ("vanilla", "maestro")}
    assert acc["maestro"] >= BAR_MAESTRO, acc
    assert acc["maestro"] - acc["vanilla"] >= BAR_GAP, acc


def test_demo_runs_on_the_committed_weights(tmp_path, capsys):
    from maestro_jax import cli
    from tests.conftest import load_command

    demo = load_command("maestro_jax.demo")
    assert cli.call(demo.main, ["--outdir", str(tmp_path)]) == 0
    for f in ("out.mp4", "out.png", "out.json"):
        assert (tmp_path / f).stat().st_size > 0, f
    stems = sorted((tmp_path / "out_stems").glob("*.wav"))
    assert len(stems) == 2
    out = capsys.readouterr().out
    assert "box" in out and "out.mp4" in out
