"""VideoCrafter2 `model.ckpt` -> one folder of Flax params for `maestro_jax.generate`.

    python -m convert.videocrafter checkpoints/base_512_v2/model.ckpt ckpt/vc2 \
        [--bpe bpe_simple_vocab_16e6.txt.gz] [--trust_pickle]

The checkpoint holds the UNet (`model.diffusion_model.*`), the VAE (`first_stage_model.*`), the
OpenCLIP text tower (`cond_stage_model.model.*`) and the schedule buffers; it is written as
OUT/unet, OUT/vae and OUT/text (orbax params + config.json each; see `convert.unet`,
`convert.vae`, `convert.clip_text`) and OUT/config.json. Every key is accounted for: each part is
converted strictly and the schedule buffers are checked against `Schedule.vc2()`.

Reading: `.ckpt`/`.pth` need torch (`pip install -e .[convert]`); a `.safetensors` export does
not. The file is memory-mapped with `torch.load(mmap=True, weights_only=True)`; float32,
float16 and bfloat16 tensors are accepted (the output is float32), in Lightning's
`{"state_dict": ...}` layout, as a bare state dict, or in DeepSpeed's `{"module": ...}` layout
with its `_forward_module.` key prefix (as VideoCrafter's own loader accepts). A file that pickles
other Python objects is refused unless `--trust_pickle` (see `convert.common.load_state_dict`).

Memory: one part at a time. The UNet is converted (the pages of each source tensor given back as
soon as it is converted), saved and dropped, then the VAE, then the text tower, so the peak is
about one float32 copy of the UNet (5.65 GB) plus the runtime.

Finished or not: everything is written into a hidden sibling `.OUT.partial-HOST-PID-XXXX/` that is
renamed to OUT only after the last part, with OUT/config.json (the manifest: parts, source,
tokenizer) written last inside it. So a folder OUT that exists is complete, and
`is_finished(OUT)` (OUT/config.json exists) is the whole check. An error, Ctrl-C or SIGTERM
removes the partial folder; one left by a killed process is removed by the next run for the same
OUT. A rerun replaces an existing OUT only once the new one is complete.

Tokenizer: `--bpe FILE` stores the CLIP vocabulary `bpe_simple_vocab_16e6.txt.gz` in OUT/text/
(recorded as "bpe" in OUT/text/config.json and OUT/config.json), so generation needs no flag
for it. The file is checked to be a readable CLIP BPE vocabulary before any weight is read. It
ships inside the `open_clip_torch` wheel; to get it without installing torch or open_clip:

    pip download open_clip_torch --no-deps -d /tmp/oc
    unzip -j /tmp/oc/open_clip_torch-*.whl open_clip/bpe_simple_vocab_16e6.txt.gz -d .

(1,356,917 bytes, sha256 924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a).
The command is in `convert/videocrafter/__main__.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from convert.clip_text import convert_state_dict as convert_text
from convert.common import ConversionError, free_memory, load_state_dict, select_prefix
from convert.unet import convert_unet
from convert.vae import convert_vae
from maestro_jax.checkpoints import CONFIG_FILE, save_params, staging_dir
from maestro_jax.models import clip_text as ct
from maestro_jax.models.tokenizer import BPE_FILENAME
from maestro_jax.models.unet import UNetConfig
from maestro_jax.models.vae import VAEConfig

PARTS = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.model.")
SCHEDULE_KEYS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "scale_arr",
)  # fmt: skip


def check_schedule(sd: Mapping[str, np.ndarray]) -> None:
    """The checkpoint's own schedule buffers must be the one the sampler uses (to 1e-6, or to
    the precision of a float16 / bfloat16 checkpoint)."""
    import jax.numpy as jnp

    from maestro_jax.diffusion import Schedule

    if "alphas_cumprod" not in sd:
        return
    ours = np.asarray(Schedule.vc2().alphas_cumprod, np.float64)
    stored = np.asarray(sd["alphas_cumprod"])
    tol = max(1e-6, float(jnp.finfo(stored.dtype).eps))
    theirs = stored.astype(np.float64)
    if theirs.shape != ours.shape or np.abs(theirs - ours).max() > tol:
        raise ConversionError("alphas_cumprod in the checkpoint differs from VideoCrafter2's")


def check_bpe(path: str | os.PathLike) -> Path:
    """`path` must be a readable CLIP BPE vocabulary (the merges file the tokenizer loads)."""
    from maestro_jax.models.tokenizer import ClipTokenizer

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"--bpe {path}: no such file")
    try:
        ClipTokenizer(path)
    except (OSError, ValueError, EOFError, UnicodeDecodeError) as e:
        raise ConversionError(
            f"--bpe {path} is not a readable CLIP BPE vocabulary ({BPE_FILENAME}): {e}"
        ) from None
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_finished(out: str | os.PathLike) -> bool:
    """Whether OUT is a complete conversion (its manifest, written last, exists)."""
    return (Path(out) / CONFIG_FILE).is_file()


def convert_videocrafter(
    sd: Mapping[str, np.ndarray],
    out: str | Path,
    unet_config: UNetConfig | None = None,
    vae_config: VAEConfig | None = None,
    text_config: ct.ClipTextConfig | None = None,
    source: str = "",
    trained_frames: int = 16,
    *,
    bpe: str | os.PathLike | None = None,
) -> Path:
    """Convert the three parts of a VC2-style state dict, one at a time, into OUT/{unet,vae,text}
    + OUT/config.json (see the module docstring for the memory and the finished-folder rules).

    `trained_frames` (16 for VideoCrafter2's `temporal_length`) is recorded so generation can
    refuse another frame count with a clear message. `bpe`: the CLIP vocabulary to store with the
    text tower."""
    bpe = check_bpe(bpe) if bpe is not None else None
    unet_config = unet_config or UNetConfig.vc2()
    vae_config = vae_config or VAEConfig.sd()
    text_config = text_config or ct.vit_h14()
    stray = sorted(k for k in sd if not k.startswith(PARTS) and k not in SCHEDULE_KEYS)
    if stray:
        raise ConversionError(f"unexpected keys in the checkpoint: {stray[:20]}")
    check_schedule(sd)
    out = Path(out).absolute()
    with staging_dir(out, tag="partial") as tmp:
        unet = convert_unet(select_prefix(sd, PARTS[0]), unet_config, "ldm")
        meta = {"unet": dataclasses.asdict(unet_config), "kind": "vc2", "format": "ldm",
                "source": source, "trained_frames": trained_frames}  # fmt: skip
        save_params(tmp / "unet", unet, meta, compress=False)
        del unet
        free_memory()  # the UNet (5.65 GB) is on disk: give its memory back before the next part
        vae = convert_vae(sd, vae_config, "ldm")
        meta = {"model": "AutoencoderKL", "vae": vae_config.to_dict(), "source": source}
        save_params(tmp / "vae", vae, meta, compress=False)
        del vae
        free_memory()
        text, text_config = convert_text(select_prefix(sd, PARTS[2]), text_config)
        meta = {**text_config.to_dict(), "model": "clip_text", "layout": "openclip",
                "source": source}  # fmt: skip
        files = {}
        if bpe is not None:
            meta |= {"tokenizer": "clip_bpe", "bpe": BPE_FILENAME, "bpe_sha256": _sha256(bpe)}
            files[BPE_FILENAME] = bpe
        save_params(tmp / "text", text, meta, files=files, compress=False)
        del text
        free_memory()
        manifest = {
            "model": "videocrafter2",
            "parts": ["unet", "vae", "text"],
            "source": source,
            "trained_frames": trained_frames,
            "bpe": f"text/{BPE_FILENAME}" if bpe is not None else None,
        }
        with open(tmp / CONFIG_FILE, "w") as f:  # last: the folder is complete
            json.dump(manifest, f, indent=1, sort_keys=True)
    return out


def convert_file(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    bpe: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    **kwargs,
) -> Path:
    """`model.ckpt` (or a .safetensors export) -> OUT, reading the file memory-mapped.
    The BPE file is checked before any weight is read; `kwargs` go to `convert_videocrafter`."""
    if bpe is not None:
        check_bpe(bpe)
    sd = load_state_dict(src, dtype=None, trust_pickle=trust_pickle)
    return convert_videocrafter(sd, out, source=str(src), bpe=bpe, **kwargs)
