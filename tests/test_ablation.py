"""Training ablations (`python -m maestro_jax.ablate`, `maestro_jax.evaluation.ablation`) at
smoke size: the toy world's `runlocal` variant (the committed toy weights, 4 CIM training steps,
2 DDIM steps, one scene per value), two N_Q values.

One study is driven through its life: value 2 alone as process 1 of 2 ('split'), then value 1's
training killed after its step-2 checkpoint, then a rerun that resumes value 1 and leaves the
finished value 2 alone. That a per-value override retrains only that value follows from the
per-value training hash (`test_hash_ignores_cadence_and_follows_training`) that the rerun checks.
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest

from maestro_jax.evaluation import ablation
from maestro_jax.evaluation import label_accuracy as la
from tests.conftest import load_config_file


def _cfg(name: str = "nq", variant: str = "runlocal"):
    cfg = load_config_file(f"configs/ablations/{name}.py").get_config(variant)
    cfg.sweep.generation.compilation_cache = ""
    return cfg


def _call(monkeypatch, argv: list[str]) -> int | None:
    """The command in this process (`--config.*` overrides are read from sys.argv)."""
    from absl import flags

    from maestro_jax import cli
    from tests.conftest import load_command

    cmd = load_command("maestro_jax.ablate")
    # the override flags of an earlier call write into that call's config: drop them
    for name in [n for n in list(flags.FLAGS) if n.startswith("config.")]:
        delattr(flags.FLAGS, name)
    monkeypatch.setattr("sys.argv", ["ablate", *argv])
    return cli.call(cmd.main, argv)


def _mtime(path) -> int:
    return os.stat(path).st_mtime_ns


def test_variants_load():
    for name, param in (("nq", "num_queries"), ("lambda1", "lambda1")):
        for variant in ("vggsound", "landscape", "animal_kingdom", "toy", "runlocal"):
            c = _cfg(name, variant)
            assert c.param == param and len(c.param_values) >= 2, (name, variant)
            assert c.processes.mode == "mesh"
    toy = _cfg("nq", "toy")
    assert tuple(toy.param_values) == (1, 2, 4, 8) and toy.training.total_steps == 1500
    assert tuple(_cfg("lambda1", "toy").param_values) == (0.0, 0.5, 0.9, 1.0)
    full = _cfg("nq", "vggsound")
    assert tuple(full.param_values) == (1, 5, 10, 15, 20)
    assert full.training.model.unet.preset == "sd21" and full.label_accuracy.source == "dataset"
    t = ablation.training_config(full, 15)
    assert t.model.cim.num_queries == 15 and full.training.model.cim.num_queries == 10


def test_hash_ignores_cadence_and_follows_training(tmp_path):
    cfg = _cfg()
    t = ablation.training_config(cfg, 2)
    h, d = ablation.config_hash(t, 1)
    assert (
        "checkpoint" not in d and d["global_batch"] == 1 and d["model"]["cim"]["num_queries"] == 2
    )
    t2 = copy.deepcopy(t)
    t2.log_every_steps, t2.checkpoint.every_steps, t2.debug_nan_at_step = 7, 9, 3
    assert ablation.config_hash(t2, 1)[0] == h
    t2.optimizer.lr = 5e-4
    assert ablation.config_hash(t2, 1)[0] != h
    assert ablation.config_hash(t, 8)[0] != h  # another global batch is another training
    cfg.overrides = "2:optimizer.lr=5e-4; 2:total_steps=6"
    o = ablation.training_config(cfg, 2)
    assert o.optimizer.lr == 5e-4 and o.total_steps == 6
    assert ablation.training_config(cfg, 1).total_steps == 4
    # an override of value 2 changes value 2's hash only: a rerun retrains value 2 alone
    plain = _cfg()
    assert ablation.config_hash(o, 1)[0] != ablation.config_hash(t, 1)[0]
    for v in (1, 4):
        a = ablation.config_hash(ablation.training_config(cfg, v), 1)[0]
        assert a == ablation.config_hash(ablation.training_config(plain, v), 1)[0]


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.param_values=(0,2)", "N_Q must be an integer >= 1"),
        ("--config.param_values=(2,2)", "duplicate values"),
        ("--config.param_values=()", "config.param_values is empty"),
        ("--config.processes.mode=ring", "config.processes.mode='ring'"),
        ("--config.processes.count=2", "index"),  # (index -1 -> 0 is fine: needs a bad one)
        ("--config.label_accuracy.source=words", "config.label_accuracy.source='words'"),
        ("--config.training.total_steps=0", "config.training.total_steps=0"),
        ("--config.training.model.unet.params=/nonexistent", "config.training.model.unet"),
        ("--config.overrides=3:total_steps=6", "3 is not a swept value"),
        ("--config.overrides=2:optimiser.lr=1", "training.optimiser.lr"),
        ("--config.overrides=2:model.cim.num_queries=3", "is the swept field"),
        ("--config.sweep.generation.mosaic.token_offset=2", "token_offset"),
    ],
)
def test_bad_config_is_one_line_before_compute(tmp_path, monkeypatch, capsys, override, message):
    extra = ["--config.processes.index=5"] if "count=2" in override else []
    argv = ["--config=configs/ablations/nq.py:runlocal", f"--workdir={tmp_path / 'w'}", override]
    assert _call(monkeypatch, argv + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "w" / "num_queries_2").exists()  # nothing trained


def test_lambda1_values_checked():
    cfg = _cfg("lambda1")
    cfg.param_values = (0.0, 1.5)
    with pytest.raises(ablation.AblationError, match="lambda1 must be a number in"):
        ablation.check(cfg, "/tmp/unused")


def test_nearest_label_exact():
    rng = np.random.default_rng(0)
    labels = rng.normal(size=(3, 2, 4))  # C = 3 labels, K = 2 columns, D = 4
    classes = np.array([0, 1, 2, 2])
    x = labels[classes][:, None] + 0.01 * rng.normal(size=(4, 2, 2, 4))  # S = 2 segments
    x[3] = labels[0]  # a class-2 clip whose tokens sit on label 0
    r = la.nearest_label(x, labels, classes)
    assert r["correct"] == 3 and r["predicted"] == [0, 1, 2, 0]
    assert r["confusion"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert r["cosine_accuracy"] == 0.75
    ctx = la.place_tokens(np.zeros((5, 4)), x, 1)
    assert (
        ctx.shape == (4, 2, 5, 4)
        and np.allclose(ctx[:, :, 1:3], x, atol=1e-6)
        and not ctx[:, :, 3:].any()
    )


def test_committed_cim_label_accuracy():
    """The README's claim for the committed CIM: its tokens are nearest their own label for
    12 of 12 held-out stems (3 per class)."""
    from maestro_jax.toy import config as toy_config
    from maestro_jax.toy import world as tw

    cfg = toy_config.cim_on_assets()
    stems, classes, labels = la.toy_stems(3, 1)
    mel = la.stem_mels(stems, tw.SR, 4.0)
    r = la.label_accuracy(cfg, toy_config.assets_dir() / "cim", mel, classes, labels)
    assert (r["correct"], r["n"], r["num_queries"], r["segments"]) == (12, 12, 4, 2)
    assert r["margin"] > 0 and 0 <= r["context"]["accuracy"] <= 1


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_study_split_kill_resume_and_override(tmp_path, monkeypatch, capsys):
    work = tmp_path / "study"
    v1, v2 = work / "num_queries_1", work / "num_queries_2"
    real_train = ablation._train
    calls: list[tuple[int, int]] = []  # (N_Q, total_steps) of every trainer call

    def counting(train_cfg, wd):
        calls.append((int(train_cfg.model.cim.num_queries), int(train_cfg.total_steps)))
        return real_train(train_cfg, wd)

    monkeypatch.setattr(ablation, "_train", counting)

    # 1. process 1 of 2 ('split'): value 2 only, no table yet (value 1 is process 0's)
    cfg = _cfg()
    cfg.processes.update(mode="split", index=1, count=2)
    res = ablation.run(cfg, work)
    assert calls == [(2, 4)] and res["pending"] == ["1"] and "table" not in res
    assert json.loads((v2 / "train.json").read_text())["state"] == "done"
    assert (v2 / "row.json").is_file() and not (work / "ablation.md").exists()
    finished = {p: _mtime(p) for p in (v2 / "train.json", v2 / "row.json", v2 / "k2_000.mp4")}

    # 2. value 1's training is killed after its step-2 checkpoint (mesh mode, both values)
    def killed(train_cfg, wd):
        short = copy.deepcopy(train_cfg)
        short.total_steps = 2
        counting(short, wd)
        raise _Stop("killed")

    monkeypatch.setattr(ablation, "_train", killed)
    with pytest.raises(_Stop):
        ablation.run(_cfg(), work)
    assert json.loads((v1 / "train.json").read_text())["state"] == "started"
    assert (v1 / "train" / "checkpoints" / "2").is_dir()

    # 3. the rerun (the command) resumes value 1 at step 2 and leaves value 2 alone
    monkeypatch.setattr(ablation, "_train", counting)
    calls.clear()
    argv = ["--config=configs/ablations/nq.py:runlocal", f"--workdir={work}",
            "--config.sweep.generation.compilation_cache="]  # fmt: skip
    assert _call(monkeypatch, argv) == 0
    assert calls == [(1, 4)]
    rec1 = json.loads((v1 / "train.json").read_text())
    assert rec1["state"] == "done" and rec1["steps"] == 4 and rec1["resumed_from"] == 2
    assert _mtime(v2 / "train.json") == finished[v2 / "train.json"]
    assert _mtime(v2 / "k2_000.mp4") == finished[v2 / "k2_000.mp4"]
    table = (work / "ablation.md").read_text()
    assert "| 1 |" in table and "| 2 |" in table and "Label acc." in table
    for f in ("ablation.json", "grid.png", "plot_placement.png", "plot_label_accuracy.png"):
        assert (work / f).is_file(), f
    body = json.loads((work / "ablation.json").read_text())
    assert [r["name"] for r in body["rows"]] == ["1", "2"] and body["failed"] == []
    assert all(r["label_accuracy"]["n"] == 4 and r["training"]["steps"] == 4 for r in body["rows"])
    assert all(0 <= r["placement"]["accuracy"] <= 1 for r in body["rows"])
    assert len(body["runs"]) == 2  # (run 2 was killed before it finished)


def test_full_size_checks_name_the_missing_folders(tmp_path):
    cfg = _cfg("nq", "vggsound")
    with pytest.raises(ablation.AblationError, match=r"training.model.unet.params is empty"):
        ablation.check(cfg, tmp_path / "w")
    for part in ("unet", "vae", "text", "imagebind"):
        cfg.training.model[part].params = str(tmp_path)
    with pytest.raises(ablation.AblationError, match=r"training.data.dir=''"):
        ablation.check(cfg, tmp_path / "w")
    cfg.training.data.dir = str(tmp_path)
    with pytest.raises(ablation.AblationError, match=r"--config.sweep.audio_dir"):
        ablation.check(cfg, tmp_path / "w")  # (the sweep's checks follow the training's)
