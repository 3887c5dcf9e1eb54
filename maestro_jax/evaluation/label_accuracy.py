"""Nearest-label accuracy of a trained CIM: do its tokens land nearest their own class's text?

The CIM is trained to make the context it writes (the null text embedding with its N_Q tokens
at columns [o, o + N_Q), `training.cim_loss.training_contexts`) match the text embedding of the
clip's class label (the L_mse term). This measures that on held-out audio of known class:

    audio [N] --ImageBind audio trunk + the CIM--> tokens [N, S, N_Q, D]
    d[n, c] = mean over segments s, token columns and width of
              (tokens[n, s] - label_emb[c][o : o + N_Q])^2
    correct[n] = argmin_c d[n, c] == class[n]            ('accuracy')

i.e. the nearest label on the columns the CIM writes. The same decision on the whole placed
context (the null embedding with the tokens at [o, o + N_Q), against the label's full [77, D]
embedding: the training's L_mse, whose argmin also carries the audio-independent distance of
each label's other columns to the null embedding's) is reported as 'context' (its 'mse_own' is
the held-out L_mse), and the cosine versions beside both. Held-out audio: fresh toy-world
object sounds from a seed stream the training data never draws from (`toy_stems`), or the
`test` split of a prepared dataset (`dataset_clips`). The text targets come from the training
config's own frozen text encoder (`training.text.text_caches`), the ImageBind from its
`model.imagebind.params` folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def toy_stems(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(stems float32 [N, samples] at the toy world's rate, classes int [N], labels): `per_class`
    object sounds of every toy class, each from its own generator seeded (seed, salt, class, i),
    a stream the CIM's training clips (one sequential generator of the training seed) do not
    use."""
    from maestro_jax.toy import world as tw

    stems, classes = [], []
    for c in range(tw.NUM_CLASSES):
        for i in range(int(per_class)):
            rng = np.random.default_rng([int(seed), 104729, c, i])
            stems.append(tw.object_sound(c, rng)[0])
            classes.append(c)
    return np.stack(stems), np.asarray(classes, np.int64), tw.labels()


def stem_mels(stems: np.ndarray, sr: int, clip_window: float, rule: str = "git") -> np.ndarray:
    """ImageBind inputs of stems, as generation computes them: [N, S, 128, 204]."""
    from maestro_jax.audio import encoder as ae

    return np.stack([ae.stem_mel(s[None], sr, clip_window, rule) for s in stems])


