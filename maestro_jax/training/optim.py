"""The CIM's optimizer and learning-rate schedule (`config.optimizer`, `config.schedule`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax


def make_schedule(config: Any) -> Callable:
    lr, sc = float(config.optimizer.lr), config.schedule
    warm, total = int(sc.warmup_steps), int(config.total_steps)
    if sc.name == "constant":
        main = optax.constant_schedule(lr)
    elif sc.name == "cosine":
        main = optax.cosine_decay_schedule(lr, max(total - warm, 1), alpha=float(sc.end_factor))
    else:
        raise ValueError(f"schedule.name must be 'constant' or 'cosine', got {sc.name!r}")
    if warm > 0:
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), main], [warm])
    return main


def make_optimizer(config: Any) -> tuple[optax.GradientTransformation, Callable]:
    """(tx, schedule): Adam (torch semantics: weight_decay adds wd * param to the gradient) or
    AdamW (decoupled, lr * wd * param), optional global-norm clipping first."""
    oc = config.optimizer
    sched = make_schedule(config)
    kw = dict(b1=float(oc.b1), b2=float(oc.b2), eps=float(oc.eps))
    if oc.name == "adam":
        tx = optax.adam(sched, **kw)
        if oc.weight_decay:
            tx = optax.chain(optax.add_decayed_weights(float(oc.weight_decay)), tx)
    elif oc.name == "adamw":
        tx = optax.adamw(sched, weight_decay=float(oc.weight_decay), **kw)
    else:
        raise ValueError(f"optimizer.name must be 'adam' or 'adamw', got {oc.name!r}")
    if oc.grad_clip_norm and oc.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(float(oc.grad_clip_norm)), tx)
    return tx, sched


def tree_norm(tree: Any) -> jax.Array:
    """Global L2 norm (optax.tree.norm; optax.global_norm before it existed)."""
    tree_mod = getattr(optax, "tree", None)
    if tree_mod is not None and hasattr(tree_mod, "norm"):
        return tree_mod.norm(tree)
    return optax.global_norm(tree)
