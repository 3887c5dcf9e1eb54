"""Train the text-queried separator (AudioSep ResUNet30 + FiLM) on the toy world, on CPU.

    python -m maestro_jax.train --config=configs/toy.py:separator --workdir=/tmp/toy_sep
    (dispatch on `config.task == "separator"`; library entry point: `train(config, workdir)`)

Data: `maestro_jax.toy.batches.separation_batch(rng, batch, seconds, sr, max_sources)` gives (mixture
[B, N], target [B, N], query labels [B]); the target is one object's stem in the mixture and
the query is that object's label. The toy audio is generated directly at `config.sample_rate`
(the separator's STFT is n_fft 2048 / hop 320 in samples whatever the rate: nothing in
ResUNet30 depends on 32 kHz, so 16 kHz halves the frames and the compute).

Queries: every label goes through a FROZEN, randomly initialised tiny CLAP text encoder
(`config.text`), tokenised by `clap_text.byte_fallback_tokens` (UTF-8 bytes folded into
[3, vocab_size), wrapped in <s> ... </s>): that is exactly what `separation.separate_mixture` does
when a `Separator` has no tokenizer, so the exported folder separates by label without any
tokenizer file. The label embeddings [L, joint] are computed once; the train step only indexes
them.

Model: ResUNet30 at `config.separator.channels`. Its BatchNorms train as torch's do (batch
statistics, running statistics updated with momentum 0.1: `models/audiosep.py`
BatchNormInference with `batch_stats` mutable); the running statistics are first set from one
batch of training data (`separator_init.calibrate_batch_stats`, a data-dependent init) and are
saved in every checkpoint and exported with the weights (inference uses them). Loss: AudioSep's
`l1_wav`, mean |separated - target|; optax Adam (linear warm-up, global-norm clipping); one
jitted step, run by the shared loop (`training.loop`).

Workdir layout:
    metrics.jsonl       one JSON line per log step: step, loss and lr (means since the last
                        log), step_time_s, elapsed_s; eval steps add eval_loss, si_sdr_db,
                        si_sdri_db (SI-SDR improvement over the mixture, mean over a fixed
                        held-out batch)
    checkpoints/<step>  orbax: params + opt_state + batch_stats, the config, the step (batches
                        are a pure function of (seed, step)); the newest readable one is
                        resumed from; the last `keep_checkpoints` are kept
    export/             the inference folder: {'separator': {'params', 'batch_stats'},
                        'text': {'params'}} + config.json whose `separate_config` is a complete
                        `configs/separate.py` config (sample rate, widths, tiny text encoder)
                        -> `load_separator(export)` -> `separation.separate_mixture`
    label_embeddings.npz  `embeddings` [L, joint] + `labels` (for `separate --query-embeddings`)
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from maestro_jax.checkpoints import load_params, save_params
from maestro_jax.models.clap_text import ClapTextConfig, byte_fallback_tokens
from maestro_jax.models.stft import N_FFT
from maestro_jax.training import loop as loop_lib
from maestro_jax.training import validate
from maestro_jax.training.separator_init import calibrate_batch_stats, phase_identity_init
from maestro_jax.training.validate import ConfigError

_DATA_API = ("labels", "separation_batch")


# ----------------------------------------------------------------------------- config
def validate_config(config: ml_collections.ConfigDict) -> None:
    """ConfigError (one line naming the field and what is allowed), before any compute."""
    validate.one_of(config, "task", ("separator",))
    validate.at_least(config, 1, "sample_rate", "batch_size", "total_steps", "checkpoint_every")
    validate.at_least(config, 1, "keep_checkpoints", "log_every", "eval_every", "eval_batch")
    validate.at_least(config, 0, "warmup_steps", "seed")
    validate.at_least(config, 2, "max_sources")
    validate.positive(config, "learning_rate", "train_seconds", "eval_seconds")
    validate.non_negative(config, "grad_clip")
    sr = config.sample_rate
    for key in ("train_seconds", "eval_seconds"):
        n = int(round(float(config[key]) * sr))
        if n <= N_FFT:
            raise ConfigError(
                f"config.{key}={config[key]}: gives {n} samples at {sr} Hz; must give more than "
                f"n_fft={N_FFT}"
            )
    channels = tuple(config.separator.get("channels", ()))
    if len(channels) != 6 or not all(isinstance(c, int) and c >= 1 for c in channels):
        raise ConfigError(
            f"config.separator.channels={channels}: must be 6 positive ints (ResUNet30 levels)"
        )
    validate.one_of(config, "separator.dtype", ("float32", "bfloat16"))
    try:
        tc = ClapTextConfig(**dict(config.text))
    except TypeError as e:
        raise ConfigError(f"config.text: {e}") from None
    if tc.hidden % tc.heads:
        raise ConfigError(
            f"config.text.heads={tc.heads}: text.hidden {tc.hidden} must be divisible by it"
        )
    validate.at_least(config, 4, "text.vocab_size")
    _data_module(config)


def _data_module(config: ml_collections.ConfigDict):
    try:
        mod = importlib.import_module(config.data_module)
    except ImportError as e:
        raise ConfigError(
            f"config.data_module={config.data_module!r} cannot be imported: {e}"
        ) from None
    missing = [f for f in _DATA_API if not hasattr(mod, f)]
    if missing:
        raise ConfigError(f"config.data_module={config.data_module!r}: lacks {missing}")
    return mod


def separate_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The `configs/separate.py` config that runs the trained separator (whole-file passes)."""
    from maestro_jax.audio import separation as sep_lib

    c = sep_lib.load_config(None)
    c.sample_rate = int(config.sample_rate)
    c.separator.channels = tuple(int(x) for x in config.separator.channels)
    c.separator.dtype = str(config.separator.get("dtype", "float32"))
    c.text.update(dict(config.text))
    c.max_text_tokens = 64  # byte_fallback_tokens' length
    c.chunk_seconds = 0.0
    c.random_init = False
    c.seed = int(config.seed)
    return c


