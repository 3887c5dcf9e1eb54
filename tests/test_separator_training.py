"""Toy-world separator training (`maestro_jax.training.separator`, `configs/toy.py:separator`):
smoke training, interruption + resume, export -> inference, bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from maestro_jax.toy import config as toy_config
from maestro_jax.training import separator as st
from maestro_jax.training.validate import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _config(variant: str | None = "smoke"):
    return toy_config.separator_config(variant)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Smoke run interrupted during step 4 (checkpoint at step 2), then rerun to the end."""
    workdir = tmp_path_factory.mktemp("toy_sep")
    config = _config()
    real_rng = st._train_rng

    def interrupting_rng(seed, step):
        if step == 3:  # drawing the batch of the 4th step: steps 1..3 ran, ckpt at step 2
            raise KeyboardInterrupt("simulated kill")
        return real_rng(seed, step)

    st._train_rng = interrupting_rng
    try:
        with pytest.raises(KeyboardInterrupt):
            st.train(config, workdir)
    finally:
        st._train_rng = real_rng
    first = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    ckpts = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    out = st.train(config, workdir)
    return {"workdir": workdir, "config": config, "out": out, "first": first, "ckpts": ckpts}


def test_interrupted_run_left_a_checkpoint(trained):
    assert trained["ckpts"] == ["2"]
    assert [r["step"] for r in trained["first"]] == [1, 2, 3]
    assert not (trained["workdir"] / "export").exists() or trained["out"]  # export at the end


def test_resume_continues_from_saved_step(trained):
    out = trained["out"]
    assert out["resumed_from"] == 2
    assert out["step"] == trained["config"].total_steps
    lines = [json.loads(ln) for ln in (trained["workdir"] / "metrics.jsonl").read_text().split("\n")
             if ln]  # fmt: skip
    # step 3 logged before the kill was dropped and logged again: each step exactly once
    assert [r["step"] for r in lines] == list(range(1, trained["config"].total_steps + 1))
    assert all(np.isfinite(r["loss"]) for r in lines)
    evals = [r for r in lines if "si_sdri_db" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(np.isfinite(r["si_sdri_db"]) for r in evals)
    kept = sorted(p.name for p in (trained["workdir"] / "checkpoints").iterdir())
    assert kept == ["4", "6"]  # keep_checkpoints = 2


def test_resume_is_deterministic_per_step(trained):
    # A batch is a pure function of (seed, step): the resumed run saw the same data.
    a = st._train_rng(0, 3).standard_normal(4)
    b = st._train_rng(0, 3).standard_normal(4)
    np.testing.assert_array_equal(a, b)


def test_export_loads_and_separates_by_label(trained):
    from maestro_jax.audio import separation
    from maestro_jax.toy import batches as toy_batches
    from maestro_jax.toy import world as toyworld

    sep = st.load_separator(trained["workdir"] / "export")
    assert sep.tokenizer is None and sep.config.sample_rate == toyworld.SR
    assert tuple(sep.config.separator.channels) == tuple(trained["config"].separator.channels)
    job = toy_batches.demo_job(0, 2)
    mix = np.asarray(job["mixture"], np.float32).reshape(-1)[: toyworld.SR]  # 1 s, mono
    labels = list(job["labels"])
    out = separation.separate_mixture(sep, mix, labels)
    assert out.shape == (len(labels), mix.shape[0]) and np.isfinite(out).all()
    meta = json.loads((trained["workdir"] / "export" / "config.json").read_text())
    assert meta["train_config"]["task"] == "separator" and meta["labels"] == toyworld.labels()
    # the exported label embeddings are what the text path computes from the label strings
    with np.load(trained["workdir"] / "label_embeddings.npz") as z:
        emb = z["embeddings"]
    np.testing.assert_allclose(
        emb, st.label_embeddings(sep.text_variables, sep.config, toyworld.labels()), atol=1e-6
    )


def test_si_sdr():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 1000))
    noise = rng.standard_normal((2, 1000))
    est = 3.0 * ref + 0.1 * noise  # scale-invariant: the gain does not matter
    expected = 10 * np.log10(
        (ref * ref).sum(-1) * 9 / ((est - 3 * ref) ** 2).sum(-1)
    )  # alpha is ~3, exact up to the noise's projection
    np.testing.assert_allclose(st.si_sdr(est, ref), expected, atol=0.05)
    assert st.si_sdr(ref, ref).min() > 60


@pytest.mark.parametrize(
    "change, match",
    [
        ({"task": "cim"}, r"config.task='cim': must be one of 'separator'"),
        ({"batch_size": 0}, "batch_size"),
        ({"train_seconds": 0.01}, "train_seconds"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"max_sources": 1}, "max_sources"),
        ({"separator.channels": (4, 4, 8)}, "separator.channels"),
        ({"text.heads": 3}, "divisible"),
        ({"total_steps": -5}, r"config.total_steps=-5: must be an integer >= 1"),
        ({"warmup_steps": -1}, r"config.warmup_steps=-1: must be an integer >= 0"),
        ({"data_module": "data.no_such_module"}, "cannot be imported"),
    ],
)
def test_bad_config_raises_before_compute(tmp_path, change, match):
    config = _config()
    for key, value in change.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    with pytest.raises(ConfigError, match=match) as e:
        st.train(config, tmp_path / "w")
    assert "\n" not in str(e.value)  # one line
    assert not (tmp_path / "w").exists()  # nothing written, nothing computed


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown config variant"):
        _config("nope")
