"""Strict, declarative checkpoint conversion.

A converter is a *table*: `{flax_path: (original_key, transform)}` where `flax_path` is the
'/'-joined path of a leaf in the Flax params tree and `transform` maps the original (PyTorch
layout) array to the Flax layout. `apply_table` fills the target tree (from `jax.eval_shape` of the
module's init) and fails, naming the key, on anything missing, unexpected or mis-shaped.
`check_table_against_keys` does the same with shapes only (for the full-size `full_keys.json`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

Transform = Callable[[np.ndarray], np.ndarray]
Table = dict[str, tuple[str, Transform]]


class ConversionError(ValueError):
    """A checkpoint does not match the module: the message names every offending key."""


# ----------------------------------------------------------------------------- transforms
def identity(w: np.ndarray) -> np.ndarray:
    return w


def linear(w: np.ndarray) -> np.ndarray:
    """torch Linear (out, in) -> flax Dense kernel (in, out)."""
    return w.T


def conv2d(w: np.ndarray) -> np.ndarray:
    """torch Conv2d (O, I, kh, kw) -> flax (kh, kw, I, O)."""
    return w.transpose(2, 3, 1, 0)


def conv3d(w: np.ndarray) -> np.ndarray:
    """torch Conv3d (O, I, kt, kh, kw) -> flax (kt, kh, kw, I, O)."""
    return w.transpose(2, 3, 4, 1, 0)


def conv3d_temporal(w: np.ndarray) -> np.ndarray:
    """torch Conv3d (O, I, kt, 1, 1) -> flax 1-D conv over frames (kt, I, O)."""
    if w.shape[3:] != (1, 1):
        raise ConversionError(f"expected a (k,1,1) temporal Conv3d kernel, got shape {w.shape}")
    return w[:, :, :, 0, 0].transpose(2, 1, 0)


def conv1d(w: np.ndarray) -> np.ndarray:
    """torch Conv1d (O, I, k) -> flax (k, I, O)."""
    return w.transpose(2, 1, 0)


def conv1d_k1_as_linear(w: np.ndarray) -> np.ndarray:
    """torch Conv1d k=1 (O, I, 1) -> Dense kernel (I, O)."""
    if w.shape[2] != 1:
        raise ConversionError(f"expected a k=1 Conv1d kernel, got shape {w.shape}")
    return w[:, :, 0].T


def conv1x1_as_linear(w: np.ndarray) -> np.ndarray:
    """torch Conv2d 1x1 (O, I, 1, 1) -> Dense kernel (I, O)."""
    if w.shape[2:] != (1, 1):
        raise ConversionError(f"expected a 1x1 Conv2d kernel, got shape {w.shape}")
    return w[:, :, 0, 0].T


def conv_transpose2d(w: np.ndarray) -> np.ndarray:
    """torch ConvTranspose2d (I, O, kh, kw) -> flax ConvTranspose kernel (kh, kw, I, O)
    for `transpose_kernel=False` with kernel == stride (no overlap): spatially flipped is NOT
    needed for kernel == stride when used with a direct scatter; callers verify numerically."""
    return w.transpose(2, 3, 0, 1)


def rows(start: int, stop: int, then: Transform = identity) -> Transform:
    """Take rows [start, stop) of a packed tensor (e.g. q/k/v of `in_proj_weight`), then `then`."""

    def f(w: np.ndarray) -> np.ndarray:
        return then(w[start:stop])

    f.__name__ = f"rows[{start}:{stop}]"
    return f


def reshape(shape: tuple[int, ...], then: Transform = identity) -> Transform:
    def f(w: np.ndarray) -> np.ndarray:
        return then(w.reshape(shape))

    return f


# ----------------------------------------------------------------------------- loading
def load_state_dict(path: str | os.PathLike, *, dtype=np.float32) -> dict[str, np.ndarray]:
    """Read a checkpoint into {key: numpy array} (cast to `dtype` for floating arrays).

    - `.safetensors`: read without torch.
    - `.ckpt` / `.pth` / `.pt` / `.bin`: needs torch (`pip install -e .[convert]`); a Lightning
      `state_dict` or `model` wrapper is unwrapped.
    - a folder: every `*.safetensors` in it (diffusers layout), merged.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise ConversionError(f"no *.safetensors file in folder {path}")
        out: dict[str, np.ndarray] = {}
        for f in files:
            out.update(load_state_dict(f, dtype=dtype))
        return out
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        sd = load_file(str(path))
    elif path.suffix in (".ckpt", ".pth", ".pt", ".bin"):
        try:
            import torch
        except ImportError as e:  # pragma: no cover - depends on the extra
            raise ImportError(
                f"reading {path.name} needs torch: pip install -e '.[convert]' "
                "(a CPU wheel: torch==2.13.0)"
            ) from e
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
        for wrapper in ("state_dict", "model", "module"):
            if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
                obj = obj[wrapper]
                break
        sd = {}
        for k, v in obj.items():
            if hasattr(v, "detach"):
                v = v.detach().cpu()
                if v.dtype == torch.bfloat16:
                    v = v.float()
                sd[k] = v.numpy()
    else:
        raise ConversionError(f"unknown checkpoint format: {path} (want .safetensors/.ckpt/.pth)")
    return {
        k: (v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v) for k, v in sd.items()
    }


