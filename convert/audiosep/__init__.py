"""AudioSep checkpoint -> Flax: the ResUNet30 separator and the CLAP text query encoder.

    python -m convert.audiosep audiosep_base_4M_steps.ckpt OUT_DIR [--trust_pickle]

`audiosep_base_4M_steps.ckpt` is a Lightning checkpoint; its `state_dict` holds
- `ss_model.base.*`, `ss_model.film.*`: ResUNet30 (fixture `audiosep_resunet/`);
- `query_encoder.model.text_branch.*`, `query_encoder.model.text_projection.*`: CLAP's text
  path (fixture `clap_text/`); the rest of `query_encoder.model.*` (audio branch, transforms,
  logit scales) is not used for text queries and is not read.

Dropped by name, nothing else:
- the fixed DFT buffers `base.stft.conv_{real,imag}.weight`, `base.istft.conv_{real,imag}.weight`,
  `base.istft.ola_window` (the port uses `jnp.fft`);
- every `num_batches_tracked` (inference only);
- the decoder blocks' `bn2.*` (the original builds it, its forward never reads it);
- `text_branch.embeddings.position_ids` (a legacy buffer of transformers < 4.31).
The decoder blocks' FiLM `beta2` is kept (computed and dropped in the forward, like the original).

OUT is written with `save_params`: `{'separator': {'params', 'batch_stats'}, 'text': {'params'}}`
plus a config.json naming both configurations.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from convert import common
from convert.common import ConversionError
from convert.verify import Check
from maestro_jax.checkpoints import save_params
from maestro_jax.models import stft as stft_lib
from maestro_jax.models.audiosep import FULL_CHANNELS, ResUNet30
from maestro_jax.models.clap_text import ClapTextConfig, ClapTextEncoder

SEPARATOR_PREFIX = "ss_model."
TEXT_PREFIXES = ("query_encoder.model.", "module.")  # AudioSep ckpt / standalone CLAP ckpt
SEPARATOR_IGNORE = (
    r"base\.stft\.conv_(real|imag)\.weight",
    r"base\.istft\.conv_(real|imag)\.weight",
    r"base\.istft\.ola_window",
    r".*\.num_batches_tracked",
    r"base\.decoder_block\d+\.bn2\.(weight|bias|running_mean|running_var)",
)
TEXT_IGNORE = (r"text_branch\.embeddings\.position_ids",)

_BN_LEAVES = {
    "params/scale": "weight",
    "params/bias": "bias",
    "batch_stats/mean": "running_mean",
    "batch_stats/var": "running_var",
}


# ----------------------------------------------------------------------------- separator
def separator_target(channels=FULL_CHANNELS) -> dict:
    """Shapes of the separator variables {'params', 'batch_stats'} (no weights allocated)."""
    model = ResUNet30(channels=tuple(channels))
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 6400)), jnp.zeros((1, 512)))


def _separator_row(path: str) -> tuple[str, common.Transform]:
    """One table row: Flax variable path -> (original key without `ss_model.`, transform)."""
    col, *mods, leaf = path.split("/")
    betas = [i for i, m in enumerate(mods) if m.startswith("beta")]
    if betas:  # FiLM: <block>/[<sub>/]betaK/dense/{kernel,bias} -> film.<block>->[<sub>->]betaK
        film = "->".join(mods[: betas[0] + 1])
        return f"film.{film}.{'weight' if leaf == 'kernel' else 'bias'}", (
            common.linear if leaf == "kernel" else common.identity
        )
    base = "base." + ".".join(mods)
    if re.fullmatch(r"bn\d", mods[-1]):
        return f"{base}.{_BN_LEAVES[f'{col}/{leaf}']}", common.identity
    if leaf == "bias":
        return f"{base}.bias", common.identity
    if mods[-1] in ("pre_conv", "after_conv", "shortcut"):  # 1x1 convs held as Dense
        return f"{base}.weight", common.conv1x1_as_linear
    if re.fullmatch(r"decoder_block\d+", mods[0]) and mods[1] == "conv1":
        return f"{base}.weight", common.conv_transpose2d
    if mods[-1] in ("conv1", "conv2"):
        return f"{base}.weight", common.conv2d
    raise ConversionError(f"no rule for separator variable {path}")


def separator_table(target) -> common.Table:
    return {p: _separator_row(p) for p in common.flatten(target)}


def convert_separator(sd: Mapping[str, np.ndarray], channels=FULL_CHANNELS) -> dict:
    """Checkpoint state dict (with or without `ss_model.`) -> separator variables."""
    if any(k.startswith(SEPARATOR_PREFIX) for k in sd):
        sd = common.select_prefix(sd, SEPARATOR_PREFIX)
    target = separator_target(channels)
    return common.apply_table(sd, separator_table(target), target, ignore=SEPARATOR_IGNORE)


# ----------------------------------------------------------------------------- CLAP text
def text_target(cfg: ClapTextConfig) -> dict:
    ids = jnp.ones((1, 4), jnp.int32)
    return jax.eval_shape(ClapTextEncoder(cfg).init, jax.random.key(0), ids, ids)


_TEXT_LAYER = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_out": "attention.output.dense",
    "attention_ln": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
    "output_ln": "output.LayerNorm",
}
_TEXT_TOP = {
    "word": "text_branch.embeddings.word_embeddings",
    "position": "text_branch.embeddings.position_embeddings",
    "token_type": "text_branch.embeddings.token_type_embeddings",
    "embeddings_ln": "text_branch.embeddings.LayerNorm",
    "pooler": "text_branch.pooler.dense",
    "projection_0": "text_projection.0",
    "projection_2": "text_projection.2",
}
_LEAF = {"kernel": ("weight", common.linear), "bias": ("bias", common.identity)}
_LEAF_LN = {"scale": ("weight", common.identity), "bias": ("bias", common.identity)}


def _text_row(path: str) -> tuple[str, common.Transform]:
    _, *mods, leaf = path.split("/")
    if mods[0].startswith("layer_"):
        base = f"text_branch.encoder.layer.{int(mods[0][6:])}.{_TEXT_LAYER[mods[1]]}"
        is_ln = mods[1].endswith("_ln")
    else:
        base = _TEXT_TOP[mods[0]]
        is_ln = mods[0].endswith("_ln")
    if leaf == "embedding":
        return f"{base}.weight", common.identity
    name, transform = (_LEAF_LN if is_ln else _LEAF)[leaf]
    return f"{base}.{name}", transform


def text_table(target) -> common.Table:
    return {p: _text_row(p) for p in common.flatten(target)}


def select_text(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The text-path keys (`text_branch.*`, `text_projection.*`) under the CLAP prefix."""
    for prefix in TEXT_PREFIXES:
        sub = common.select_prefix(sd, prefix)
        if any(k.startswith("text_branch.") for k in sub):
            return {
                k: v for k, v in sub.items() if k.startswith(("text_branch.", "text_projection."))
            }
    raise ConversionError(
        f"no CLAP text branch in the checkpoint (looked for {TEXT_PREFIXES} + 'text_branch.')"
    )


