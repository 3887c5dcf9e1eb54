"""python -m convert.clip_text SRC OUT [--heads N] [--hf_trimmed 1] [--trust_pickle]: a CLIP text
tower (open_clip / LDM or diffusers / HF layout) -> an orbax params folder (see
`convert.clip_text`)."""

from __future__ import annotations

import jax
import numpy as np
from absl import flags

from convert import cli
from convert.clip_text import convert_state_dict, detect_layout, read_source
from convert.common import ConversionError

_HEADS = flags.DEFINE_integer("heads", None, "attention heads (default: width / 64)")
_HF_TRIMMED = flags.DEFINE_integer(
    "hf_trimmed", 1, "blocks cut off the original tower in an HF/diffusers text_encoder (SD 2.x: 1)"
)
flags.declare_key_flag(cli.TRUST_PICKLE.name)


def main(argv: list[str]) -> int:
    src, out = cli.positionals(argv, "src", "out")
    cli.reject_unused(cli.TRUST_PICKLE)
    if not src.exists():
        return cli.error(f"{src} does not exist", 2)
    try:
        sd, hf_cfg = read_source(src, trust_pickle=cli.TRUST_PICKLE.value)
        heads = _HEADS.value or hf_cfg.get("num_attention_heads")
        act = hf_cfg.get("hidden_act", "gelu")
        if act != "gelu":
            raise ConversionError(f"hidden_act {act!r}: only exact GELU ('gelu') is supported")
        layout, _ = detect_layout(sd)
        params, config = convert_state_dict(sd, heads=heads, hf_trimmed=_HF_TRIMMED.value)
        if hf_cfg.get("layer_norm_eps", 1e-5) != config.ln_eps:
            raise ConversionError(f"layer_norm_eps {hf_cfg['layer_norm_eps']} != {config.ln_eps}")
    except ConversionError as e:
        return cli.error(f"{src}: {e}")
    del sd
    from maestro_jax.checkpoints import save_params

    meta = {**config.to_dict(), "model": "clip_text", "layout": layout, "source": str(src)}
    save_params(out, params, meta, compress=False)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    print(f"wrote {out}: {layout} layout, {config.layers} blocks, {n:,} parameters")
    return 0


if __name__ == "__main__":
    cli.run(main)