def dataset_clips(
    train_cfg: Any, split: str, max_clips: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(mel [N, S, 128, 204], label_index [N], labels) of the first `max_clips` clips of
    `split` of the training config's prepared dataset (`data.dir`)."""
    from maestro_jax.data import pipeline
    from maestro_jax.data.tfds_format import load_classes

    ds = pipeline.make_dataset(
        train_cfg.data.dir, split, batch_size=1, seed=0, shuffle=False, num_epochs=1,
        process_index=0, process_count=1, drop_remainder=False, keys=("mel", "label_index"),
    )  # fmt: skip
    mels, idx = [], []
    for b in ds:
        mels.append(np.asarray(b["mel"])[0])
        idx.append(int(np.asarray(b["label_index"]).reshape(-1)[0]))
        if len(mels) >= int(max_clips):
            break
    if not mels:
        raise ValueError(f"split {split!r} of {train_cfg.data.dir} has no clips")
    return np.stack(mels), np.asarray(idx, np.int64), load_classes(train_cfg.data.dir)


def text_targets(train_cfg: Any, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(null [77, D], label embeddings [C, 77, D]) of the training config's text encoder."""
    from maestro_jax.training.cim_loss import build_models
    from maestro_jax.training.text import text_caches

    return text_caches(train_cfg, build_models(train_cfg), list(labels))


def place_tokens(null: np.ndarray, tokens: np.ndarray, token_offset: int) -> np.ndarray:
    """tokens [N, S, N_Q, D] written into the null embedding [L, D] at columns
    [o, o + N_Q): contexts [N, S, L, D] (the training's per-segment context)."""
    n, s, q, _ = tokens.shape
    ctx = np.broadcast_to(null.astype(np.float32), (n, s, *null.shape)).copy()
    ctx[:, :, token_offset : token_offset + q] = tokens
    return ctx


def nearest_label(x: np.ndarray, label_emb: np.ndarray, classes: np.ndarray) -> dict:
    """Scores x [N, S, K, D] (per 2 s segment: K columns) against label embeddings [C, K, D]
    (the same columns). Returns {'accuracy' (nearest by MSE, mean over segments, is the own
    class), 'correct', 'n', 'mse_own' (mean MSE to the own label), 'margin' (mean of the
    nearest other label's MSE minus the own), 'cosine_accuracy' (nearest by the cosine of the
    flattened [K, D], mean over segments), 'predicted', 'confusion' [C, C] (rows = true)}."""
    n, s = x.shape[:2]
    x = x.reshape(n, s, -1).astype(np.float64)
    y = label_emb.reshape(label_emb.shape[0], -1).astype(np.float64)
    dot = np.einsum("nsk,ck->nsc", x, y)
    # squared distances without materialising [N, S, C, K * D]
    d2 = (x**2).sum(-1)[..., None] + (y**2).sum(-1) - 2.0 * dot
    mse = np.maximum(d2, 0.0).mean(axis=1) / x.shape[-1]  # [N, C]
    pred = mse.argmin(axis=1)
    cos = dot / (np.linalg.norm(x, axis=-1)[..., None] * np.linalg.norm(y, axis=-1) + 1e-12)
    cos_pred = cos.mean(axis=1).argmax(axis=1)
    own = mse[np.arange(n), classes]
    c = y.shape[0]
    other = np.where(np.eye(c, dtype=bool)[classes], np.inf, mse).min(axis=1)
    confusion = np.zeros((c, c), np.int64)
    np.add.at(confusion, (classes, pred), 1)
    correct = pred == classes
    return {
        "accuracy": float(correct.mean()), "correct": int(correct.sum()), "n": int(n),
        "mse_own": float(own.mean()), "margin": float((other - own).mean()),
        "cosine_accuracy": float((cos_pred == classes).mean()),
        "predicted": pred.tolist(), "confusion": confusion.tolist(),
    }  # fmt: skip


def label_accuracy(
    train_cfg: Any,
    cim_dir: str | Path,
    mel: np.ndarray,
    classes: np.ndarray,
    labels: Sequence[str],
    batch: int = 32,
) -> dict:
    """Nearest-label accuracy of the CIM in `cim_dir` (an export of the trainer run with
    `train_cfg`) on mel [N, S, 128, 204] of known `classes` (indices into `labels`): the
    `nearest_label` fields on the token columns, plus 'context' (the same on the whole placed
    context), 'labels', 'num_queries', 'segments'."""
    import jax.numpy as jnp

    from maestro_jax.audio import encoder as ae

    ib_dir = train_cfg.model.imagebind.params
    if not ib_dir:
        raise ValueError("model.imagebind.params is empty: the CIM's audio encoder is not a folder")
    enc = ae.load(ib_dir, cim_dir, jnp.float32)
    tokens = np.concatenate(
        [np.asarray(ae.encode_mels(enc, mel[i : i + batch])) for i in range(0, len(mel), batch)]
    )
    null, label_emb = text_targets(train_cfg, labels)
    o, q = int(train_cfg.token_offset), tokens.shape[2]
    classes = np.asarray(classes)
    res = nearest_label(tokens, label_emb[:, o : o + q], classes)
    ctx = nearest_label(place_tokens(null, tokens, o), label_emb, classes)
    res["context"] = {k: ctx[k] for k in ("accuracy", "mse_own", "margin", "cosine_accuracy")}
    res.update(labels=list(labels), num_queries=int(q), segments=int(tokens.shape[1]))
    return res