def convert_text(sd: Mapping[str, np.ndarray], cfg: ClapTextConfig | None = None) -> dict:
    """Checkpoint state dict -> text encoder variables {'params'} (default: roberta-base)."""
    cfg = cfg or ClapTextConfig()
    target = text_target(cfg)
    return common.apply_table(select_text(sd), text_table(target), target, ignore=TEXT_IGNORE)


def text_config_from_fixture(config: dict) -> ClapTextConfig:
    c = config["text_branch"]["config"]
    if c.get("hidden_act", "gelu") != "gelu":
        raise ConversionError(f"unsupported RoBERTa activation {c['hidden_act']}")
    return ClapTextConfig(
        vocab_size=c["vocab_size"],
        hidden=c["hidden_size"],
        layers=c["num_hidden_layers"],
        heads=c["num_attention_heads"],
        intermediate=c["intermediate_size"],
        max_positions=c["max_position_embeddings"],
        type_vocab=c["type_vocab_size"],
        eps=c["layer_norm_eps"],
        pad_id=c["pad_token_id"],
        joint=config["text_projection"]["joint_embed_shape"],
    )


# ----------------------------------------------------------------------------- verify
def _max_rel(name: str, out, ref, tol: float) -> Check:
    return Check(name, np.asarray(out), np.asarray(ref), tol=tol, metric="max_rel")


