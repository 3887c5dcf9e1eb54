"""Mesh construction and parameter/batch shardings, with JAX's own machinery only.

The mesh has axes ('data', 'fsdp'): batches split over 'data' (and 'fsdp' when it is used as
extra data parallelism), large parameters optionally split over 'fsdp'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(
    shape: Sequence[int],
    axes: Sequence[str] = ("data", "fsdp"),
    devices: Sequence[Any] | None = None,
) -> Mesh:
    """`jax.make_mesh` with Auto axis types (the default became Explicit in newer JAX), over all
    devices or the given ones."""
    n_dev = len(devices) if devices is not None else jax.device_count()
    shape = tuple(int(s) for s in shape)
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        shape = tuple(n_dev // known if s == -1 else s for s in shape)
    if int(np.prod(shape)) != n_dev:
        raise ValueError(f"mesh shape {shape} needs {int(np.prod(shape))} devices, have {n_dev}")
    return jax.make_mesh(
        shape, tuple(axes), axis_types=(AxisType.Auto,) * len(shape), devices=devices
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 1, batch_axes: Any = ("data", "fsdp")) -> NamedSharding:
    """Leading axis split over the batch axes of the mesh that exist; the rest replicated."""
    axes = tuple(
        a
        for a in (batch_axes if isinstance(batch_axes, tuple) else (batch_axes,))
        if a in mesh.axis_names
    )
    return NamedSharding(mesh, P(axes if axes else None, *([None] * (ndim - 1))))


def fsdp_spec(shape: Sequence[int], mesh: Mesh, axis: str = "fsdp", min_size: int = 2**18) -> P:
    """Shard the largest dimension divisible by the `axis` size; small arrays stay replicated."""
    n = mesh.shape.get(axis, 1)
    if n <= 1 or int(np.prod(shape)) < min_size:
        return P()
    dims = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in dims:
        if shape[i] % n == 0:
            spec = [None] * len(shape)
            spec[i] = axis
            return P(*spec)
    return P()


def param_shardings(params: Any, mesh: Mesh, axis: str = "fsdp", min_size: int = 2**18) -> Any:
    """A tree of NamedShardings for `params` (arrays or ShapeDtypeStructs): FSDP-style."""
    return jax.tree.map(
        lambda x: NamedSharding(mesh, fsdp_spec(x.shape, mesh, axis, min_size)), params
    )
