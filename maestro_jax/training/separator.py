"""Train the text-queried separator (AudioSep ResUNet30 + FiLM) on the toy world, on CPU.

    python -m maestro_jax.train --config=configs/toy.py:separator --workdir=/tmp/toy_sep
    (dispatch on `config.task == "separator"`; library entry point: `train(config, workdir)`)

Data: `maestro_jax.toy.world.separation_batch(rng, batch, seconds, sr, max_sources)` gives (mixture
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
batch of training data (`calibrate_batch_stats`, a data-dependent init) and are saved in every
checkpoint and exported with the weights (inference uses them). Loss: AudioSep's `l1_wav`, mean |separated - target|; optax
Adam (linear warm-up, global-norm clipping); one jitted step.

Workdir layout:
    metrics.jsonl       one JSON line per log step: step, loss (mean since the last log), lr,
                        steps_per_s, elapsed_s; eval steps add eval_loss, si_sdr_db, si_sdri_db
                        (SI-SDR improvement over the mixture, mean over a fixed held-out batch)
    ckpt/step_XXXXXXXX  params + opt_state + step (`checkpoints.save_params`, atomic); the
                        newest one is resumed from; the last `keep_checkpoints` are kept
    export/             the inference folder: {'separator': {'params', 'batch_stats'},
                        'text': {'params'}} + config.json whose `separate_config` is a complete
                        `configs/separate.py` config (sample rate, widths, tiny text encoder)
                        -> `load_separator(export)` -> `separation.separate_mixture`
    label_embeddings.npz  `embeddings` [L, joint] + `labels` (for `separate --query-embeddings`)
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from maestro_jax.checkpoints import load_params, save_params
from maestro_jax.models.clap_text import ClapTextConfig, byte_fallback_tokens
from maestro_jax.models.stft import N_FFT
from maestro_jax.training.checkpoints import truncate_jsonl

CKPT_PATTERN = re.compile(r"^step_(\d{8})$")
BN0_VAR_FLOOR = 0.01  # BatchNorm calibration: variance floor relative to the mean over channels
_DATA_API = ("labels", "separation_batch")


# ----------------------------------------------------------------------------- config
def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming every problem of a separator training config (before compute)."""
    problems = []

    def need(cond: bool, msg: str) -> None:
        if not cond:
            problems.append(msg)

    if config.get("task") != "separator":
        raise ValueError(f"config.task must be 'separator', got {config.get('task')!r}")
    required = (
        "seed sample_rate train_seconds eval_seconds max_sources batch_size total_steps "
        "learning_rate warmup_steps grad_clip checkpoint_every keep_checkpoints log_every "
        "eval_every eval_batch separator text data_module"
    ).split()
    missing = [k for k in required if k not in config]
    if missing:
        raise ValueError(f"separator config lacks fields: {', '.join(missing)}")
    sr = config.sample_rate
    need(isinstance(sr, int) and sr > 0, f"sample_rate must be a positive int, got {sr!r}")
    for key in ("train_seconds", "eval_seconds"):
        n = int(round(float(config[key]) * sr)) if isinstance(sr, int) and sr > 0 else 0
        need(
            n > N_FFT,
            f"{key}={config[key]} gives {n} samples at {sr} Hz; need more than n_fft={N_FFT}",
        )
    for key in ("batch_size", "checkpoint_every", "log_every", "eval_every", "eval_batch"):
        need(
            isinstance(config[key], int) and config[key] >= 1,
            f"{key} must be an int >= 1, got {config[key]!r}",
        )
    for key in ("total_steps", "warmup_steps"):
        need(
            isinstance(config[key], int) and config[key] >= 0,
            f"{key} must be an int >= 0, got {config[key]!r}",
        )
    need(
        isinstance(config.keep_checkpoints, int) and config.keep_checkpoints >= 1,
        f"keep_checkpoints must be >= 1, got {config.keep_checkpoints!r}",
    )
    need(
        isinstance(config.max_sources, int) and config.max_sources >= 2,
        f"max_sources must be an int >= 2 (a mixture), got {config.max_sources!r}",
    )
    need(
        float(config.learning_rate) > 0,
        f"learning_rate must be > 0, got {config.learning_rate!r}",
    )
    need(float(config.grad_clip) >= 0, f"grad_clip must be >= 0, got {config.grad_clip!r}")
    channels = tuple(config.separator.get("channels", ()))
    need(
        len(channels) == 6 and all(isinstance(c, int) and c >= 1 for c in channels),
        f"separator.channels must be 6 positive ints (ResUNet30 levels), got {channels}",
    )
    dtype = config.separator.get("dtype", "float32")
    need(dtype in ("float32", "bfloat16"), f"separator.dtype {dtype!r} not float32/bfloat16")
    try:
        tc = ClapTextConfig(**dict(config.text))
    except TypeError as e:
        problems.append(f"text: {e}")
    else:
        need(tc.hidden % tc.heads == 0, f"text.hidden {tc.hidden} not divisible by heads")
        need(tc.vocab_size > 3, f"text.vocab_size must be > 3, got {tc.vocab_size}")
    if problems:
        raise ValueError("bad separator config:\n  " + "\n  ".join(problems))


