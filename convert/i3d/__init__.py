"""Inception-I3D (the FVD network): a PyTorch state dict in either common naming -> Flax params.

    python -m convert.i3d i3d_pretrained_400.pt OUT_DIR [--layout auto] [--bn_eps 1e-3]
    python -m convert.verify FIXTURES/i3d   # FIXTURES: the golden fixtures folder

Two key layouts of the same 287 tensors (57 conv + BN units and the biased logits conv) are read;
`--layout auto` (default) picks the one whose key set the file matches:

- `hassony2`: `hassony2/kinetics_i3d_pytorch` `src/i3dpt.py` class `I3D` (the class behind
  StyleGAN-V's `i3d_torchscript.pt`): `conv3d_1a_7x7.conv3d.weight`,
  `conv3d_1a_7x7.batch3d.{weight,bias,running_mean,running_var}`, `mixed_3b.branch_0...`,
  `branch_1.0` / `branch_1.1`, `branch_2.0` / `branch_2.1`, `branch_3.1`,
  `conv3d_0c_1x1.conv3d.{weight,bias}`.
- `piergiaj`: `piergiaj/pytorch-i3d` `InceptionI3d`, also the naming of VideoGPT's
  `i3d_pretrained_400.pt` (used by VideoGPT, TATS, cd-fvd): `Conv3d_1a_7x7.conv3d.weight`,
  `Conv3d_1a_7x7.bn.{...}`, `Mixed_3b.b0`, `b1a`, `b1b`, `b2a`, `b2b`, `b3b`,
  `logits.conv3d.{weight,bias}`.

The conversion is strict: every module param needs its key, every key (except the ignored
`*.num_batches_tracked`) must be used, shapes are checked, and any problem is reported key by
key. Floating tensors (float16 included) are cast to float32.

BatchNorm epsilon. The TF-Hub `i3d-kinetics-400` graph (the FVD reference) and hassony2's `I3D`
use eps **1e-3**, which is the default here and the function the `i3d` fixture checks. VideoGPT's
`InceptionI3d` (and so cd-fvd and common_metrics_on_video_quality's "videogpt" method) runs
`i3d_pretrained_400.pt`, the same TF-Hub weights, with PyTorch's default eps **1e-5**: a
different function (different features, slightly different FVDs). Pass `--bn_eps 1e-5` only to
reproduce numbers computed that way; the value is written to the output's `config.json`
(`bn_eps`), which the evaluation reads back.

StyleGAN-V's `i3d_torchscript.pt` is a TorchScript archive, not a state dict: it cannot be read
here. Export its weights (`torch.jit.load(p).state_dict()`, expected in the hassony2 naming) to a
`.pt` / `.safetensors` state dict first.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from convert.common import (
    ConversionError,
    Table,
    _ignored,
    apply_table,
    conv3d,
    flatten,
    identity,
    load_full_keys,
    load_state_dict,
)
from maestro_jax.models.i3d import I3DConfig, InceptionI3d

IGNORE = (r".*\.num_batches_tracked",)

LAYOUTS = ("hassony2", "piergiaj")

# Flax leaf (layer/param) -> (torch layer attribute per layout, torch param, transform)
_LEAF = {
    ("conv", "kernel"): ("weight", conv3d),
    ("conv", "bias"): ("bias", identity),
    ("bn", "scale"): ("weight", identity),
    ("bn", "bias"): ("bias", identity),
    ("bn", "mean"): ("running_mean", identity),
    ("bn", "var"): ("running_var", identity),
}
_LAYER = {
    "hassony2": {"conv": "conv3d", "bn": "batch3d"},
    "piergiaj": {"conv": "conv3d", "bn": "bn"},
}
# Flax Inception branch names (= piergiaj's) -> hassony2's `Mixed` attributes.
_HASSONY2_BRANCH = {
    "b0": "branch_0",
    "b1a": "branch_1.0",
    "b1b": "branch_1.1",
    "b2a": "branch_2.0",
    "b2b": "branch_2.1",
    "b3b": "branch_3.1",
}


def _module_key(parts: list[str], layout: str) -> str:
    """Flax module path (e.g. ['Mixed_3b', 'b1a']) -> the torch module prefix of `layout`."""
    if layout == "piergiaj":
        return ".".join(parts)
    top = parts[0]
    top = "conv3d_0c_1x1" if top == "logits" else top[0].lower() + top[1:]
    return ".".join([top] + [_HASSONY2_BRANCH[p] for p in parts[1:]])


def target_params(config: I3DConfig) -> dict:
    """Shapes of the Flax params (no allocation)."""
    model = InceptionI3d(config)
    h = 32 * config.pool_window[1]
    w = 32 * config.pool_window[2]
    t = 8 * config.pool_window[0]
    x = jax.ShapeDtypeStruct((1, t, h, w, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ConversionError(f"unknown I3D key layout {layout!r}; known: {', '.join(LAYOUTS)}")


def i3d_table(config: I3DConfig, layout: str = "piergiaj") -> Table:
    """{flax path: (torch key in `layout`, transform)} for every param of `InceptionI3d(config)`."""
    _check_layout(layout)
    config = dataclasses.replace(config, pool_window=tuple(config.pool_window))  # hashable
    return dict(_i3d_table(config, layout))


@functools.lru_cache(maxsize=16)
def _i3d_table(config: I3DConfig, layout: str) -> Table:
    table: Table = {}
    for path in flatten(target_params(config)):
        parts = path.split("/")
        layer, leaf = parts[-2], parts[-1]
        if (layer, leaf) not in _LEAF:  # pragma: no cover - the module only has these leaves
            raise ConversionError(f"no conversion rule for I3D param {path}")
        tparam, fn = _LEAF[(layer, leaf)]
        key = f"{_module_key(parts[:-2], layout)}.{_LAYER[layout][layer]}.{tparam}"
        table[path] = (key, fn)
    return table


def layout_keys(config: I3DConfig, layout: str) -> set[str]:
    """The torch keys (without `num_batches_tracked`) a state dict of `layout` holds."""
    return {key for key, _ in i3d_table(config, layout).values()}


def detect_layout(keys, config: I3DConfig | None = None) -> str:
    """The layout whose key set `keys` matches (`num_batches_tracked` ignored).

    An exact match wins; otherwise the layout sharing the most keys is returned (the strict
    conversion then lists what is missing or unexpected). Raises ConversionError when no key of
    either layout is present."""
    config = config or I3DConfig()
    keys = {k for k in keys if not _ignored(k, IGNORE)}
    overlap = {}
    for layout in LAYOUTS:
        expected = layout_keys(config, layout)
        if keys == expected:
            return layout
        overlap[layout] = len(keys & expected)
    best = max(LAYOUTS, key=lambda lay: overlap[lay])
    if overlap[best] == 0:
        sample = ", ".join(sorted(keys)[:5]) or "(no keys)"
        raise ConversionError(
            f"the state dict matches neither I3D key layout ({' / '.join(LAYOUTS)}): none of its "
            f"{len(keys)} keys is an I3D key (first: {sample}). Expected e.g. "
            "'conv3d_1a_7x7.conv3d.weight' (hassony2) or 'Conv3d_1a_7x7.conv3d.weight' "
            "(piergiaj / i3d_pretrained_400.pt); strip any prefix such as 'module.' first"
        )
    return best


def convert_i3d(sd: Mapping[str, np.ndarray], config: I3DConfig, layout: str = "auto") -> dict:
    """Strict conversion of a state dict (numpy arrays) in `layout` ('auto': detected from the
    keys) to Flax params."""
    return convert_i3d_layout(sd, config, layout)[0]


def convert_i3d_layout(
    sd: Mapping[str, np.ndarray], config: I3DConfig, layout: str = "auto"
) -> tuple[dict, str]:
    """`convert_i3d` that also returns the layout used."""
    auto = layout == "auto"
    if auto:
        layout = detect_layout(sd, config)
    _check_layout(layout)
    sd = {
        k: (v.astype(np.float32, copy=False) if np.issubdtype(v.dtype, np.floating) else v)
        for k, v in sd.items()
    }
    try:
        params = apply_table(sd, i3d_table(config, layout), target_params(config), ignore=IGNORE)
    except ConversionError as e:
        how = "closest match" if auto else "as requested"
        if not auto:
            try:
                other = detect_layout(sd, config)
            except ConversionError:
                other = layout
            if other != layout:
                how += f"; its keys are closer to the {other!r} layout, try layout 'auto'"
        raise ConversionError(
            f"state dict does not match the {layout!r} I3D key layout ({how}; layouts: "
            f"{', '.join(LAYOUTS)}): {e}"
        ) from None
    return params, layout


def check_full_keys(
    full_keys: Mapping[str, tuple[int, ...]] | str | Path,
    config: I3DConfig | None = None,
    layout: str = "auto",
) -> str:
    """Shape-only strict check of a full key list (a fixture's `full_keys.json`); returns the
    layout it matched."""
    if not isinstance(full_keys, Mapping):
        full_keys = load_full_keys(full_keys)
    fake = {k: np.broadcast_to(np.float32(0), s) for k, s in full_keys.items()}
    config = config or I3DConfig()
    layout = detect_layout(fake, config) if layout == "auto" else layout
    apply_table(
        fake, i3d_table(config, layout), target_params(config), ignore=IGNORE, shapes_only=True
    )
    return layout


# ----------------------------------------------------------------------------- fixture
def _key_set_check(name: str, got: Mapping, want: Mapping):
    """Check (exact) that two {key: shape} dicts agree; the name lists the first differences."""
    from convert.verify import Check

    diff = sorted(set(got) ^ set(want))
    diff += sorted(k for k in set(got) & set(want) if tuple(got[k]) != tuple(want[k]))
    if diff:
        name += f" (differ: {', '.join(diff[:4])}{', ...' if len(diff) > 4 else ''})"
    return Check(name, np.array(len(diff)), np.array(0), 0, "exact")


def _flag(name: str, ok: bool):
    """An exact Check of a condition (reported as 0/1)."""
    from convert.verify import Check

    return Check(name, np.array(bool(ok)), np.array(True), 0, "exact")


def verify_i3d(fixture_dir: Path) -> list:
    """The `i3d` fixture (hassony2 `I3D`, random float16 weights): out_logits, out_probs, out_pool
    (rel L2 1e-5) and out_mixed_5c (5e-5) from the state dict in its own (hassony2) layout and
    again after renaming it to the `i3d_pretrained_400.pt` (piergiaj) layout through the
    fixture's key map; plus both key sets against the fixture's key lists."""
    from convert.verify import Check, FixtureError

    fixture_dir = Path(fixture_dir)
    cfg = json.loads((fixture_dir / "config.json").read_text())
    ctor = cfg.get("constructor", {})
    if ctor.get("modality", "rgb") != "rgb":
        raise FixtureError(f"{fixture_dir}: only the RGB I3D is ported, fixture has {ctor}")
    config = I3DConfig(num_classes=int(ctor["num_classes"]), bn_eps=float(cfg["bn_eps"]))
    sd = load_state_dict(fixture_dir / "state_dict.safetensors")  # float16 -> float32
    key_map = json.loads((fixture_dir / "key_map_i3d_pretrained_400.json").read_text())
    full_keys = load_full_keys(fixture_dir / "full_keys.json")
    full_keys_pt = load_full_keys(fixture_dir / "full_keys_i3d_pretrained_400.json")

    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    checks = [_key_set_check("keys[hassony2] == full_keys.json", shapes, full_keys)]
    # i3d_pretrained_400.pt has no num_batches_tracked (VideoGPT's converter writes none).
    unmapped = sorted(k for k in sd if k not in key_map and not _ignored(k, IGNORE))
    if unmapped:
        raise FixtureError(
            f"{fixture_dir}: key_map_i3d_pretrained_400.json has no entry for {unmapped[:5]}"
        )
    sd_pt = {key_map[k]: v for k, v in sd.items() if k in key_map}
    shapes_pt = {k: tuple(v.shape) for k, v in sd_pt.items()}
    checks.append(
        _key_set_check(
            "keys[piergiaj] == full_keys_i3d_pretrained_400.json", shapes_pt, full_keys_pt
        )
    )
    for layout, keys in (("hassony2", full_keys), ("piergiaj", full_keys_pt)):
        found = check_full_keys(keys, config)
        checks.append(_flag(f"layout of full key list detected as {layout}", found == layout))

    io = np.load(fixture_dir / "io.npz")
    x = io["in_video_u8"].astype(np.float32) / 255 * 2 - 1  # NCTHW, the README's float32 order
    x = np.ascontiguousarray(x.transpose(0, 2, 3, 4, 1))  # -> [B, T, H, W, 3]
    model = InceptionI3d(config)
    fn = jax.jit(lambda p, v: model.apply({"params": p}, v, output="all"))
    for state_dict, expect in ((sd, "hassony2"), (sd_pt, "piergiaj")):
        params, layout = convert_i3d_layout(state_dict, config)  # layout detected from the keys
        out = jax.tree.map(np.asarray, fn(params, x))
        del params
        tag = f"[{expect}]"
        logits = out["logits"]
        mixed_5c = out["mixed_5c"].transpose(0, 4, 1, 2, 3)  # -> NCTHW
        probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=1))
        checks += [
            _flag(f"layout detected as {expect}", layout == expect),
            Check(f"out_logits{tag}", logits, io["out_logits"], 1e-5),
            Check(f"out_probs{tag}", probs, io["out_probs"], 1e-5),
            Check(f"out_pool{tag}", out["pool"], io["out_pool"], 1e-5),
            Check(f"out_mixed_5c{tag}", mixed_5c, io["out_mixed_5c"], 5e-5),
        ]
    return checks


# ----------------------------------------------------------------------------- CLI
