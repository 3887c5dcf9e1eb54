"""Fast random weights from parameter shapes, drawn with numpy (tests, `:runlocal`, demos).

Compiling a Flax `init` costs a threefry computation per parameter: one to three minutes for a
tiny UNet on 2 CPU cores. Filling the shapes from `jax.eval_shape(module.init, ...)` with numpy
takes milliseconds and gives the same kind of weights.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def random_like(shapes: Any, seed: int = 0, pool_size: int | None = None) -> Any:
    """Random arrays with the structure and shapes of `shapes` (a tree of ShapeDtypeStructs).

    By leaf name: `kernel` ~ N(0, 1/fan_in) with fan_in = prod(shape[:-1]); `scale` and running
    `var` = 1; `bias` and running `mean` = 0; every other float leaf (embeddings, tokens, position
    embeddings, learned latents) ~ N(0, 0.02^2). Integer leaves are zeros.

    `pool_size`: draw the normals as slices of one shared pool of that many float32 values
    instead of independently (full-size networks in seconds instead of a minute, for benchmarks:
    the values keep realistic statistics, not independence).
    """
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal(pool_size, dtype=np.float32) if pool_size else None

    def normal(shape: tuple[int, ...]) -> np.ndarray:
        if pool is None:
            return rng.standard_normal(shape).astype(np.float32)
        n = int(np.prod(shape))
        if n > pool.size:
            return np.resize(pool, n).reshape(shape)
        start = int(rng.integers(0, pool.size - n + 1))
        return pool[start : start + n].reshape(shape)

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", getattr(path[-1], "name", path[-1])))
        shape = tuple(leaf.shape)
        dtype = np.dtype(getattr(leaf, "dtype", np.float32))
        if not np.issubdtype(dtype, np.floating):
            return np.zeros(shape, dtype)
        if name == "kernel":
            std = 1.0 / np.sqrt(max(int(np.prod(shape[:-1])), 1))
            return normal(shape) * np.float32(std)
        if name in ("scale", "var"):
            return np.ones(shape, np.float32)
        if name in ("bias", "mean"):
            return np.zeros(shape, np.float32)
        return normal(shape) * np.float32(0.02)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def random_init(module: Any, *args: Any, seed: int = 0, method: Any = None, **kwargs: Any) -> Any:
    """`module.init(key, *args)`'s variables, shapes only, filled by `random_like`."""
    shapes = jax.eval_shape(
        lambda: (
            module.init(jax.random.key(0), *args, method=method, **kwargs)
            if method is not None
            else module.init(jax.random.key(0), *args, **kwargs)
        )
    )
    return random_like(shapes, seed)
