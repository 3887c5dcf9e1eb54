"""The toy world's training stages (`maestro_jax.toy.stages`, `configs/toy.py`) and the build
orchestration (`maestro_jax.toy.build`), at a few steps on 16 x 16 frames."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maestro_jax.checkpoints import load_params
from maestro_jax.models import vae as vae_lib
from maestro_jax.toy import config as toy
from maestro_jax.toy import layout, unet_init
from maestro_jax.toy import stages as tt


def _cfg(stage: str, root, **kw):
    c = toy.get_config(stage)
    c.root = str(root)
    if stage in ("vae", "t2i", "t2v", "t2v_layout"):
        c.update(resolution=16, batch_size=1, log_every=1, checkpoint_every=1, warmup_steps=1)
    c.update(**kw)
    return c


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """text, imagebind, vae (2 steps), t2i (2 steps), t2v from t2i (2 steps)."""
    root = tmp_path_factory.mktemp("toy")
    out = {}
    for stage, steps in (("text", 0), ("imagebind", 0), ("vae", 2), ("t2i", 2), ("t2v", 2)):
        kw = {"total_steps": steps} if steps else {}
        out[stage] = tt.train(_cfg(stage, root, **kw), root / stage)
    return root, out


def test_stages_export_loadable_folders(stages):
    root, out = stages
    for stage in ("text", "imagebind", "vae", "t2i", "t2v"):
        assert (root / stage / "export" / "params").is_dir(), stage
    _, meta = load_params(root / "text" / "export")
    assert meta["tokenizer"] == "hash" and meta["width"] == toy.CONTEXT_DIM
    _, meta = load_params(root / "t2v" / "export")
    assert meta["unet"]["temporal"] and meta["trained_frames"] == toy.NUM_FRAMES
    assert meta["prediction_type"] == "eps" and meta["schedule"] == "vc2"
    _, meta = load_params(root / "t2i" / "export")
    assert not meta["unet"]["temporal"] and meta["schedule"] == "sd21-eps"
    lines = (root / "t2i" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == [1, 2]
    assert all(np.isfinite(json.loads(ln)["loss"]) for ln in lines)


def test_t2v_starts_from_t2i_spatial_weights(stages, tmp_path):
    root, _ = stages
    c = _cfg("t2v", root, total_steps=2)
    model = tt._unet_stage(c, temporal=True)
    params = model[0]
    src, _ = load_params(root / "t2i" / "export")
    # a spatial tensor copied from the 2D UNet, and a temporal one the 2D UNet does not have
    a = params["input_blocks_1_1"]["proj_in"]["kernel"]
    np.testing.assert_array_equal(
        np.asarray(a), np.asarray(src["input_blocks_1_1"]["proj_in"]["kernel"])
    )
    assert "init_attn" in params and "init_attn" not in src
    # every 2D tensor lands somewhere: the 3D middle block's ResBlock after its temporal layer
    _, n = unet_init.overlay_spatial(params, src)
    assert n == len(jax.tree.leaves(src))
    np.testing.assert_array_equal(
        np.asarray(params["middle_block_3"]["in_layers_2"]["kernel"]),
        np.asarray(src["middle_block_2"]["in_layers_2"]["kernel"]),
    )


def test_t2v_layout_fine_tunes_the_t2v_export(stages, tmp_path):
    root, _ = stages
    c = _cfg("t2v_layout", root, total_steps=1, p_uncond=0.0, p_layout=1.0)
    assert c.task == "t2v" and c.separate_objects and len(c.object_counts) == 5
    params = tt._unet_stage(c, temporal=True)[0]
    src, _ = load_params(root / "t2v" / "export")
    # every tensor, temporal ones included, starts from the T2V export
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(src)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    out = tt.train(c, tmp_path / "t2v_layout")
    assert out["step"] == 1 and (tmp_path / "t2v_layout" / "export" / "params").is_dir()
    # a video model of another shape is named, not silently half-loaded
    c2 = _cfg("t2v_layout", root, total_steps=1)
    c2.unet.model_channels = 64
    with pytest.raises(ValueError, match="another shape"):
        tt._unet_stage(c2, temporal=True)


def test_resume_continues_the_step_count(stages, tmp_path):
    root, _ = stages
    c = _cfg("vae", root, total_steps=1)
    tt.train(c, tmp_path / "vae")
    c = _cfg("vae", root, total_steps=3)
    out = tt.train(c, tmp_path / "vae")
    steps = [
        json.loads(ln)["step"]
        for ln in (tmp_path / "vae" / "metrics.jsonl").read_text().splitlines()
    ]
    assert out["step"] == 3 and steps == [1, 2, 3]


def test_vae_latent_rescale_is_exact():
    cfg = vae_lib.VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=16)
    model = vae_lib.AutoencoderKL(cfg)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)), jnp.float32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), x[:1])["params"]
    p = tt.random_like(abstract, 0)
    q = tt.rescale_vae_latents(model, p, {"x": x})
    enc = lambda prm: model.apply({"params": prm}, x, method=model.encode)
    dec = lambda prm, z: model.apply({"params": prm}, z, method=model.decode)
    zp, zq = vae_lib.posterior_mean(enc(p)), vae_lib.posterior_mean(enc(q))
    assert float(jnp.std(zq)) == pytest.approx(1.0 / vae_lib.SCALE_FACTOR, rel=1e-4)
    c = float(jnp.std(zq) / jnp.std(zp))
    np.testing.assert_allclose(zq, c * zp, rtol=1e-4, atol=1e-4)
    # the decoder sees the same thing: decode(c z) with q == decode(z) with p
    np.testing.assert_allclose(dec(q, zq), dec(p, zp), rtol=1e-4, atol=1e-4)
    # the posterior's std scales by c too (logvar + 2 log c)
    lq, lp = vae_lib.posterior_logvar(enc(q)), vae_lib.posterior_logvar(enc(p))
    np.testing.assert_allclose(lq - lp, 2 * np.log(c), atol=1e-3)


def test_bad_configs_are_named(tmp_path):
    c = _cfg("t2i", tmp_path)
    with pytest.raises(ValueError, match="vae_dir"):
        tt.train(c, tmp_path / "w")
    c = _cfg("vae", tmp_path, task="nope")
    with pytest.raises(ValueError, match="config.task"):
        tt.train(c, tmp_path / "w")
    with pytest.raises(ValueError, match="unknown toy variant"):
        toy.get_config("t2x")


def test_root_moves_every_path():
    c = toy.get_config("t2v")
    c.root = "/x/y"
    assert c.vae_dir == "/x/y/vae/export" and c.init_from == "/x/y/t2i/export"
    c = toy.get_config("t2v_layout")
    c.root = "/x/y"
    assert c.init_from == "/x/y/t2v/export" and 0 < c.p_layout <= 1
    c = toy.get_config("cim")
    c.root = "/x/y"
    assert c.model.unet.params == "/x/y/t2i/export"
    assert c.model.imagebind.params == "/x/y/imagebind/export"


def _project(ctx, heads=2, dh=4, seed=0):
    """A fixed random linear k/v projection [..., L, D] -> ([..., L, H, dh], same)."""
    d = ctx.shape[-1]
    wk, wv = jax.random.normal(jax.random.key(seed), (2, d, heads * dh))
    k = (ctx @ wk).reshape(*ctx.shape[:-1], heads, dh)
    v = (ctx @ wv).reshape(*ctx.shape[:-1], heads, dh)
    return k, v


def test_layout_edit_is_mosaic_denoising_per_entry():
    """LayoutEdit on a layout-trained entry computes exactly what Mosaic Denoising (background
    'null') computes at generation with the same boxes and C_sep; a plain entry is plain
    attention on its caption."""
    from maestro_jax import mosaic

    rng = np.random.default_rng(0)
    f, length, d, res = 2, 7, 8, ((8, 8), (4, 4))
    null = rng.normal(size=(length, d)).astype(np.float32)
    cls = np.array([[2, 0, -1], [1, -1, -1]])
    boxes = np.zeros((2, 3, 4), np.float32)
    boxes[0, 0], boxes[0, 1] = (0.05, 0.1, 0.45, 0.6), (0.5, 0.4, 0.95, 0.9)
    boxes[1, 0] = (0.2, 0.2, 0.7, 0.7)
    table = {c: rng.normal(size=(length, d)).astype(np.float32) for c in ["x", "y"]}
    labels = __import__("maestro_jax.toy.world", fromlist=["labels"]).labels()
    for lab in labels:
        table[lab] = rng.normal(size=(length, d)).astype(np.float32)

    def cap(cs):
        return np.stack([table[c] for c in cs])

    slots, assigns = layout.layout_slots(
        cap, null, ["x", "y"], cls, boxes, np.array([True, False]), res, n_q=2
    )
    assert slots.shape == (2, 5, length, d) and [a.shape for a in assigns] == [(2, 64), (2, 16)]
    # object slots: C_sep's layout (label columns 1..2, null elsewhere); then null, caption
    np.testing.assert_array_equal(slots[0, 0, 1:3], table[labels[2]][1:3])
    np.testing.assert_array_equal(slots[0, 0, 3:], null[3:])
    np.testing.assert_array_equal(slots[0, 3], null)
    np.testing.assert_array_equal(slots[1, 4], table["y"])
    assert np.all(assigns[0][1] == 4) and set(np.unique(assigns[0][0])) == {0, 1, 3}
    # merge: the plain slot holds C_merge (label columns side by side), the layout is unchanged
    slots_m, assigns_m = layout.layout_slots(
        cap, null, ["x", "y"], cls, boxes, np.array([True, False]), res, n_q=2,
        merge=np.array([False, True]),
    )  # fmt: skip
    np.testing.assert_array_equal(slots_m[1, 4, 1:3], table[labels[1]][1:3])
    np.testing.assert_array_equal(slots_m[1, 4, 3:], null[3:])
    np.testing.assert_array_equal(slots_m[0], slots[0])
    for a, a_m in zip(assigns, assigns_m):
        np.testing.assert_array_equal(a, a_m)

    q = jnp.asarray(rng.normal(size=(2 * f, 64, 2, 4)), jnp.float32)
    plain_ctx = jnp.asarray(np.repeat(slots[:, 4], f, axis=0))
    edit = layout.LayoutEdit(jnp.asarray(slots), tuple(map(jnp.asarray, assigns)), res, f)
    out = edit(q, plain_ctx, _project, scale=0.5, hw=(8, 8))

    c_sep = jnp.asarray(np.broadcast_to(slots[0, :2, None], (2, f, length, d)))
    ref_edit = mosaic.make_edit(
        "mosaic", boxes=[tuple(map(float, b)) for b in boxes[0, :2]], c_merge=c_sep[0],
        c_sep=c_sep, null_emb=null, n_q=2, resolutions=res, num_frames=f,
        edit_rows=[True], options=mosaic.MosaicOptions(background="null"),
    )  # fmt: skip
    ref = ref_edit(q[:f], plain_ctx[:f], _project, scale=0.5, hw=(8, 8))
    np.testing.assert_allclose(np.asarray(out[:f]), np.asarray(ref), rtol=1e-6, atol=1e-6)
    from maestro_jax.nn.attention import dot_product_attention

    k, v = _project(plain_ctx[f:])
    plain = dot_product_attention(q[f:], k, v, scale=0.5)
    np.testing.assert_allclose(np.asarray(out[f:]), np.asarray(plain), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"lr": -1.0}, "config.lr=-1.0: must be > 0"),
        ({"total_steps": -5}, "config.total_steps=-5: must be an integer >= 1"),
        ({"batch_size": 0}, "config.batch_size=0: must be an integer >= 1"),
        ({"warmup_steps": -1}, "config.warmup_steps=-1: must be an integer >= 0"),
    ],
)
def test_bad_numbers_are_named_before_compute(tmp_path, change, message):
    from maestro_jax.training.validate import ConfigError

    c = _cfg("vae", tmp_path, **change)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        tt.train(c, tmp_path / "w")
    assert not (tmp_path / "w").exists()
