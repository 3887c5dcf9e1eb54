"""CIM training (maestro_jax.training / maestro_jax.train): loss pieces, the runlocal loop on the
8-device CPU mesh, bit-exact resume, the non-finite stop, the CLI contract, metrics files.

Compiles are the cost here, so the runs share them: the CLI subprocess (runlocal as shipped,
8 x 1 mesh, 20 steps) runs in the background while the in-process runs (4 x 2 mesh with FSDP;
later runs load the compiled step from the session's persistent compilation cache, see
conftest.py) train 20 steps straight, then stop at step 10 and resume to 20, then continue
into an injected NaN. The CLI run and the
straight run agree across meshes; the resumed run reproduces the straight one bit for bit.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maestro_jax.models import tokenizer
from maestro_jax.models.tokenizer import HashTokenizer
from maestro_jax.training import cim as training
from maestro_jax.training import cim_loss, cim_state, optim
from maestro_jax.training import tensorboard as tb
from maestro_jax.training.cim_config import VARIANTS, get_config

REPO = Path(__file__).resolve().parents[1]


def _config(data_dir: Path, **kw):
    c = get_config("runlocal")
    c.mesh.shape = (4, 2)
    c.data.dir = str(data_dir)
    c.sample.every_steps = 0
    for k, v in kw.items():
        node = c
        *head, last = k.split(".")
        for h in head:
            node = node[h]
        node[last] = v
    return c


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from maestro_jax.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("train")
    c0 = get_config("runlocal")
    data_dir = root / "data"
    write_synthetic_dataset(
        data_dir,
        num_clips=c0.data.synthetic_clips,
        resolution=c0.data.synthetic_resolution,
        num_classes=c0.data.synthetic_classes,
        seed=c0.seed,
        frames_rule=c0.frames.rule,
        num_test=c0.sample.num_clips,
    )
    # The CLI contract run: runlocal as shipped (8 x 1 mesh, replicated), 20 steps, in the
    # background while the in-process runs go on.
    cli_dir = root / "cli"
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    cmd = [
        sys.executable,
        "-m",
        "maestro_jax.train",
        "--config=configs/cim.py:runlocal",
        f"--workdir={cli_dir}",
        "--config.total_steps=20",
        f"--config.data.dir={data_dir}",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        # In-process on a 4 x 2 mesh with FSDP frozen params (one compiled step shared by every
        # run): uninterrupted to 20; stop at 10 and resume to 20; continue into a NaN.
        straight_dir = root / "straight"
        training.train(_config(data_dir, total_steps=20), straight_dir)
        split_dir = root / "split"
        out10 = training.train(_config(data_dir, total_steps=10), split_dir)
        ckpt_steps_10 = sorted(int(p.name) for p in (split_dir / "checkpoints").iterdir())
        out20 = training.train(_config(data_dir, total_steps=20), split_dir)
        split = _records(split_dir)
        # Continue to 25 with a NaN injected at step 23: stops, nothing saved after step 20.
        with pytest.raises(training.NonFiniteError) as nan_err:
            training.train(_config(data_dir, total_steps=25, debug_nan_at_step=23), split_dir)
        after_nan = _records(split_dir)
        nan_ckpts = sorted(int(p.name) for p in (split_dir / "checkpoints").iterdir())
        stdout, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    return {
        "cli_dir": cli_dir,
        "cli_rc": proc.returncode,
        "cli_out": stdout,
        "cli": _records(cli_dir) if (cli_dir / "metrics.jsonl").exists() else [],
        "split_dir": split_dir,
        "split": split,
        "out10": out10,
        "out20": out20,
        "ckpt_steps_10": ckpt_steps_10,
        "nan_err": str(nan_err.value),
        "after_nan": after_nan,
        "nan_ckpts": nan_ckpts,
        "straight": _records(straight_dir),
    }


# ---------------------------------------------------------------------------------- the loop
def test_cli_contract(runs):
    assert runs["cli_rc"] == 0, runs["cli_out"][-3000:]
    recs = runs["cli"]
    assert [r["step"] for r in recs] == list(range(1, 21))
    for r in recs:
        for k in ("loss", "loss_sd", "loss_sd_aug", "loss_mse", "loss_mse_aug", "grad_norm"):
            assert math.isfinite(r[k]), (k, r)
        assert r["lr"] == pytest.approx(1e-3)
        assert r["samples_per_s_per_device"] > 0
    # sample images at steps 10 and 20 (runlocal sample.every_steps = 10)
    pngs = sorted(p.name for p in (runs["cli_dir"] / "samples").iterdir())
    assert pngs == ["step_0000010.png", "step_0000020.png"]
    from maestro_jax.video import read_png

    img = read_png(runs["cli_dir"] / "samples" / pngs[0])
    assert img.ndim == 3 and img.shape[2] == 3 and img.std() > 0


def test_loss_decreases(runs):
    loss = np.array([r["loss"] for r in runs["straight"]])
    mse = np.array([r["loss_mse"] for r in runs["straight"]])
    assert loss[-5:].mean() < loss[:5].mean(), loss
    assert mse[-1] < mse[0], mse


def test_loss_is_the_formula(runs):
    lam = get_config("runlocal").lambda1
    for r in runs["cli"]:
        want = lam * (r["loss_sd"] + r["loss_sd_aug"]) + (1 - lam) * (
            r["loss_mse"] + r["loss_mse_aug"]
        )
        assert r["loss"] == pytest.approx(want, rel=1e-6)
        # SpecAugment is on in runlocal: A' differs from A
        assert r["loss_mse"] != r["loss_mse_aug"]


def test_resume_reproduces_bitwise(runs):
    assert runs["out10"]["step"] == 10 and runs["out20"]["step"] == 20
    assert runs["ckpt_steps_10"] == [5, 10]  # every 5 steps, keep 2
    split, straight = runs["split"], runs["straight"]
    assert [r["step"] for r in split] == list(range(1, 21))
    keys = ("loss", "loss_sd", "loss_sd_aug", "loss_mse", "loss_mse_aug", "grad_norm", "param_norm")
    for a, b in zip(split, straight):
        for k in keys:
            assert a[k] == b[k], (a["step"], k, a[k], b[k])  # exact, bit for bit


def test_sharding_does_not_change_numbers(runs):
    """8 x 1 replicated (the CLI) vs 4 x 2 with FSDP frozen params (in-process)."""
    for a, b in zip(runs["straight"][:3], runs["cli"][:3]):
        for k in ("loss", "loss_sd", "loss_mse", "grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-5), (k, a[k], b[k])


def test_nan_stops_with_last_good_checkpoint(runs):
    assert "step 23" in runs["nan_err"] and "not finite" in runs["nan_err"]
    assert runs["nan_ckpts"][-1] == 20  # nothing saved after the last good checkpoint
    assert [r["step"] for r in runs["after_nan"]] == list(range(1, 23))
    # the good state resumes: a plain restore of step 20 works and matches what was trained
    from maestro_jax.training.checkpoints import TrainCheckpointer

    ck = TrainCheckpointer(runs["split_dir"] / "checkpoints", async_save=False)
    try:
        assert ck.latest_step() == 20
        cfg = json.loads((ck.directory / "20" / "config" / "metadata").read_text())
        assert cfg["total_steps"] == 20
        assert (ck.directory / "20" / "data" / "process_0-of-1.json").exists()
    finally:
        ck.close()


def test_cli_exit_status_on_nan(tmp_path, monkeypatch):
    """`main` maps NonFiniteError to exit status 3 (the run itself is covered above)."""
    from maestro_jax import cli

    train_cli = cli.load_command("maestro_jax.train")

    def fail(config, workdir):
        raise training.NonFiniteError("step 3: loss=nan grad_norm=nan is not finite")

    monkeypatch.setattr(training, "train", fail)
    monkeypatch.chdir(REPO)
    argv = ["--config=configs/cim.py:runlocal", f"--workdir={tmp_path}"]
    assert cli.call(train_cli.main, argv) == 3


def test_tensorboard_events(runs):
    files = list((runs["cli_dir"] / "tb").glob("events.out.tfevents.*"))
    assert len(files) == 1
    events = tb.read_events(files[0])
    assert events[0]["file_version"] == "brain.Event:2"
    scalars = {e["step"]: e["values"] for e in events[1:] if "train/loss" in e.get("values", {})}
    assert sorted(scalars) == list(range(1, 21))
    for r in runs["cli"]:
        assert scalars[r["step"]]["train/loss"] == pytest.approx(r["loss"], rel=1e-6)
        assert "train/grad_norm" in scalars[r["step"]] and "train/lr" in scalars[r["step"]]
    images = [e for e in events if "samples" in e.get("values", {})]
    assert [e["step"] for e in images] == [10, 20]
    png = images[0]["values"]["samples"]["png"]
    assert png.startswith(b"\x89PNG")


# ---------------------------------------------------------------------------------- pieces
def test_tb_writer_roundtrip(tmp_path):
    assert tb.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    w = tb.SummaryWriter(tmp_path)
    w.scalar("a", 1.5, 3)
    w.scalars({"b": -2.0, "c": 1e-3}, 2**40)
    w.image("img", b"\x89PNGxyz", 4, 5, 7)
    w.close()
    ev = tb.read_events(w.path)
    assert ev[1]["step"] == 3 and ev[1]["values"] == {"a": 1.5}
    assert ev[2]["step"] == 2**40 and ev[2]["values"]["b"] == -2.0
    assert ev[3]["values"]["img"] == {
        "height": 4,
        "width": 5,
        "colorspace": 3,
        "png": b"\x89PNGxyz",
    }
    raw = bytearray(w.path.read_bytes())
    raw[-5] ^= 1
    w.path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="CRC"):
        tb.read_events(w.path)


def test_interpolation_and_frame_mapping():
    x = jnp.arange(3 * 2 * 1, dtype=jnp.float32).reshape(1, 3, 2, 1)  # S = 3 sets
    y = cim_loss.interpolate_token_sets(x)
    want = np.stack([x[0, 0], (x[0, 0] + x[0, 1]) / 2, x[0, 1], (x[0, 1] + x[0, 2]) / 2, x[0, 2]])
    np.testing.assert_array_equal(np.asarray(y[0]), want)
    assert cim_loss.frame_token_index(5, 5).tolist() == [0, 1, 2, 3, 4]
    assert cim_loss.frame_token_index(10, 5).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert cim_loss.frame_token_index(9, 9).tolist() == list(range(9))
    spec = cim_loss.LossSpec(interpolation=True)
    assert spec.num_sets(5) == 9 and spec.frames_used(10, 5) == 9  # the release's first 9
    assert cim_loss.LossSpec().frames_used(10, 5) == 10
    with pytest.raises(ValueError, match="num_frames"):
        cim_loss.LossSpec(num_frames=12).frames_used(10, 5)


def test_training_contexts_reference():
    rng = np.random.default_rng(0)
    null = rng.normal(size=(77, 8))
    sets = rng.normal(size=(2, 3, 4, 8))
    ctx = np.asarray(cim_loss.training_contexts(jnp.asarray(null), jnp.asarray(sets), 6, 1))
    assert ctx.shape == (2, 6, 77, 8)
    for b in range(2):
        for f in range(6):
            want = null.copy()
            want[1:5] = sets[b, f * 3 // 6]
            np.testing.assert_allclose(ctx[b, f], want, rtol=1e-6)


def test_release_and_paper_configs():
    for v in VARIANTS:
        c = get_config(v)
        assert c.variant == v
        cim_loss.build_models(c)  # widths agree, text layer available
        cim_loss.LossSpec.from_config(c)
    r = get_config("release")
    assert (r.optimizer.name, r.optimizer.lr, r.optimizer.weight_decay) == ("adamw", 1e-5, 1e-2)
    assert r.total_steps == 70_000 and r.batch_size_per_device == 1
    assert r.model.text.layer == "last" and not r.spec_augment.enabled
    assert r.frames.rule == "release" and r.model.prediction_type == "v"
    p = get_config("vggsound")
    assert (p.optimizer.name, p.optimizer.lr, p.total_steps) == ("adam", 1e-4, 30_000)
    assert p.model.text.layer == "penultimate" and p.spec_augment.enabled and p.lambda1 == 0.9
    assert p.token_offset == 1 and p.model.cim.num_queries == 10
    m = cim_loss.build_models(p)
    assert m.cim.depth == 6 and m.unet.context_dim == 1024 and not m.unet.temporal
    with pytest.raises(ValueError, match="unknown config variant"):
        get_config("nope")
    bad = get_config("runlocal")
    bad.token_offset = 75
    with pytest.raises(ValueError, match="token_offset"):
        cim_loss.build_models(bad)


def test_release_step_traces_without_specaugment():
    """The release path (no SpecAugment: one UNet pass, A' = A; interpolation; 10 frames ->
    first 9) traces to the right shapes (jax.eval_shape: nothing compiled)."""
    c = get_config("runlocal")
    c.spec_augment.enabled = False
    c.interpolation = True
    c.model.prediction_type = "eps"
    models = cim_loss.build_models(c)
    spec = cim_loss.LossSpec.from_config(c)
    tx, sched = optim.make_optimizer(c)
    step = cim_loss.make_train_step(models, spec, tx, sched, 0)
    init = cim_state.cim_init_fn(models, tx)
    state = jax.eval_shape(init, jax.random.key(0))
    frozen = {
        k: jax.eval_shape(lambda key, m=m, i=i: m.init(key, *i)["params"], jax.random.key(0))
        for k, (m, i) in cim_state.frozen_spec(models).items()
    }
    frozen["null_emb"] = jax.ShapeDtypeStruct((77, 32), jnp.float32)
    frozen["label_emb"] = jax.ShapeDtypeStruct((3, 77, 32), jnp.float32)
    batch = {
        "mel": jax.ShapeDtypeStruct((2, 5, 128, 204), jnp.float32),
        "label_index": jax.ShapeDtypeStruct((2,), jnp.int32),
        "latents": jax.ShapeDtypeStruct((2, 10, 8, 8, 4), jnp.float32),
    }
    new_state, metrics = jax.eval_shape(step, state, batch, frozen, jnp.int32(0))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert set(metrics) >= {"loss", "loss_sd", "loss_sd_aug", "loss_mse", "loss_mse_aug", "lr"}
    # only the CIM is trained: the state holds exactly the CIM's parameters
    cim_shapes = jax.tree.map(lambda x: x.shape, state["params"])
    from maestro_jax.models.cim import init_shapes

    assert cim_shapes == jax.tree.map(lambda x: x.shape, init_shapes(models.cim))


def test_hash_tokenizer_is_fixed():
    tok = HashTokenizer()
    a = tok(["dog barking", ""])
    assert a.shape == (2, 77) and a.dtype == np.int32
    assert a[0, 0] == tokenizer.SOT_ID and a[0, 3] == tokenizer.EOT_ID and a[0, 4:].sum() == 0
    assert a[1, :2].tolist() == [tokenizer.SOT_ID, tokenizer.EOT_ID]
    np.testing.assert_array_equal(a, tok(["dog barking", ""]))


# ---------------------------------------------------------------------------------- bad configs
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("total_steps", -5, "config.total_steps=-5: must be an integer >= 1"),
        ("optimizer.lr", -1.0, "config.optimizer.lr=-1.0: must be > 0"),
        ("batch_size_per_device", -2, "config.batch_size_per_device=-2: must be an integer >= 1"),
        ("schedule.warmup_steps", -1, "config.schedule.warmup_steps=-1: must be an integer >= 0"),
        ("optimizer.name", "sgd", "config.optimizer.name='sgd': must be one of 'adam', 'adamw'"),
        ("model.unet.preset", "sd15", "config.model.unet.preset='sd15': must be one of"),
    ],
)
def test_bad_config_is_named_before_compute(tmp_path, field, value, message):
    import re

    from maestro_jax.training.validate import ConfigError

    c = get_config("runlocal")
    *head, last = field.split(".")
    node = c
    for h in head:
        node = node[h]
    node[last] = value
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        training.train(c, tmp_path / "w")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "w").exists()  # nothing written, nothing computed


def test_cli_bad_config_and_override_are_one_line(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cases = [
        ("--config.total_steps=-5", "error: config.total_steps=-5: must be an integer >= 1"),
        ("--config.stepz=10", "error: --config.stepz: the config has no field 'stepz'"),
    ]
    for arg, want in cases:
        r = subprocess.run(
            [sys.executable, "-m", "maestro_jax.train", "--config=configs/cim.py:runlocal",
             f"--workdir={tmp_path / 'w'}", arg],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert r.returncode == 2, r.stderr[-2000:]
        assert "Traceback" not in r.stderr and want in r.stderr.splitlines(), r.stderr[-2000:]
    assert not (tmp_path / "w").exists()