def verify_stft(fixture_dir: Path) -> list[Check]:
    """torchlibrosa STFT/ISTFT vs `jnp.fft` (README bounds: STFT max abs 1e-5 x peak |STFT|,
    ISTFT max rel 1e-5). Also checks that the separator converter drops every fixed DFT key."""
    io = np.load(Path(fixture_dir) / "io.npz")
    x = jnp.asarray(io["in_waveform"][0])
    re_, im_ = (np.asarray(a) for a in jax.jit(stft_lib.stft)(x))
    peak = float(np.abs(io["out_real"] + 1j * io["out_imag"]).max())
    n = io["in_waveform"].shape[-1]
    inv = jax.jit(stft_lib.istft, static_argnums=2)
    checks = []
    for suffix in ("", "_torch"):
        tag = suffix.lstrip("_") + ("_" if suffix else "")
        checks.append(Check(f"{tag}real", re_, io[f"out{suffix}_real"], 1e-5 * peak, "max_abs"))
        checks.append(Check(f"{tag}imag", im_, io[f"out{suffix}_imag"], 1e-5 * peak, "max_abs"))
        y = inv(jnp.asarray(io[f"out{suffix}_real"]), jnp.asarray(io[f"out{suffix}_imag"]), n)
        checks.append(_max_rel(f"{tag}istft", y, io[f"out{suffix}_istft"], 1e-5))
    y = inv(jnp.asarray(io["in_spec_real"]), jnp.asarray(io["in_spec_imag"]), n)
    checks.append(_max_rel("istft_random", y, io["out_istft_random"], 1e-5))
    checks.append(_max_rel("torch_istft_random", y, io["out_torch_istft_random"], 1e-5))
    keys = common.load_full_keys(Path(fixture_dir) / "full_keys.json")
    dropped = [
        k
        for k in keys
        if any(re.fullmatch(p, k[len(SEPARATOR_PREFIX) :]) for p in SEPARATOR_IGNORE)
    ]
    checks.append(
        Check("fixed_dft_keys_dropped", np.array(len(dropped)), np.array(len(keys)), 0, "exact")
    )
    return checks


def _intermediate(tree: dict, path: str) -> np.ndarray:
    node = tree
    for p in path.split("/"):
        node = node[p]
    return np.asarray(node[0] if isinstance(node, tuple) else node)


def run_separator_with_intermediates(variables, mixture, condition, channels=FULL_CHANNELS):
    model = ResUNet30(channels=tuple(channels))

    @jax.jit
    def f(v, m, c):
        return model.apply(v, m, c, mutable=["intermediates"])

    y, state = f(variables, jnp.asarray(mixture), jnp.asarray(condition))
    return np.asarray(y), jax.tree.map(np.asarray, state["intermediates"])