# ----------------------------------------------------------------------------- pieces
def label_embeddings(text_variables: Any, sep_cfg: ml_collections.ConfigDict, labels: list[str]):
    """[L, joint] unit-norm embeddings of `labels` through the (frozen) text encoder, tokenised
    exactly as `separation.separate_mixture` does without a tokenizer."""
    from maestro_jax.audio import separation as sep_lib

    ids, mask = byte_fallback_tokens(list(labels), sep_cfg.text.vocab_size)
    return np.asarray(sep_lib.embed_texts(text_variables, sep_cfg, ids, mask), np.float32)


def si_sdr(estimate: np.ndarray, target: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Scale-invariant SDR in dB per row of [B, N] arrays (float64)."""
    est = np.asarray(estimate, np.float64)
    ref = np.asarray(target, np.float64)
    alpha = (est * ref).sum(-1, keepdims=True) / ((ref * ref).sum(-1, keepdims=True) + eps)
    s = alpha * ref
    e = est - s
    return 10 * np.log10(((s * s).sum(-1) + eps) / ((e * e).sum(-1) + eps))


def _batch(data, config, rng, batch, seconds, label_index):
    mix, tgt, q = data.separation_batch(
        rng, batch, seconds=seconds, sr=config.sample_rate, max_sources=config.max_sources
    )
    mix = np.asarray(mix, np.float32)
    tgt = np.asarray(tgt, np.float32)
    if mix.shape != tgt.shape or mix.ndim != 2 or len(q) != mix.shape[0]:
        raise ValueError(f"separation_batch gave mixture {mix.shape}, target {tgt.shape}, {len(q)}")
    unknown = sorted(set(q) - set(label_index))
    if unknown:
        raise ValueError(f"separation_batch returned labels {unknown} not in labels()")
    return mix, tgt, np.array([label_index[s] for s in q], np.int32)


def _train_rng(seed: int, step: int) -> np.random.Generator:
    # A pure function of (seed, step): a resumed run sees exactly the batches it would have seen.
    return np.random.default_rng([seed, 0, step])


def _eval_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1])  # held out: a stream training never draws from


# ----------------------------------------------------------------------------- training
def _make_step(model: Any, tx: Any, schedule: Any):
    def loss_fn(p, bs, emb, mix, tgt, q):
        # BatchNorm in training mode (batch statistics; running ones updated), as AudioSep trains
        y, state = model.apply(
            {"params": p, "batch_stats": bs}, mix, emb[q], mutable=["batch_stats"]
        )
        return jnp.mean(jnp.abs(y - tgt)), state["batch_stats"]  # AudioSep's l1_wav

    @jax.jit
    def step(state, batch):
        p, o, bs = state["params"], state["opt_state"], state["batch_stats"]
        args = (batch["emb"], batch["mix"], batch["tgt"], batch["q"])
        (loss, bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, bs, *args)
        updates, o = tx.update(grads, o, p)
        new = {"params": optax.apply_updates(p, updates), "opt_state": o, "batch_stats": bs}
        return new, {"loss": loss, "lr": schedule(batch["step"])}

    return step


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Train to `config.total_steps` (resuming from the newest readable checkpoint in
    `workdir`), then export `workdir/export`. Returns {step, metrics (the last record, with
    the last evaluation), export, resumed_from, labels}."""
    from maestro_jax.audio import separation as sep_lib

    validate_config(config)
    data = _data_module(config)
    labels = list(data.labels())
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"{config.data_module}.labels() must be distinct labels, got {labels}")
    label_index = {s: i for i, s in enumerate(labels)}
    workdir = Path(workdir).absolute()
    sep_cfg = separate_config(config)
    seed = int(config.seed)

    # Frozen random text encoder -> label embeddings (recomputed on resume: a pure function of
    # the seed); random separator whose BatchNorm statistics are calibrated on training data.
    sep_vars, text_vars = sep_lib.random_variables(sep_cfg, seed)
    emb = label_embeddings(text_vars, sep_cfg, labels)
    emb_j = jnp.asarray(emb)
    params = phase_identity_init(sep_vars["params"])
    model = sep_lib.build_separator(sep_cfg)
    schedule = optax.linear_schedule(
        0.0, float(config.learning_rate), max(int(config.warmup_steps), 1)
    )
    chain = [optax.adam(schedule)]
    if float(config.grad_clip) > 0:
        chain.insert(0, optax.clip_by_global_norm(float(config.grad_clip)))
    tx = optax.chain(*chain)
    state = {
        "params": params,
        "opt_state": tx.init(params),
        "batch_stats": jax.tree.map(jnp.asarray, sep_vars["batch_stats"]),
    }

    def fresh_start(state):
        mix, _, q = _batch(
            data, config, np.random.default_rng([seed, 2]), 8, config.train_seconds, label_index
        )
        bs = calibrate_batch_stats(
            model, state["params"], state["batch_stats"], jnp.asarray(mix), emb_j[q]
        )
        return {**state, "batch_stats": bs}

    def batch(step: int) -> dict:
        rng = _train_rng(seed, step - 1)
        mix, tgt, q = _batch(
            data, config, rng, config.batch_size, config.train_seconds, label_index
        )
        return {"emb": emb_j, "mix": mix, "tgt": tgt, "q": q, "step": np.int32(step)}

    ev_mix, ev_tgt, ev_q = _batch(
        data, config, _eval_rng(seed), config.eval_batch, config.eval_seconds, label_index
    )
    ev_ok = (ev_tgt**2).sum(-1) > 1e-8  # SI-SDR of a silent target is undefined
    if not ev_ok.any():
        raise ValueError("every held-out target is silent; cannot evaluate SI-SDR")
    base_sdr = si_sdr(ev_mix, ev_tgt)[ev_ok]
    separate_fn = jax.jit(
        lambda p, bs, mix, q: model.apply({"params": p, "batch_stats": bs}, mix, emb_j[q])
    )

    def evaluate(step: int, state: Any, out: Any) -> dict:
        est = np.asarray(separate_fn(state["params"], state["batch_stats"], ev_mix, ev_q))
        sdr = si_sdr(est, ev_tgt)[ev_ok]
        return {
            "eval_loss": float(np.abs(est - ev_tgt).mean()),
            "si_sdr_db": float(sdr.mean()),
            "si_sdri_db": float((sdr - base_sdr).mean()),
        }

    def export(state) -> dict:
        out = export_separator(
            workdir / "export", state["params"], state["batch_stats"], text_vars, config, labels
        )
        _write_npz_atomic(workdir / "label_embeddings.npz", embeddings=emb, labels=np.array(labels))
        return {"export": str(out), "labels": labels}

    task = loop_lib.Task(
        name="separator",
        state=state,
        step=_make_step(model, tx, schedule),
        batch=batch,
        export=export,
        config=config.to_dict(),
        fresh_start=fresh_start,
        hooks=[loop_lib.Hook(int(config.eval_every), evaluate, at_end=True)],
        progress=True,
    )
    loop = loop_lib.LoopConfig(
        total_steps=int(config.total_steps),
        log_every=int(config.log_every),
        checkpoint_every=int(config.checkpoint_every),
        keep=int(config.keep_checkpoints),
    )
    return loop_lib.run(task, loop, workdir)


