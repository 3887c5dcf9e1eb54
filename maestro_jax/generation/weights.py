"""Where a generation run's weights are, checked before any weight is read.

`base_spec` reads the VideoCrafter2 folder's config files (the UNet, VAE and text configs: box
checks and the frame count need nothing more); `check_weights` then checks everything the planned
jobs use: the CLIP vocabulary, the ImageBind and CIM folders (one CIM per job `checkpoint`), the
separator for mixtures. Every error names the flag to pass. The result, `RunWeights`, says what
to load and the spec of each job group; `runner.ModelPool` loads it.

The CLIP vocabulary, in this order: `--config.bpe_path`; the copy `convert.videocrafter --bpe`
stored in the converted text folder (checked against its recorded sha256); `$MAESTRO_CLIP_BPE`
or an installed `open_clip`. A text tower trained with the hash tokenizer (the toy world) needs
none.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from maestro_jax.audio import encoder as ae
from maestro_jax.checkpoints import params_keys, read_config
from maestro_jax.generation.jobs import InputError
from maestro_jax.generation.models import ModelSpec, tiny_spec, tokenizer_from
from maestro_jax.models import clip_text as ct
from maestro_jax.models.tokenizer import BPE_FILENAME, HashTokenizer
from maestro_jax.models.unet import UNetConfig
from maestro_jax.models.vae import VAEConfig

CONVERT_VC2 = "python -m convert.videocrafter model.ckpt DIR --bpe bpe_simple_vocab_16e6.txt.gz"
GET_BPE = (
    "it ships in the open_clip_torch wheel: `pip download open_clip_torch --no-deps -d /tmp/oc` "
    f"then `unzip -j /tmp/oc/open_clip_torch-*.whl open_clip/{BPE_FILENAME}`"
)


def _params_folder(path: str, flag: str, how: str) -> Path:
    """`path` (the value of `flag`, e.g. '--config.cim_checkpoint') as a converted params folder,
    or an InputError naming the flag."""
    if not path:
        raise InputError(f"set {flag} to a converted folder ({how})")
    p = Path(path)
    if not (p / "params").is_dir():
        raise InputError(
            f"{flag}={path}: {p / 'params'} is missing: not a converted folder ({how})"
        )
    return p


def compute_dtype(cfg: Any) -> str:
    """`--config.dtype`; 'auto' is float32 on a CPU and bfloat16 on an accelerator. (XLA's CPU
    dots compute bfloat16 in float32: they convert the bfloat16 weights, and the sampler keeps
    the converted copies live across its steps, so bfloat16 weights there cost more memory than
    float32 ones and no time.)"""
    if cfg.dtype != "auto":
        return str(cfg.dtype)
    import jax

    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


# ----------------------------------------------------------------------------- VideoCrafter2
def vc2_folder(cfg: Any) -> Path:
    """The checked `--config.checkpoint` folder (unet/, vae/, text/ each with params and config)."""
    if not cfg.checkpoint:
        raise InputError(
            f"set --config.checkpoint to a converted VideoCrafter2 folder ({CONVERT_VC2}), "
            "or use a :runlocal config"
        )
    root = Path(cfg.checkpoint)
    for sub in ("unet", "vae", "text"):
        if not ((root / sub / "params").is_dir() and (root / sub / "config.json").is_file()):
            raise InputError(
                f"--config.checkpoint={cfg.checkpoint}: {root / sub} is missing or incomplete: "
                f"convert VideoCrafter2 into it first ({CONVERT_VC2.replace('DIR', str(root))})"
            )
    return root


def base_spec(cfg: Any) -> ModelSpec:
    """The UNet, VAE and text configs of the run (audio configs come with `check_weights`),
    from the tiny presets or the VideoCrafter2 folder's config files; no weight is read."""
    if cfg.model == "tiny":
        return tiny_spec(compute_dtype(cfg), with_audio=False, num_queries=cfg.num_queries)
    root = vc2_folder(cfg)
    dtype = compute_dtype(cfg)
    unet_meta = read_config(root / "unet")
    unet = UNetConfig(**{**unet_meta["unet"], "dtype": dtype, "attn_impl": cfg.attn_impl})
    vd = {k: v for k, v in read_config(root / "vae")["vae"].items() if k != "dtype"}
    vae = VAEConfig(**{**vd, "ch_mult": tuple(vd["ch_mult"]),
                       "attn_resolutions": tuple(vd["attn_resolutions"]),
                       "dtype": jnp.dtype(dtype)})  # fmt: skip
    text = dataclasses.replace(ct.ClipTextConfig.from_dict(read_config(root / "text")), dtype=dtype)
    return ModelSpec(unet, vae, text, trained_frames=unet_meta.get("trained_frames"))


