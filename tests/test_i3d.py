"""The FVD network's converter (`convert.i3d`): the `i3d` fixture (hassony2 `I3D`, full size,
random float16 weights) in both key layouts, strictness of the conversion, and the BN epsilon
carried from the CLI into the converted folder and back into the FVD feature extractor."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest

from convert import i3d as ci3d
from convert.common import ConversionError, flatten
from maestro_jax import cli
from maestro_jax.models.i3d import BN_EPS, I3DConfig, tiny_config
from tests.conftest import load_command


def test_i3d_fixture_both_layouts(fixtures_dir):
    """Full-size forward on 2 x 16 x 224 x 224 (about 20 s on CPU), once per key layout."""
    checks = ci3d.verify_i3d(fixtures_dir / "i3d")
    bad = [(c.name, c.errors()) for c in checks if not c.passed()]
    assert not bad, bad
    names = {c.name for c in checks}
    for layout in ci3d.LAYOUTS:
        for out in ("out_logits", "out_probs", "out_pool", "out_mixed_5c"):
            assert f"{out}[{layout}]" in names, (out, layout)
        assert f"layout detected as {layout}" in names
    tols = {c.name: c.tol for c in checks}
    assert tols["out_logits[piergiaj]"] == 1e-5 and tols["out_mixed_5c[hassony2]"] == 5e-5


def _torch_state_dict(cfg: I3DConfig, layout: str, seed: int = 0, dtype=np.float32) -> dict:
    """A random state dict of `InceptionI3d(cfg)` in `layout`'s torch naming and shapes."""
    rng = np.random.default_rng(seed)
    target = flatten(ci3d.target_params(cfg))
    sd = {}
    for path, (key, _) in ci3d.i3d_table(cfg, layout).items():
        shape = target[path].shape
        if path.endswith("conv/kernel"):  # flax (kt, kh, kw, I, O) -> torch (O, I, kt, kh, kw)
            shape = (shape[4], shape[3], *shape[:3])
        sd[key] = rng.normal(size=shape).astype(dtype)
        if key.endswith("running_var"):
            sd[key] = np.abs(sd[key]) + 0.5
            sd[key.replace("running_var", "num_batches_tracked")] = np.zeros((), np.int64)
    return sd


def test_layouts_convert_to_the_same_params():
    cfg = tiny_config()
    h = _torch_state_dict(cfg, "hassony2", dtype=np.float16)
    assert "conv3d_1a_7x7.batch3d.weight" in h and "mixed_5b.branch_1.1.conv3d.weight" in h
    assert "conv3d_0c_1x1.conv3d.bias" in h and "mixed_3b.branch_3.1.batch3d.running_var" in h
    tr = {"conv3d_0c_1x1": "logits", "batch3d": "bn", "branch_0": "b0", "branch_3.1": "b3b"}
    tr |= {f"branch_{i}.{j}": f"b{i}{'ab'[j]}" for i in (1, 2) for j in (0, 1)}

    def rename(k):
        for a, b in tr.items():
            k = k.replace(a, b)
        return k[0].upper() + k[1:] if k[0] in "cm" else k

    p = {rename(k): v for k, v in h.items()}
    assert "Mixed_5b.b1b.conv3d.weight" in p and "logits.conv3d.bias" in p
    assert set(p) - {k for k in p if "num_batches" in k} == ci3d.layout_keys(cfg, "piergiaj")
    assert ci3d.detect_layout(h, cfg) == "hassony2" and ci3d.detect_layout(p, cfg) == "piergiaj"
    ph, lh = ci3d.convert_i3d_layout(h, cfg)
    pp, lp = ci3d.convert_i3d_layout(p, cfg, "piergiaj")
    assert (lh, lp) == ("hassony2", "piergiaj")
    fh, fp = flatten(ph), flatten(pp)
    assert set(fh) == set(fp)
    for k in fh:
        assert fh[k].dtype == np.float32, k  # float16 checkpoints are cast
        np.testing.assert_array_equal(fh[k], fp[k])
    np.testing.assert_array_equal(
        fh["Mixed_4c/b2b/conv/kernel"],
        h["mixed_4c.branch_2.1.conv3d.weight"].astype(np.float32).transpose(2, 3, 4, 1, 0),
    )


