"""Data-dependent initialisation of the toy separator (ResUNet30): BatchNorm statistics
calibrated on one training batch, and a mask head that starts at the mixture's phase."""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

BN0_VAR_FLOOR = 0.01  # BatchNorm calibration: variance floor relative to the mean over channels


def calibrate_batch_stats(
    model: Any, params: Any, batch_stats: Any, mixture: jax.Array, condition: jax.Array
) -> Any:
    """Data-dependent BatchNorm statistics for a freshly initialised ResUNet30.

    The separator's BatchNorms only run in inference mode, so without this every running
    mean/var is 0/1 and the activations of a random tiny ResUNet30 grow ~x3 per block (std
    ~1e4 at the decoder's end): the magnitude mask saturates at 0 and L1 training stalls there.
    Layer by layer in execution order (`_bn_order`), one forward pass per BatchNorm: record the
    layer's output, invert it to its input (x = (y - bias) / scale * sqrt(var + eps) + mean)
    and set mean/var to that input's per-channel moments (variance floored at `BN0_VAR_FLOOR`
    x its mean over channels, so that silent STFT bins are not blown up). Updating all layers
    at once from one pass diverges (each layer's moments were measured before the layers in
    front of it were normalised).
    """
    from maestro_jax.models.audiosep import BN_EPS

    bn_outputs = _bn_outputs(model)

    def outputs(bs):
        return bn_outputs(params, bs, mixture, condition)

    def paths(tree, prefix=()):
        for k, v in tree.items():
            if k == "__call__":
                yield prefix, v[0]
            elif isinstance(v, dict):
                yield from paths(v, (*prefix, k))

    def get(tree, path):
        for k in path:
            tree = tree[k]
        return tree

    bs = jax.tree.map(np.asarray, batch_stats)
    order = sorted((path for path, _ in paths(outputs(bs))), key=_bn_order)
    for path in order:
        y = np.asarray(get(outputs(bs), path)["__call__"][0], np.float64)
        p = jax.tree.map(np.asarray, get(params, path))
        s = get(bs, path)
        x = (y - p["bias"]) / p["scale"] * np.sqrt(s["var"] + BN_EPS) + s["mean"]
        axes = tuple(range(x.ndim - 1))
        var = x.var(axis=axes)
        var = np.maximum(var, BN0_VAR_FLOOR * var.mean() + 1e-8)
        bs = jax.tree.map(np.asarray, bs)  # a fresh tree: `outputs` is traced on values
        dst = get(bs, path)
        dst["mean"] = x.mean(axis=axes).astype(np.float32)
        dst["var"] = var.astype(np.float32)
    return jax.tree.map(jnp.asarray, bs)


def _bn_outputs(model: Any):
    from maestro_jax.models.audiosep import BatchNormInference

    @jax.jit
    def fn(params, bs, mixture, condition):
        _, state = model.apply(
            {"params": params, "batch_stats": bs},
            mixture,
            condition,
            capture_intermediates=lambda mdl, _: isinstance(mdl, BatchNormInference),
            mutable=["intermediates"],
        )
        return state["intermediates"]

    return fn


def _bn_order(path: tuple[str, ...]) -> tuple:
    """Execution order of ResUNet30's BatchNorms: bn0, encoder_block1..6, conv_block7a,
    decoder_block1..6; inside a block 'bn1' < 'conv_block*/bn1' < 'conv_block*/bn2'."""
    top = path[0]
    if top == "bn0":
        return (0, 0, path[1:])
    m = re.fullmatch(r"(encoder_block|conv_block|decoder_block)(\d+)a?", top)
    if m is None:
        raise ValueError(f"unexpected BatchNorm {'/'.join(path)} in ResUNet30")
    group = {"encoder_block": 1, "conv_block": 2, "decoder_block": 3}[m.group(1)]
    return (group, int(m.group(2)), path[1:])


def phase_identity_init(params: Any, kernel_scale: float = 0.1) -> Any:
    """Start the mask head at "keep the mixture's phase, half its magnitude".

    `after_conv` gives three logits per bin: sigmoid(c0) = |M|, (tanh(c1), tanh(c2)) = the phase
    rotation. From a random init the rotation is random, the waveform L1 then only says "be
    quieter" and the separator collapses to silence (seen on the toy world). With bias (0, 3, 0)
    and a small kernel the rotation starts at ~0 rad (the mixture's phase, as an ideal ratio
    mask uses) and training shapes |M| first. Returns a copy."""
    params = jax.tree.map(lambda a: jnp.asarray(a), params)
    head = dict(params["after_conv"])
    head["kernel"] = head["kernel"] * kernel_scale
    head["bias"] = jnp.asarray([0.0, 3.0, 0.0], jnp.float32)
    return {**params, "after_conv": head}