def _data_module(config: ml_collections.ConfigDict):
    try:
        mod = importlib.import_module(config.data_module)
    except ImportError as e:
        raise ValueError(f"data_module {config.data_module!r} cannot be imported: {e}") from e
    missing = [f for f in _DATA_API if not hasattr(mod, f)]
    if missing:
        raise ValueError(f"data_module {config.data_module!r} lacks {missing}")
    return mod


def separate_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The `configs/separate.py` config that runs the trained separator (whole-file passes)."""
    from maestro_jax.audio import separation as sep_lib

    c = sep_lib.default_config()
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


def calibrate_batch_stats(
    model: Any, params: Any, batch_stats: Any, mixture: jax.Array, condition: jax.Array
) -> Any:
    """Data-dependent BatchNorm statistics for a freshly initialised ResUNet30.

    The separator's BatchNorms only run in inference mode, so without this every running
    mean/var is 0/1 and the activations of a random tiny ResUNet30 grow ~x3 per block (std
    ~1e4 at the decoder's end): the magnitude mask saturates at 0 and L1 training stalls there.
    Layer by layer in execution order (`_bn_order`), one forward pass per BatchNorm: record the
    layer's output, invert it to its input (x = (y - bias) / scale * sqrt(var + eps) + mean)
    and set mean/var to that input's per-channel moments (variance floored at `BN0_VAR_FLOOR`
    x its mean over channels, so that silent STFT bins are not blown up). Updating all layers
    at once from one pass diverges (each layer's moments were measured before the layers in
    front of it were normalised).
    """
    from maestro_jax.models.audiosep import BN_EPS

    bn_outputs = _bn_outputs(model)

    def outputs(bs):
        return bn_outputs(params, bs, mixture, condition)

    def paths(tree, prefix=()):
        for k, v in tree.items():
            if k == "__call__":
                yield prefix, v[0]
            elif isinstance(v, dict):
                yield from paths(v, (*prefix, k))

    def get(tree, path):
        for k in path:
            tree = tree[k]
        return tree

    bs = jax.tree.map(np.asarray, batch_stats)
    order = sorted((path for path, _ in paths(outputs(bs))), key=_bn_order)
    for path in order:
        y = np.asarray(get(outputs(bs), path)["__call__"][0], np.float64)
        p = jax.tree.map(np.asarray, get(params, path))
        s = get(bs, path)
        x = (y - p["bias"]) / p["scale"] * np.sqrt(s["var"] + BN_EPS) + s["mean"]
        axes = tuple(range(x.ndim - 1))
        var = x.var(axis=axes)
        var = np.maximum(var, BN0_VAR_FLOOR * var.mean() + 1e-8)
        bs = jax.tree.map(np.asarray, bs)  # a fresh tree: `outputs` is traced on values
        dst = get(bs, path)
        dst["mean"] = x.mean(axis=axes).astype(np.float32)
        dst["var"] = var.astype(np.float32)
    return jax.tree.map(jnp.asarray, bs)


@functools.cache
def _bn_outputs(model: Any):
    from maestro_jax.models.audiosep import BatchNormInference

    @jax.jit
    def fn(params, bs, mixture, condition):
        _, state = model.apply(
            {"params": params, "batch_stats": bs},
            mixture,
            condition,
            capture_intermediates=lambda mdl, _: isinstance(mdl, BatchNormInference),
            mutable=["intermediates"],
        )
        return state["intermediates"]

    return fn


def _bn_order(path: tuple[str, ...]) -> tuple:
    """Execution order of ResUNet30's BatchNorms: bn0, encoder_block1..6, conv_block7a,
    decoder_block1..6; inside a block 'bn1' < 'conv_block*/bn1' < 'conv_block*/bn2'."""
    top = path[0]
    if top == "bn0":
        return (0, 0, path[1:])
    m = re.fullmatch(r"(encoder_block|conv_block|decoder_block)(\d+)a?", top)
    if m is None:
        raise ValueError(f"unexpected BatchNorm {'/'.join(path)} in ResUNet30")
    group = {"encoder_block": 1, "conv_block": 2, "decoder_block": 3}[m.group(1)]
    return (group, int(m.group(2)), path[1:])


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


def _checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = CKPT_PATTERN.match(p.name)
        if m and (p / "params").exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _flat(tree: Any) -> dict[str, np.ndarray]:
    return {f"{i:05d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(tree))}


def _unflat(flat: dict[str, Any], like: Any, what: str) -> Any:
    leaves, treedef = jax.tree.flatten(like)
    got = [np.asarray(flat[k]) for k in sorted(flat)]
    if len(got) != len(leaves) or any(a.shape != np.shape(b) for a, b in zip(got, leaves)):
        raise ValueError(f"checkpoint {what} does not match this config's model/optimizer")
    return jax.tree.unflatten(treedef, [jnp.asarray(a) for a in got])


def _model_fields(config: ml_collections.ConfigDict) -> dict:
    return {
        "channels": [int(c) for c in config.separator.channels],
        "text": dict(config.text),
        "sample_rate": int(config.sample_rate),
        "seed": int(config.seed),
    }


# ----------------------------------------------------------------------------- training
def phase_identity_init(params: Any, kernel_scale: float = 0.1) -> Any:
    """Start the mask head at "keep the mixture's phase, half its magnitude".

    `after_conv` gives three logits per bin: sigmoid(c0) = |M|, (tanh(c1), tanh(c2)) = the phase
    rotation. From a random init the rotation is random, the waveform L1 then only says "be
    quieter" and the separator collapses to silence (seen on the toy world). With bias (0, 3, 0)
    and a small kernel the rotation starts at ~0 rad (the mixture's phase, as an ideal ratio
    mask uses) and training shapes |M| first. Returns a copy."""
    params = jax.tree.map(lambda a: jnp.asarray(a), params)
    head = dict(params["after_conv"])
    head["kernel"] = head["kernel"] * kernel_scale
    head["bias"] = jnp.asarray([0.0, 3.0, 0.0], jnp.float32)
    return {**params, "after_conv": head}


# The jitted functions are cached on (model, optimizer settings), so a resumed run in the same
# process (tests) reuses the compiled step instead of compiling it again (~10 s on CPU).
@functools.cache
def _optimizer(learning_rate: float, warmup_steps: int, grad_clip: float):
    import optax

    schedule = optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
    chain = [optax.adam(schedule)]
    if grad_clip > 0:
        chain.insert(0, optax.clip_by_global_norm(grad_clip))
    return schedule, optax.chain(*chain)


@functools.cache
def _train_step(model: Any, tx: Any):
    import optax

    def loss_fn(p, bs, emb, mix, tgt, q):
        # BatchNorm in training mode (batch statistics; running ones updated), as AudioSep trains
        y, state = model.apply(
            {"params": p, "batch_stats": bs}, mix, emb[q], mutable=["batch_stats"]
        )
        return jnp.mean(jnp.abs(y - tgt)), state["batch_stats"]  # AudioSep's l1_wav

    @jax.jit
    def step(p, o, bs, emb, mix, tgt, q):
        (loss, bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, bs, emb, mix, tgt, q)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, bs, loss

    return step


@functools.cache
def _eval_fn(model: Any):
    @jax.jit
    def fn(p, bs, emb, mix, q):
        return model.apply({"params": p, "batch_stats": bs}, mix, emb[q])

    return fn


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Train to `config.total_steps` (resuming from the newest checkpoint in `workdir`), then
    export `workdir/export`. Returns {step, loss, eval_loss, si_sdr_db, si_sdri_db, export,
    resumed_from, wall_s}."""
    from tqdm.auto import tqdm

    from maestro_jax.audio import separation as sep_lib

    t0 = time.time()
    validate(config)
    data = _data_module(config)
    labels = list(data.labels())
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"{config.data_module}.labels() must be distinct labels, got {labels}")
    label_index = {s: i for i, s in enumerate(labels)}
    workdir = Path(workdir)
    ckpt_dir = workdir / "ckpt"
    workdir.mkdir(parents=True, exist_ok=True)
    sep_cfg = separate_config(config)

    # Frozen random text encoder -> label embeddings (recomputed on resume: a pure function of
    # the seed); random separator whose BatchNorm statistics are calibrated on training data.
    sep_vars, text_vars = sep_lib.random_variables(sep_cfg, int(config.seed))
    emb = label_embeddings(text_vars, sep_cfg, labels)
    params = phase_identity_init(sep_vars["params"])
    batch_stats = jax.tree.map(jnp.asarray, sep_vars["batch_stats"])
    model = sep_lib.build_separator(sep_cfg)

    total = int(config.total_steps)
    schedule, tx = _optimizer(
        float(config.learning_rate), int(config.warmup_steps), float(config.grad_clip)
    )
    opt_state = tx.init(params)
    emb_j = jnp.asarray(emb)

    step = 0
    resumed_from = None
    ckpts = _checkpoints(ckpt_dir)
    if ckpts:
        step, path = ckpts[-1]
        tree, meta = load_params(path)
        if meta.get("model") != _model_fields(config):
            raise ValueError(
                f"{path} was trained with {meta.get('model')}, this config has "
                f"{_model_fields(config)}: use another workdir"
            )
        params = _unflat(tree["params"], params, "params")
        opt_state = _unflat(tree["opt_state"], opt_state, "optimizer state")
        batch_stats = _unflat(tree["batch_stats"], batch_stats, "batch_stats")
        resumed_from = step
    else:
        init_mix, _, init_q = _batch(
            data, config, np.random.default_rng([config.seed, 2]), 8, config.train_seconds,
            label_index,
        )  # fmt: skip
        batch_stats = calibrate_batch_stats(
            model, params, batch_stats, jnp.asarray(init_mix), jnp.asarray(emb[init_q])
        )
    metrics_path = workdir / "metrics.jsonl"
    truncate_jsonl(metrics_path, step)

    train_step = _train_step(model, tx)
    eval_fn = _eval_fn(model)

    ev_mix, ev_tgt, ev_q = _batch(
        data, config, _eval_rng(int(config.seed)), config.eval_batch, config.eval_seconds,
        label_index,
    )  # fmt: skip
    ev_ok = (ev_tgt**2).sum(-1) > 1e-8  # SI-SDR of a silent target is undefined
    if not ev_ok.any():
        raise ValueError("every held-out target is silent; cannot evaluate SI-SDR")
    base_sdr = si_sdr(ev_mix, ev_tgt)[ev_ok]

    def evaluate(p, bs) -> dict:
        est = np.asarray(eval_fn(p, bs, emb_j, jnp.asarray(ev_mix), jnp.asarray(ev_q)))
        sdr = si_sdr(est, ev_tgt)[ev_ok]
        return {
            "eval_loss": float(np.abs(est - ev_tgt).mean()),
            "si_sdr_db": float(sdr.mean()),
            "si_sdri_db": float((sdr - base_sdr).mean()),
        }

    def save(at: int) -> None:
        tree = {
            "params": _flat(params),
            "opt_state": _flat(opt_state),
            "batch_stats": _flat(batch_stats),
            "step": np.asarray(at, np.int64),
        }
        meta = {"model": _model_fields(config), "config": config.to_dict(), "step": at}
        save_params(ckpt_dir / f"step_{at:08d}", tree, meta)
        for _, old in _checkpoints(ckpt_dir)[: -int(config.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)

    last: dict = {"step": step}
    losses: list[float] = []
    t_log = time.time()
    steps_since = 0
    bar = tqdm(total=total, initial=step, desc="separator", unit="step", dynamic_ncols=True)
    with open(metrics_path, "a") as mf:
        while step < total:
            mix, tgt, q = _batch(
                data, config, _train_rng(int(config.seed), step), config.batch_size,
                config.train_seconds, label_index,
            )  # fmt: skip
            params, opt_state, batch_stats, loss = train_step(
                params, opt_state, batch_stats, emb_j, jnp.asarray(mix), jnp.asarray(tgt),
                jnp.asarray(q),
            )  # fmt: skip
            step += 1
            steps_since += 1
            losses.append(float(loss))
            if not np.isfinite(losses[-1]):
                raise FloatingPointError(f"non-finite loss {losses[-1]} at step {step}")
            bar.update(1)
            if step % config.log_every == 0 or step % config.eval_every == 0 or step == total:
                now = time.time()
                rec = {
                    "step": step,
                    "loss": float(np.mean(losses)),
                    "lr": float(schedule(step)),
                    "steps_per_s": steps_since / max(now - t_log, 1e-9),
                    "elapsed_s": now - t0,
                }
                if step % config.eval_every == 0 or step == total:
                    rec.update(evaluate(params, batch_stats))
                mf.write(json.dumps(rec) + "\n")
                mf.flush()
                bar.set_postfix(
                    loss=f"{rec['loss']:.4f}",
                    **({"sisdri": f"{rec['si_sdri_db']:.1f}dB"} if "si_sdri_db" in rec else {}),
                )
                last.update(rec)
                losses, steps_since, t_log = [], 0, time.time()
            if step % config.checkpoint_every == 0 or step == total:
                save(step)
    bar.close()
    if "si_sdri_db" not in last:  # resumed at (or past) the end: evaluate what is there
        last.update(evaluate(params, batch_stats))
    export = export_separator(workdir / "export", params, batch_stats, text_vars, config, labels)
    _write_npz_atomic(workdir / "label_embeddings.npz", embeddings=emb, labels=np.array(labels))
    last.update(
        step=step,
        export=str(export),
        resumed_from=resumed_from,
        wall_s=time.time() - t0,
        labels=labels,
    )
    return last


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