def select_prefix(sd: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The entries under `prefix`, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def load_full_keys(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """`full_keys.json` of a fixture -> {key: shape}."""
    with open(path) as f:
        data = json.load(f)
    return {k: tuple(v["shape"]) for k, v in data.items()}


# ----------------------------------------------------------------------------- trees
def flatten(tree: Any) -> dict[str, Any]:
    """Nested dict -> {'a/b/c': leaf}."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        flat["/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)] = leaf
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for k, v in flat.items():
        node = out
        parts = k.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


def _ignored(key: str, ignore: Iterable[str]) -> bool:
    return any(re.fullmatch(p, key) for p in ignore)


def _shape_after(transform: Transform, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(transform(np.broadcast_to(np.float32(0), shape)).shape)


def apply_table(
    sd: Mapping[str, np.ndarray],
    table: Table,
    target: Any,
    *,
    ignore: Iterable[str] = (),
    dtype=np.float32,
    shapes_only: bool = False,
) -> dict:
    """Build the Flax params tree `target` (a pytree of arrays/ShapeDtypeStructs) from `sd`.

    Args:
      sd: original state dict (keys as in the checkpoint, after any prefix selection).
      table: {flax_path: (original_key, transform)}.
      target: the expected params tree; only shapes are used.
      ignore: regexes (full match) of original keys that are deliberately not used.
    Raises:
      ConversionError naming every missing, unexpected or mis-shaped key.
    """
    flat_target = flatten(target)
    problems = []
    missing_rows = sorted(set(flat_target) - set(table))
    extra_rows = sorted(set(table) - set(flat_target))
    problems += [f"module param {p} has no entry in the conversion table" for p in missing_rows]
    problems += [f"conversion table names {p}, which the module does not have" for p in extra_rows]
    used = set()
    out = {}
    for path, leaf in flat_target.items():
        if path not in table:
            continue
        key, transform = table[path]
        if key not in sd:
            problems.append(f"missing key in checkpoint: {key} (for {path})")
            continue
        used.add(key)
        w = transform(np.asarray(sd[key]))
        if tuple(w.shape) != tuple(leaf.shape):
            problems.append(
                f"shape mismatch for {key}: checkpoint {tuple(sd[key].shape)} -> {tuple(w.shape)} "
                f"after {getattr(transform, '__name__', 'transform')}, module {path} wants "
                f"{tuple(leaf.shape)}"
            )
            continue
        out[path] = w if shapes_only else np.array(w, dtype=dtype, order="C", copy=True)
    unexpected = sorted(k for k in sd if k not in used and not _ignored(k, ignore))
    problems += [f"unexpected key in checkpoint: {k}" for k in unexpected]
    if problems:
        head = f"{len(problems)} conversion problem(s):\n  "
        raise ConversionError(
            head + "\n  ".join(problems[:50]) + ("\n  ..." if len(problems) > 50 else "")
        )
    return unflatten(out)


def check_table_against_keys(
    full_keys: Mapping[str, tuple[int, ...]],
    table: Table,
    target: Any,
    *,
    ignore: Iterable[str] = (),
) -> None:
    """Shape-only version of `apply_table` for full-size key sets (no weights needed)."""
    fake = {k: np.broadcast_to(np.float32(0), s) for k, s in full_keys.items()}
    apply_table(fake, table, target, ignore=ignore, shapes_only=True)


def rel_l2(out: np.ndarray, ref: np.ndarray) -> float:
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    den = np.linalg.norm(ref)
    return float(np.linalg.norm(out - ref) / (den if den > 0 else 1.0))