def test_missing_unknown_and_foreign_keys_are_refused():
    cfg = tiny_config()
    sd = _torch_state_dict(cfg, "hassony2")
    bad = dict(sd)
    del bad["mixed_4c.branch_2.1.conv3d.weight"]
    with pytest.raises(
        ConversionError, match="missing key in checkpoint: mixed_4c.branch_2.1.conv3d"
    ):
        ci3d.convert_i3d(bad, cfg)
    bad = dict(sd, **{"mixed_4c.branch_2.2.conv3d.weight": np.zeros((1,), np.float32)})
    with pytest.raises(ConversionError) as e:
        ci3d.convert_i3d(bad, cfg)
    msg = str(e.value)
    assert "unexpected key in checkpoint: mixed_4c.branch_2.2.conv3d.weight" in msg
    assert "'hassony2' I3D key layout" in msg
    bad = dict(sd, **{"conv3d_0c_1x1.conv3d.bias": np.zeros((7,), np.float32)})
    with pytest.raises(ConversionError, match="shape mismatch for conv3d_0c_1x1.conv3d.bias"):
        ci3d.convert_i3d(bad, cfg)
    with pytest.raises(
        ConversionError,
        match="(?s)'piergiaj' I3D key layout.*closer to the 'hassony2'.*missing key",
    ):
        ci3d.convert_i3d(sd, cfg, layout="piergiaj")  # an explicit, wrong layout
    with pytest.raises(ConversionError, match="matches neither I3D key layout.*module.conv3d_1a"):
        ci3d.convert_i3d({f"module.{k}": v for k, v in sd.items()}, cfg)
    with pytest.raises(ConversionError, match="unknown I3D key layout 'tf'"):
        ci3d.convert_i3d(sd, cfg, layout="tf")


def test_full_key_lists_of_both_layouts(fixtures_dir):
    d = fixtures_dir / "i3d"
    assert ci3d.check_full_keys(d / "full_keys.json") == "hassony2"
    assert ci3d.check_full_keys(d / "full_keys_i3d_pretrained_400.json") == "piergiaj"
    assert len(ci3d.layout_keys(I3DConfig(), "hassony2")) == 287


def test_bn_eps_default_and_cli_flag_reach_the_fvd_extractor(fixtures_dir, tmp_path, capsys):
    from maestro_jax.evaluation import networks as evaluate

    assert BN_EPS == 1e-3 and I3DConfig().bn_eps == 1e-3
    src = fixtures_dir / "i3d" / "state_dict.safetensors"  # hassony2 naming, float16
    i3d_cmd = load_command("convert.i3d.__main__")
    assert cli.call(i3d_cmd.main, [str(src), str(tmp_path / "default")]) == 0
    assert cli.call(i3d_cmd.main, [str(src), str(tmp_path / "vgpt"), "--bn_eps", "1e-5"]) == 0
    assert "bn_eps 1e-05" in capsys.readouterr().out
    meta = json.loads((tmp_path / "default" / "config.json").read_text())
    assert meta["bn_eps"] == 1e-3 and meta["layout"] == "hassony2" and meta["num_classes"] == 400
    meta = json.loads((tmp_path / "vgpt" / "config.json").read_text())
    assert meta["bn_eps"] == 1e-5 and meta["layout"] == "hassony2"
    # the evaluation builds its I3D from the converted folder's config
    cfg = ml_collections.ConfigDict(
        dict(model="full", i3d_checkpoint=str(tmp_path / "vgpt"), fvd_batch=2, fvd_frames=16,
             fvd_size=224)
    )  # fmt: skip
    ext = evaluate._build_i3d(cfg)
    assert ext.config.bn_eps == 1e-5 and ext.settings()["bn_eps"] == 1e-5
    assert ext.config == I3DConfig(bn_eps=1e-5)
    # an explicit wrong layout fails with the key named, exit status 1
    assert cli.call(i3d_cmd.main, [str(src), str(tmp_path / "bad"), "--layout", "piergiaj"]) == 1
    assert "missing key in checkpoint: Conv3d_1a_7x7.conv3d.weight" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