def verify_audiosep_resunet(fixture_dir: Path) -> list[Check]:
    """ResUNet30 + FiLM vs the original (README bounds: max rel 1e-4 on waveform, after_conv,
    mask |M|, conv_block7a, |X| and every FiLM β; cos/sin max abs on the README's subsets)."""
    fixture_dir = Path(fixture_dir)
    variables = convert_separator(common.load_state_dict(fixture_dir / "state_dict.safetensors"))
    io = np.load(fixture_dir / "io.npz")
    mix, cond = io["in_mixture"][:, 0], io["in_condition"]
    if np.array_equal(mix[0], mix[1:].max(0)) and np.array_equal(mix[0], mix[1:].min(0)):
        mix = mix[:1]  # one mixture broadcast over the queries, the `separate` path
    y, inter = run_separator_with_intermediates(variables, mix, cond)
    t = io["out_stft_mag"].shape[2]
    checks = [
        _max_rel("waveform", y[:, None], io["out_waveform"], 1e-4),
        _max_rel("stft_mag", _intermediate(inter, "stft_mag")[:1, None], io["out_stft_mag"], 1e-4),
        _max_rel(
            "after_conv",
            _intermediate(inter, "out_after_conv").transpose(0, 3, 1, 2),
            io["out_after_conv"],
            1e-4,
        ),
        _max_rel(
            "mask_mag", _intermediate(inter, "mask_mag")[:, None, None], io["out_mask_mag"], 1e-4
        ),
        _max_rel(
            "conv_block7a",
            _intermediate(inter, "out_conv_block7a").transpose(0, 3, 1, 2),
            io["out_conv_block7a"],
            1e-4,
        ),
    ]
    mag_ref = io["out_stft_mag"][0, 0]
    for k in ("cos", "sin"):
        out = _intermediate(inter, f"stft_{k}")[0]
        sel = mag_ref > 1.0
        checks.append(
            Check(f"stft_{k}[mag>1]", out[sel], io[f"out_stft_{k}"][0, 0][sel], 1e-4, "max_abs")
        )
    ref_logits = io["out_after_conv"][:, 1:, :t]  # (B, 2, T, 1024); bin 1024 is a 0 logit
    norm = np.sqrt(np.tanh(ref_logits[:, 0]) ** 2 + np.tanh(ref_logits[:, 1]) ** 2)
    sel = np.pad(norm, ((0, 0), (0, 0), (0, 1))) > 0.5
    for k in ("cos", "sin"):
        out = _intermediate(inter, f"mask_{k}")
        checks.append(
            Check(
                f"mask_{k}[|r,i|>0.5]", out[sel], io[f"out_mask_{k}"][:, 0, 0][sel], 5e-4, "max_abs"
            )
        )
    for name in sorted(k for k in io.files if k.startswith("out_film.")):
        path = name[len("out_film.") :].replace(".", "/") + "/beta"
        checks.append(
            _max_rel(
                f"film.{name[9:]}", _intermediate(inter, path)[:, :, None, None], io[name], 1e-4
            )
        )
    return checks


def verify_clap_text(fixture_dir: Path) -> list[Check]:
    """RoBERTa + pooler + projection + L2 norm vs the original (README: max rel 1e-5 on all)."""
    fixture_dir = Path(fixture_dir)
    cfg = text_config_from_fixture(json.loads((fixture_dir / "config.json").read_text()))
    variables = convert_text(common.load_state_dict(fixture_dir / "state_dict.safetensors"), cfg)
    io = np.load(fixture_dir / "io.npz")
    model = ClapTextEncoder(cfg)
    emb, state = jax.jit(lambda v, i, m: model.apply(v, i, m, mutable=["intermediates"]))(
        variables, jnp.asarray(io["in_input_ids"]), jnp.asarray(io["in_attention_mask"])
    )
    inter = state["intermediates"]
    checks = [
        _max_rel(k, _intermediate(inter, k), io[f"out_{k}"], 1e-5)
        for k in ("embeddings", "last_hidden_state", "pooler_output", "projection")
    ]
    checks.append(_max_rel("text_embedding", emb, io["out_text_embedding"], 1e-5))
    return checks


# ----------------------------------------------------------------------------- files
def convert_file(src: str | Path, out: str | Path, *, trust_pickle: bool = False) -> dict:
    """`audiosep_base_4M_steps.ckpt` (or a .safetensors) -> the params folder OUT; returns its
    config.json."""
    sd = common.load_state_dict(src, dtype=None, trust_pickle=trust_pickle)
    separator = convert_separator(sd)
    text_cfg = ClapTextConfig()
    text = convert_text(sd, text_cfg)
    del sd
    config = {
        "model": "audiosep",
        "source": str(src),
        "separator": {"channels": list(FULL_CHANNELS), "sample_rate": 32000},
        "text": dataclasses.asdict(text_cfg),
    }
    save_params(out, {"separator": separator, "text": text}, config, compress=False)
    return config