# ----------------------------------------------------------------------------- tokenizer
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def clip_tokenizer(cfg: Any) -> Any:
    """The run's text tokenizer (see the module docstring for where the vocabulary is found)."""
    if cfg.model == "tiny":
        return tokenizer_from(cfg.bpe_path or None, allow_hash=True)
    text_dir = vc2_folder(cfg) / "text"
    meta = read_config(text_dir)
    if meta.get("tokenizer") == "hash":  # the toy world's text tower (no BPE file)
        return HashTokenizer()
    if cfg.bpe_path:
        if not Path(cfg.bpe_path).is_file():
            raise InputError(f"--config.bpe_path={cfg.bpe_path}: no such file ({GET_BPE})")
        return _read_bpe(Path(cfg.bpe_path), "--config.bpe_path")
    if meta.get("bpe"):
        stored = text_dir / meta["bpe"]
        if not stored.is_file() or (
            meta.get("bpe_sha256") and _sha256(stored) != meta["bpe_sha256"]
        ):
            raise InputError(
                f"{stored} (the CLIP vocabulary stored by the conversion) is missing or damaged: "
                f"pass --config.bpe_path={BPE_FILENAME} or convert again with --bpe ({GET_BPE})"
            )
        return _read_bpe(stored, str(text_dir))
    try:
        return tokenizer_from(None)
    except FileNotFoundError:
        raise InputError(
            f"the CLIP vocabulary {BPE_FILENAME} was not found: pass --config.bpe_path=FILE, "
            f"or convert with `{CONVERT_VC2}` so that {text_dir} stores it ({GET_BPE})"
        ) from None


def _read_bpe(path: Path, source: str) -> Any:
    try:
        return tokenizer_from(str(path))
    except (OSError, ValueError, EOFError, UnicodeDecodeError) as e:
        raise InputError(
            f"{source}: {path} is not a readable CLIP vocabulary {BPE_FILENAME} ({e}; {GET_BPE})"
        ) from None


# ----------------------------------------------------------------------------- audio, separator
def cim_folder(path: str, flag: str = "--config.cim_checkpoint") -> Path:
    return _params_folder(path, flag, "python -m convert.cim perceiver.pth DIR")


def imagebind_folder(cfg: Any) -> Path:
    how = "python -m convert.imagebind imagebind_huge.pth DIR --modalities audio"
    p = _params_folder(cfg.imagebind_checkpoint, "--config.imagebind_checkpoint", how)
    keys = set(params_keys(p))
    if keys & {"vision", "text"} and "audio" not in keys:  # modalities, but not the audio one
        raise InputError(
            f"--config.imagebind_checkpoint={p} holds no audio trunk ({sorted(keys)}): {how}"
        )
    return p


@dataclasses.dataclass(frozen=True, eq=False)
class RunWeights:
    """What a run loads (all checked): the base spec and tokenizer, the audio folders per CIM
    key ('' = the config's CIM, else a job's `checkpoint`), the separator's folders."""

    cfg: Any
    spec: ModelSpec
    tokenizer: Any
    imagebind: Path | None = None
    cims: dict[str, Path | None] = dataclasses.field(default_factory=dict)
    audio_specs: dict[str, ModelSpec] = dataclasses.field(default_factory=dict)
    separator: Path | None = None
    clap_tokenizer_dir: Path | None = None

    def spec_for(self, cim_key: str | None, audio: bool) -> ModelSpec:
        return self.audio_specs[cim_key or ""] if audio else self.spec


def check_weights(
    cfg: Any, spec: ModelSpec, cim_keys: set[str], need_separator: bool
) -> RunWeights:
    """Check every file the run reads (see the module docstring); `cim_keys` lists the CIM
    folders of the jobs that encode audio ('' = --config.cim_checkpoint), empty when none does."""
    tokenizer = clip_tokenizer(cfg)
    dtype = spec.dtype
    ib_dir, cims, specs = None, {}, {}
    if cim_keys:
        if cfg.model == "tiny":
            ib = tiny_spec(str(dtype), num_queries=cfg.num_queries)
            ib_cfg, default_cim = ib.imagebind, ib.cim
        else:
            ib_dir = imagebind_folder(cfg)
            ib_cfg, default_cim = ae.imagebind_config(read_config(ib_dir), dtype), None
        for key in sorted(cim_keys):
            if key:
                cims[key] = cim_folder(key, "the job's checkpoint")
            else:  # tiny models use their random CIM unless a job names a folder
                cims[key] = cim_folder(cfg.cim_checkpoint) if cfg.model != "tiny" else None
            cim_cfg = ae.cim_config(read_config(cims[key]), dtype) if cims[key] else default_cim
            if cim_cfg.embed_dim != ib_cfg.audio_width or cim_cfg.output_dim != spec.context_width:
                raise InputError(
                    f"the CIM {cims[key] or '(tiny)'} (embed {cim_cfg.embed_dim}, output "
                    f"{cim_cfg.output_dim}) does not fit ImageBind's audio width "
                    f"{ib_cfg.audio_width} and the UNet's context width {spec.context_width}"
                )
            specs[key] = dataclasses.replace(spec, imagebind=ib_cfg, cim=cim_cfg)
    sep = clap = None
    if need_separator and cfg.model != "tiny":
        how = "python -m convert.audiosep audiosep_base_4M_steps.ckpt DIR"
        sep = _params_folder(cfg.separator_checkpoint, "--config.separator_checkpoint", how)
        if cfg.clap_tokenizer_dir:
            clap = Path(cfg.clap_tokenizer_dir)
            if not all((clap / f).is_file() for f in ("vocab.json", "merges.txt")):
                raise InputError(
                    f"--config.clap_tokenizer_dir={clap}: want roberta-base's vocab.json and "
                    "merges.txt there"
                )
    return RunWeights(cfg, spec, tokenizer, ib_dir, cims, specs, sep, clap)
