"""python -m convert.i3d SRC OUT [--layout auto|hassony2|piergiaj] [--num_classes 400]
[--bn_eps 1e-3] [--trust_pickle]: an I3D state dict (hassony2 or VideoGPT/piergiaj key names)
-> OUT (orbax params + config.json). See `convert.i3d` for the layouts and the epsilon choice."""

from __future__ import annotations

from absl import flags

from convert import cli
from convert.common import ConversionError, load_state_dict
from convert.i3d import LAYOUTS, convert_i3d_layout
from maestro_jax.checkpoints import save_params
from maestro_jax.models.i3d import BN_EPS, I3DConfig

_LAYOUT = flags.DEFINE_enum(
    "layout", "auto", ["auto", *LAYOUTS], "key naming of SRC (default: detected from the keys)"
)
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 400, "logits size")
_BN_EPS = flags.DEFINE_float(
    "bn_eps",
    BN_EPS,
    f"BatchNorm epsilon (default {BN_EPS:g}: TF-Hub / hassony2, the FVD reference). 1e-5 "
    "reproduces VideoGPT / cd-fvd features of i3d_pretrained_400.pt; stored in config.json",
)
flags.declare_key_flag(cli.TRUST_PICKLE.name)


def main(argv: list[str]) -> int:
    src, out = cli.positionals(argv, "src", "out")
    cli.reject_unused(cli.TRUST_PICKLE)
    if not _BN_EPS.value > 0:
        return cli.error(f"--bn_eps must be > 0, got {_BN_EPS.value}", 2)
    if not src.is_file():
        return cli.error(f"{src} not found", 2)
    try:
        sd = load_state_dict(src, trust_pickle=cli.TRUST_PICKLE.value)
        config = I3DConfig(num_classes=_NUM_CLASSES.value, bn_eps=_BN_EPS.value)
        params, layout = convert_i3d_layout(sd, config, _LAYOUT.value)
    except ConversionError as e:
        return cli.error(f"{src}: {e}")
    meta = {"model": "i3d", "source": str(src), "layout": layout, **config.to_dict()}
    save_params(out, params, meta)
    print(f"wrote {out} (layout {layout}, bn_eps {config.bn_eps:g})")
    return 0


if __name__ == "__main__":
    cli.run(main)