def _write_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def export_separator(
    out: Path,
    params: Any,
    batch_stats: Any,
    text_variables: Any,
    config: ml_collections.ConfigDict,
    labels: list[str],
) -> Path:
    """Write the inference folder (layout of `convert.audiosep`) + a config.json that says how
    it was made and holds the complete `separate_config`."""
    sep_cfg = separate_config(config)
    meta = {
        "model": "audiosep",
        "source": "maestro_jax.training.separator (toy world)",
        "separator": {
            "channels": list(sep_cfg.separator.channels),
            "sample_rate": sep_cfg.sample_rate,
        },
        "text": dataclasses.asdict(ClapTextConfig(**dict(config.text))),
        "text_encoder": "frozen random init (seed), byte_fallback_tokens, no tokenizer file",
        "labels": labels,
        "separate_config": json.loads(sep_cfg.to_json()),
        "train_config": config.to_dict(),
    }
    tree = {
        "separator": {"params": params, "batch_stats": batch_stats},
        "text": text_variables,
    }
    return save_params(out, tree, meta)


def load_separator(export_dir: str | os.PathLike):
    """`workdir/export` -> `separation.Separator` (no tokenizer: byte fallback, as trained).

    Equivalent to `separation.load_separator` once that reads `separate_config` from config.json.
    """
    from maestro_jax.audio import separation

    tree, meta = load_params(export_dir)
    if "separate_config" not in meta:
        raise ValueError(f"{export_dir}/config.json holds no separate_config (not an export?)")
    cfg = ml_collections.ConfigDict(meta["separate_config"])
    return separation.Separator(cfg, tree["separator"], tree.get("text"), None)
