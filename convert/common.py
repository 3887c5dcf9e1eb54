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
TRUST_PICKLE_FLAG = "--trust_pickle"
# DeepSpeed (through Lightning) saves {"module": {"_forward_module.<key>": tensor}}; VideoCrafter's
# `load_model_checkpoint` strips those 16 characters.
DEEPSPEED_PREFIX = "_forward_module."


class UnsafeCheckpointError(ConversionError):
    """The checkpoint holds pickled Python objects that only an unrestricted unpickler loads."""


def is_floating(dtype) -> bool:
    """numpy floating types and ml_dtypes' bfloat16 (which numpy does not call floating)."""
    import jax.numpy as jnp

    return bool(jnp.issubdtype(np.dtype(dtype), jnp.floating))


class _MappedFile:
    """The address ranges of a checkpoint that torch mapped into memory (`mmap=True`), and the
    loaded object that keeps the mapping alive.

    `release(a)` drops the resident pages under array `a` from this process
    (`madvise(MADV_DONTNEED)`): the mapping is private and never written, so a later read of those
    pages just faults them in from the file again. Only whole pages inside the file's own mapping
    are released; anything else (an anonymous allocation, another file) is never touched.
    """

    def __init__(self, path: Path, keep_alive: Any):
        self.keep_alive = keep_alive
        self.ranges = self._ranges(path)
        self._madvise = self._libc_madvise() if self.ranges else None

    @staticmethod
    def _ranges(path: Path) -> list[tuple[int, int]]:
        real, out = os.path.realpath(path), []
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6 and parts[5].rstrip("\n") == real:
                        lo, hi = (int(x, 16) for x in parts[0].split("-"))
                        out.append((lo, hi))
        except OSError:  # not Linux: nothing is released, which is only slower to free
            return []
        return out

    @staticmethod
    def _libc_madvise():
        import ctypes
        import mmap

        if not hasattr(mmap, "MADV_DONTNEED"):
            return None
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = ctypes.c_int
        return lambda addr, n: fn(addr, n, mmap.MADV_DONTNEED)

    def release(self, a: np.ndarray) -> None:
        if self._madvise is None or not (a.flags.c_contiguous or a.flags.f_contiguous):
            return
        import mmap

        page = mmap.PAGESIZE
        addr = a.__array_interface__["data"][0]
        lo = -(-addr // page) * page
        hi = (addr + a.nbytes) // page * page
        if hi > lo and any(r0 <= lo and hi <= r1 for r0, r1 in self.ranges):
            self._madvise(lo, hi - lo)


class StateDict(dict):
    """{key: numpy array}, as read by `load_state_dict`. Arrays read from a `.ckpt`/`.pth` are
    views of the memory-mapped file (nothing is copied); `release(a)` gives the resident pages of
    such an array back once it has been converted (a no-op for anything else)."""

    mapped: _MappedFile | None = None

    def release(self, a: np.ndarray) -> None:
        if self.mapped is not None:
            self.mapped.release(a)

    def derive(self, items: Iterable[tuple[str, np.ndarray]]) -> StateDict:
        """A new StateDict of `items` that shares this one's mapping."""
        out = StateDict(items)
        out.mapped = self.mapped
        return out


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    """torch.load, memory-mapped where the format allows it, `weights_only` unless the user
    trusts the file: the unrestricted unpickler runs whatever code the file names."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the extra
        raise ImportError(
            f"reading {path.name} needs torch: pip install -e '.[convert]' "
            "(a CPU wheel: torch==2.13.0)"
        ) from e
    import pickle
    import zipfile

    # mmap needs the zip format of torch >= 1.6; an older (legacy) file is read into memory.
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            first = str(e).strip().splitlines()
            why = next((ln for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0])
            raise UnsafeCheckpointError(
                f"{path} holds pickled Python objects besides tensors, which the safe loader "
                f"(torch.load weights_only=True) refuses: {why.strip()}\n"
                f"Loading it would run code named by the file. Only if you trust where the file "
                f"came from, pass {TRUST_PICKLE_FLAG} to load it with weights_only=False."
            ) from None
    return torch.load(path, map_location="cpu", mmap=mmap, weights_only=False)


def _unwrap(obj: Any, path: Path) -> Mapping:
    """The state dict inside a checkpoint object: Lightning's {"state_dict": ...}, DeepSpeed's
    {"module": ...} (its `_forward_module.` key prefix removed), {"model": ...}, or a bare one."""
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if isinstance(obj.get("state_dict"), Mapping):
        return obj["state_dict"]
    if isinstance(obj.get("module"), Mapping):
        sd = obj["module"]
        if sd and all(k.startswith(DEEPSPEED_PREFIX) for k in sd):
            sd = {k[len(DEEPSPEED_PREFIX) :]: v for k, v in sd.items()}
        return sd
    if isinstance(obj.get("model"), Mapping):
        return obj["model"]
    return obj


def _to_numpy(v: Any) -> np.ndarray | None:
    """A torch tensor as a numpy array sharing its memory (bfloat16 via ml_dtypes); None for a
    non-tensor value."""
    import torch

    if not isinstance(v, torch.Tensor):
        return None
    v = v.detach()
    if v.dtype == torch.bfloat16:
        import ml_dtypes

        return v.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return v.numpy()


def load_state_dict(
    path: str | os.PathLike, *, dtype=np.float32, trust_pickle: bool = False
) -> StateDict:
    """Read a checkpoint into {key: numpy array}.

    - `.safetensors`: read without torch.
    - `.ckpt` / `.pth` / `.pt` / `.bin`: needs torch (`pip install -e .[convert]`). Memory-mapped
      (`torch.load(mmap=True)`): the arrays are views of the file, nothing is read until used.
      Loaded with `weights_only=True`: a file that pickles other Python objects is refused
      (UnsafeCheckpointError) unless `trust_pickle`. The layouts of `_unwrap` are accepted.
    - a folder: every `*.safetensors` in it (diffusers layout), merged.

    Args:
      dtype: floating arrays are cast to it (arrays already of that dtype are not copied); None
        keeps the stored dtypes (float16 / bfloat16 too), and `apply_table` casts leaf by leaf.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise ConversionError(f"no *.safetensors file in folder {path}")
        out = StateDict()
        for f in files:
            out.update(load_state_dict(f, dtype=dtype))
        return out
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        sd = StateDict(load_file(str(path)))
    elif path.suffix in (".ckpt", ".pth", ".pt", ".bin"):
        obj = _torch_load(path, trust_pickle)
        sd = StateDict()
        for k, v in _unwrap(obj, path).items():
            a = _to_numpy(v)
            if a is not None:
                sd[k] = a
        sd.mapped = _MappedFile(path, obj)
    else:
        raise ConversionError(f"unknown checkpoint format: {path} (want .safetensors/.ckpt/.pth)")
    if dtype is not None:
        for k, v in sd.items():
            if is_floating(v.dtype) and v.dtype != dtype:
                sd[k] = v.astype(dtype)
    return sd


def free_memory() -> None:
    """Collect garbage and give freed heap pages back to the OS (glibc keeps them otherwise,
    which a peak-RSS measure and the next part's allocations both see). A no-op elsewhere."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def select_prefix(sd: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The entries under `prefix`, with the prefix removed (a StateDict stays one)."""
    items = ((k[len(prefix) :], v) for k, v in sd.items() if k.startswith(prefix))
    return sd.derive(items) if isinstance(sd, StateDict) else dict(items)


def strip_prefix_if_all(sd: Mapping[str, np.ndarray], prefix: str) -> Mapping[str, np.ndarray]:
    """Drop `prefix` (e.g. DDP's `module.`) when every key has it; else `sd` unchanged."""
    if sd and all(k.startswith(prefix) for k in sd):
        return select_prefix(sd, prefix)
    return sd


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
      dtype: every leaf is cast to it; a leaf that is already a C-contiguous array of `dtype`
        after its transform is not copied (it may be a view of `sd`).
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
    release = getattr(sd, "release", None)  # a memory-mapped StateDict frees converted pages
    for path, leaf in flat_target.items():
        if path not in table:
            continue
        key, transform = table[path]
        if key not in sd:
            problems.append(f"missing key in checkpoint: {key} (for {path})")
            continue
        used.add(key)
        src = np.asarray(sd[key])
        w = transform(src)
        if tuple(w.shape) != tuple(leaf.shape):
            problems.append(
                f"shape mismatch for {key}: checkpoint {tuple(sd[key].shape)} -> {tuple(w.shape)} "
                f"after {getattr(transform, '__name__', 'transform')}, module {path} wants "
                f"{tuple(leaf.shape)}"
            )
            continue
        if shapes_only:
            out[path] = w
            continue
        # One copy at most (a transpose, a cast); a leaf that needs neither stays a view.
        out[path] = np.asarray(w, dtype=dtype, order="C")
        if release is not None and not np.may_share_memory(out[path], src):
            release(src)
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
