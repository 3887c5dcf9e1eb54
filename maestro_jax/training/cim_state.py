"""The CIM's train state and the frozen models of its step: init, placement, loading.

`init_train_state`: {'step', 'params' (the CIM), 'opt_state'} with its shardings (replicated,
or FSDP with `mesh.shard_train_state`). `init_frozen`: the frozen UNet, VAE and ImageBind
params from converted folders (`model.<name>.params`) or random (`model.random_init`),
replicated or FSDP over 'fsdp' (`mesh.shard_frozen`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from maestro_jax.models import imagebind as ib
from maestro_jax.models import vae as vae_lib
from maestro_jax.models.cim import CIM
from maestro_jax.models.unet import UNet
from maestro_jax.nn.random_init import random_like
from maestro_jax.sharding import param_shardings
from maestro_jax.training.cim_loss import CONTEXT_LEN, Models


def replicated(tree: Any, mesh: Mesh) -> Any:
    return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)


def place(tree: Any, shardings: Any) -> Any:
    """Host arrays -> global arrays with `shardings` (every process holds the full value)."""

    def put(x, s):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

    return jax.tree.map(put, tree, shardings)


def check_tree(name: str, got: Any, want: Any) -> None:
    g = flax.traverse_util.flatten_dict(got, sep="/")
    w = flax.traverse_util.flatten_dict(want, sep="/")
    missing, extra = sorted(set(w) - set(g)), sorted(set(g) - set(w))
    shapes = [
        f"{k}: {np.shape(g[k])} != {w[k].shape}"
        for k in w
        if k in g and np.shape(g[k]) != w[k].shape
    ]
    if missing or extra or shapes:
        raise ValueError(
            f"{name} params do not match the configured model: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
            f"{'...' if len(extra) > 5 else ''}, mis-shaped {shapes[:5]}"
        )


def cim_init_fn(models: Models, tx: optax.GradientTransformation) -> Callable:
    def init(key):
        x = jnp.zeros((1, models.imagebind.audio_tokens, models.cim.embed_dim), jnp.float32)
        params = CIM(models.cim).init(key, x)["params"]
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    return init


def init_train_state(
    config: Any, models: Models, tx: optax.GradientTransformation, mesh: Mesh
) -> tuple[Any, Any]:
    """(state, shardings). CIM params from `model.cim.init` (a converted folder) or random;
    replicated unless `mesh.shard_train_state` (then FSDP over 'fsdp', optimizer state too)."""
    init = cim_init_fn(models, tx)
    key = jax.random.key(int(config.seed))
    abstract = jax.eval_shape(init, key)
    if config.mesh.shard_train_state:
        shardings = param_shardings(abstract, mesh)
    else:
        shardings = replicated(abstract, mesh)
    state = jax.jit(init, out_shardings=shardings)(key)
    if config.model.cim.init:
        from maestro_jax.checkpoints import load_params

        params, _ = load_params(config.model.cim.init)
        check_tree("model.cim.init", params, abstract["params"])
        state["params"] = place(params, shardings["params"])
    return state, shardings


def frozen_spec(models: Models) -> dict[str, tuple[Any, tuple]]:
    """name -> (module, example init inputs) of the frozen models used inside the step."""
    unet_x = jnp.zeros((1, 8, 8, models.unet.in_channels), jnp.float32)
    ctx = jnp.zeros((1, CONTEXT_LEN, models.unet.context_dim), jnp.float32)
    img = jnp.zeros((1, 32, 32, models.vae.in_channels), jnp.float32)
    mel = jnp.zeros((1, models.imagebind.num_mel_bins, models.imagebind.target_len), jnp.float32)
    return {
        "unet": (UNet(models.unet), (unet_x, jnp.zeros((1,), jnp.int32), ctx)),
        "vae": (vae_lib.AutoencoderKL(models.vae), (img,)),
        "imagebind": (ib.ImageBindAudio(models.imagebind), (mel,)),
    }


def random_params(abstract: Any, seed: int) -> Any:
    """Random weights for a frozen model from its parameter shapes (`nn.random_init.random_like`:
    numpy draws, no jitted `init`). For smoke runs and benchmarks only (`model.random_init`)."""
    return random_like(abstract, seed)


def init_frozen(
    config: Any, models: Models, mesh: Mesh, names: Sequence[str] = ("unet", "vae", "imagebind")
) -> tuple[dict, dict]:
    """(params, shardings) of the frozen models: loaded from `model.<name>.params` (converted
    folders) or, with `model.random_init`, `random_params`. FSDP over 'fsdp' with
    `mesh.shard_frozen`, else replicated."""
    from maestro_jax.checkpoints import load_params

    specs = frozen_spec(models)
    params, shardings = {}, {}
    for i, name in enumerate(names):
        module, inputs = specs[name]
        init = lambda k, module=module, inputs=inputs: module.init(k, *inputs)["params"]
        abstract = jax.eval_shape(init, jax.random.key(0))
        sh = (
            param_shardings(abstract, mesh)
            if config.mesh.shard_frozen
            else replicated(abstract, mesh)
        )
        path = config.model[name].params
        if path:
            p, meta = load_params(path)
            pt = meta.get("prediction_type")
            if name == "unet" and pt is not None and pt != config.model.prediction_type:
                raise ValueError(
                    f"{path} says prediction_type={pt!r} but model.prediction_type="
                    f"{config.model.prediction_type!r}"
                )
            if name == "imagebind" and "audio" in p and "audio" not in abstract:
                p = p["audio"]  # convert.imagebind writes {modality: params}
            check_tree(f"model.{name}.params ({path})", p, abstract)
        elif config.model.random_init:
            p = random_params(abstract, int(config.seed) + 1 + i)
        else:
            raise ValueError(
                f"model.{name}.params is empty: give the folder written by `python -m "
                f"convert.{name} ...`, or set model.random_init=True for a smoke run"
            )
        params[name] = place(p, sh)
        shardings[name] = sh
    return params, shardings
