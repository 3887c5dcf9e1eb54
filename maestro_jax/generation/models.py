"""The networks of one generation run: VideoCrafter2 (3D UNet, VAE, OpenCLIP text), the audio
encoder (ImageBind audio trunk + CIM) and, for mixtures, the separator.

A run's networks are two things kept apart:

- `ModelSpec`: every config (frozen and hashable, no arrays), so the jitted samplers take it as
  a static argument and jit's own cache reuses one compile for equal specs;
- `Models`: a spec, its `params` (a dict pytree of device arrays in the compute dtype, one copy:
  `unet`, `vae` (the decoder half), and with audio `imagebind_audio`, `cim`; `text` for tiny
  models), the text tokenizer (a host object), the text contexts of the run's prompts and of the
  empty prompt (encoded at build time, so the text tower of real weights is read, used and let
  go before the UNet is read) and, for mixture jobs, the separator (its own config and weights).

No module here caches anything: whoever builds `Models` holds the weights, and they go when it
lets go of them. Real weights come from folders converted by `convert.*` (`load_models`, after
`generation.weights` checked them and read the spec from their config files); tiny random ones
from `init_random_models`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from maestro_jax.audio import encoder as ae
from maestro_jax.audio.separation import Separator, init_random_separator
from maestro_jax.checkpoints import load_params_on_device
from maestro_jax.diffusion import Schedule
from maestro_jax.models import clip_text as ct
from maestro_jax.models.cim import CIMConfig
from maestro_jax.models.imagebind import ImageBindConfig
from maestro_jax.models.tokenizer import HashTokenizer
from maestro_jax.models.unet import UNet, UNetConfig
from maestro_jax.models.vae import AutoencoderKL, VAEConfig
from maestro_jax.nn.random_init import random_init, random_like

SCHEDULES = {"vc2": Schedule.vc2}
# the parts of a VideoCrafter2 VAE that decoding reads (the encoder is never loaded)
VAE_DECODER_KEYS = ("decoder", "post_quant_conv")


# ----------------------------------------------------------------------------- spec
@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the networks of a run are, without their weights: hashable (a jit static argument).

    `imagebind` / `cim` are None when the run encodes no audio (text-to-video only)."""

    unet: UNetConfig
    vae: VAEConfig
    text: ct.ClipTextConfig
    imagebind: ImageBindConfig | None = None
    cim: CIMConfig | None = None
    schedule_name: str = "vc2"
    trained_frames: int | None = None  # the frame count the video UNet was trained with
    random: bool = False  # tiny random weights (say so in every output)

    @property
    def dtype(self) -> jnp.dtype:
        """The compute dtype (the weights are held in it)."""
        return self.unet.compute_dtype

    @property
    def context_width(self) -> int:
        return self.unet.context_dim

    @property
    def schedule(self) -> Schedule:
        return schedule_named(self.schedule_name)

    @property
    def has_audio(self) -> bool:
        return self.imagebind is not None and self.cim is not None


@functools.cache
def schedule_named(name: str) -> Schedule:
    """The named schedule (numpy constants only)."""
    return SCHEDULES[name]()


# ----------------------------------------------------------------------------- models
@dataclasses.dataclass(frozen=True, eq=False)
class Models:
    """A spec, its weights (device arrays in the compute dtype) and the host-side tokenizer."""

    spec: ModelSpec
    params: dict[str, Any]
    tokenizer: Callable[[Any], np.ndarray]
    separator: Separator | None = None
    # text contexts [77, D] encoded when the models were built ('' = the null context): with
    # them the text tower need not stay loaded (params may then hold no 'text')
    contexts: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)

    @property
    def audio(self) -> ae.AudioEncoder | None:
        """The ImageBind audio trunk + CIM, or None when the run encodes no audio."""
        if not self.spec.has_audio:
            return None
        s, p = self.spec, self.params
        return ae.AudioEncoder(s.imagebind, p["imagebind_audio"], s.cim, p["cim"])

    @property
    def random(self) -> bool:
        return self.spec.random


def cast_floating(tree: Any, dtype: Any) -> Any:
    """Device arrays of `tree` with floating leaves in `dtype` (other leaves as they are)."""

    def cast(a):
        a = jnp.asarray(a)
        return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree.map(cast, tree)


# ----------------------------------------------------------------------------- tiny
def tiny_configs(dtype: str = "float32") -> tuple[UNetConfig, VAEConfig, ct.ClipTextConfig]:
    """Mutually consistent tiny configs: context width 64 everywhere."""
    unet = UNetConfig.tiny(temporal=True, context_dim=64, dtype=dtype)
    vae = VAEConfig.tiny(dtype=jnp.dtype(dtype))
    text = ct.tiny(embed_dim=None, dtype=dtype)
    return unet, vae, text


