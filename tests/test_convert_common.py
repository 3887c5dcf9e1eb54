"""The strict converter machinery: missing, unexpected and mis-shaped keys are named."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convert import common
from maestro_jax.checkpoints import load_params, save_params


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(3, name="fc")(x)
        return nn.Conv(2, (3, 3), name="conv")(x[:, None, None, :].repeat(4, 1).repeat(4, 2))


def _target():
    return jax.eval_shape(_Tiny().init, jax.random.key(0), jnp.ones((1, 5)))["params"]


TABLE = {
    "fc/kernel": ("fc.weight", common.linear),
    "fc/bias": ("fc.bias", common.identity),
    "conv/kernel": ("conv.weight", common.conv2d),
    "conv/bias": ("conv.bias", common.identity),
}


def _sd():
    r = np.random.default_rng(0)
    return {
        "fc.weight": r.normal(size=(3, 5)).astype(np.float32),
        "fc.bias": r.normal(size=(3,)).astype(np.float32),
        "conv.weight": r.normal(size=(2, 3, 3, 3)).astype(np.float32),
        "conv.bias": r.normal(size=(2,)).astype(np.float32),
    }


def test_apply_table_roundtrip_and_layouts():
    sd = _sd()
    p = common.apply_table(sd, TABLE, _target())
    np.testing.assert_array_equal(p["fc"]["kernel"], sd["fc.weight"].T)
    np.testing.assert_array_equal(p["conv"]["kernel"], sd["conv.weight"].transpose(2, 3, 1, 0))


def test_errors_name_the_key():
    sd = _sd()
    del sd["fc.bias"]
    sd["extra.weight"] = np.zeros(1, np.float32)
    sd["conv.weight"] = np.zeros((2, 3, 1, 1), np.float32)
    with pytest.raises(common.ConversionError) as e:
        common.apply_table(sd, TABLE, _target())
    msg = str(e.value)
    assert "missing key in checkpoint: fc.bias" in msg
    assert "unexpected key in checkpoint: extra.weight" in msg
    assert "shape mismatch for conv.weight" in msg
    # ignored keys are not unexpected
    sd = _sd()
    sd["buffer.x"] = np.zeros(1, np.float32)
    common.apply_table(sd, TABLE, _target(), ignore=[r"buffer\..*"])


def test_check_table_against_keys_shapes_only():
    keys = {k: v.shape for k, v in _sd().items()}
    common.check_table_against_keys(keys, TABLE, _target())
    keys["fc.weight"] = (4, 5)
    with pytest.raises(common.ConversionError, match="fc.weight"):
        common.check_table_against_keys(keys, TABLE, _target())


def test_save_load_params_atomic(tmp_path):
    p = common.apply_table(_sd(), TABLE, _target())
    out = save_params(tmp_path / "ck", p, {"model": "tiny"})
    save_params(out, p, {"model": "tiny2"})  # overwrite in place
    q, cfg = load_params(out)
    assert cfg == {"model": "tiny2"}
    np.testing.assert_array_equal(q["fc"]["kernel"], p["fc"]["kernel"])
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".")]
    with pytest.raises(FileNotFoundError, match="no converted params"):
        load_params(tmp_path / "nope")


def test_apply_table_copies_only_what_needs_it():
    """A float32 leaf whose transform is the identity stays a view of the checkpoint array; a
    transposed or cast one is one fresh C-contiguous float32 array."""
    sd = _sd()
    sd["conv.bias"] = sd["conv.bias"].astype(np.float16)
    p = common.apply_table(sd, TABLE, _target())
    assert np.shares_memory(p["fc"]["bias"], sd["fc.bias"])
    for leaf, key in ((p["fc"]["kernel"], "fc.weight"), (p["conv"]["bias"], "conv.bias")):
        assert leaf.dtype == np.float32 and leaf.flags.c_contiguous
        assert not np.shares_memory(leaf, sd[key])
    np.testing.assert_array_equal(p["conv"]["bias"], sd["conv.bias"].astype(np.float32))