def tiny_spec(
    dtype: str = "float32", *, with_audio: bool = True, num_queries: int = 4
) -> ModelSpec:
    """The spec of `init_random_models` (configs only: box checks need no weights)."""
    unet, vae, text = tiny_configs(dtype)
    ib = cim = None
    if with_audio:
        ib = ae.tiny_imagebind(jnp.dtype(dtype))
        cim = ae.tiny_cim(unet.context_dim, num_queries, jnp.dtype(dtype))
    return ModelSpec(unet, vae, text, ib, cim, random=True)


def tokenizer_from(bpe_path: str | None, allow_hash: bool = False) -> Callable[[Any], np.ndarray]:
    """The CLIP BPE tokenizer of `bpe_path` (None: where `default_bpe_path` looks); with
    `allow_hash`, the hash tokenizer when no vocabulary is found (tiny random models only)."""
    from maestro_jax.models.tokenizer import get_tokenizer

    try:
        return get_tokenizer(bpe_path or None)
    except FileNotFoundError:
        if not allow_hash:
            raise
        return HashTokenizer()


def init_random_models(
    seed: int = 0,
    dtype: str = "float32",
    *,
    with_audio: bool = True,
    num_queries: int = 4,
    bpe_path: str | None = None,
    separator: bool = False,
) -> Models:
    """Tiny random weights for every stage (tests, `:runlocal` configs, CPU demos)."""
    spec = tiny_spec(dtype, with_audio=with_audio, num_queries=num_queries)
    x = jnp.zeros((1, 2, 8, 8, 4), jnp.float32)
    ctx = jnp.zeros((1, 77, spec.context_width), jnp.float32)
    unet = random_init(UNet(spec.unet), x, jnp.zeros((1,)), ctx, jnp.ones((1,)), seed=seed)
    vae = random_init(AutoencoderKL(spec.vae), jnp.zeros((1, 8, 8, 3)), seed=seed + 1)
    params = {
        "unet": unet["params"],
        "vae": {k: vae["params"][k] for k in VAE_DECODER_KEYS},
        "text": random_like(ct.abstract_params(spec.text), seed + 2),
    }
    if with_audio:
        enc = ae.init_random(spec.imagebind, spec.cim, seed + 3)
        params |= {"imagebind_audio": enc.ib_params, "cim": enc.cim_params}
    sep = separator_on_device(init_random_separator(seed + 4)) if separator else None
    return Models(
        spec, cast_floating(params, spec.dtype), tokenizer_from(bpe_path, allow_hash=True), sep
    )


# ----------------------------------------------------------------------------- real weights
def load_vc2_params(checkpoint: Any, dtype: Any) -> dict[str, Any]:
    """UNet and VAE decoder of a `convert.videocrafter` folder, on the device in `dtype` (cast
    while reading; one copy). The text tower is read on its own (`load_text_params`)."""
    return {
        "unet": load_params_on_device(checkpoint / "unet", dtype)[0],
        "vae": load_params_on_device(checkpoint / "vae", dtype, keys=VAE_DECODER_KEYS)[0],
    }


def load_text_params(checkpoint: Any, dtype: Any) -> Any:
    return load_params_on_device(checkpoint / "text", dtype)[0]


def separator_on_device(sep: Separator) -> Separator:
    """The separator with its weights on the device (one copy; its own dtype, float32)."""
    return dataclasses.replace(
        sep, sep_variables=jax.device_put(sep.sep_variables),
        text_variables=jax.device_put(sep.text_variables),
    )  # fmt: skip


# ----------------------------------------------------------------------------- text
def encode_prompts(
    text_params: Any, spec: ModelSpec, tokenizer: Any, prompts: Sequence[str]
) -> dict[str, jax.Array]:
    """{prompt: its context [77, D]}, each prompt encoded on its own (as `text_context` does)."""
    return {p: ct.encode_text(text_params, spec.text, tokenizer, [p])[0] for p in prompts}


def text_context(models: Models, prompts: str | Sequence[str]) -> jax.Array:
    """Prompts -> [N, 77, D] (penultimate layer, as VideoCrafter2): the contexts encoded when
    the models were built, else the text tower's."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if all(p in models.contexts for p in prompts):
        return jnp.stack([models.contexts[p] for p in prompts])
    if "text" not in models.params:
        raise ValueError(
            f"the text tower is not loaded (these models encoded {sorted(models.contexts)}): "
            "build them with the prompts they are to sample"
        )
    return ct.encode_text(models.params["text"], models.spec.text, models.tokenizer, prompts)


def null_context(models: Models) -> jax.Array:
    """The empty prompt's embedding [77, D]: the null / unconditional context."""
    return text_context(models, [""])[0]
