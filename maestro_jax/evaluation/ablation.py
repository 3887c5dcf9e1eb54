"""Training ablations as one run: for each value of N_Q or lambda1, train a CIM, export it,
score its tokens' nearest-label accuracy, generate the evaluation jobs with it, evaluate, and
write the study's table, plots and frame grid (`python -m maestro_jax.ablate`; settings:
`evaluation.ablation_config`).

WORKDIR holds, per value, <param>_<value>/ (the sweep's value folder: videos, contact sheets,
settings, the evaluation cache metrics.json) with

    train/                  the trainer's workdir (orbax checkpoints, metrics.jsonl, export/)
    train.json              the hash of the value's training config (every field that shapes
                            the weights, and the global batch), its state ('started' | 'done'),
                            steps, wall time and the training losses
    label_accuracy.json     the nearest-label accuracy (cached under the training hash)
    generation.json         the hash of what made the videos (training hash, generation config,
                            jobs)
    row.json                the value's table row, written when the value is finished

and WORKDIR gets ablation.md / ablation.json (the table: FVD / IA / AV-Align / placement, the
label accuracy, the training losses and minutes), plot_<metric>.png and grid.png.

Kill it anywhere and rerun: a value whose training hash matches a finished record is not
trained again, an interrupted one resumes from its newest checkpoint, generation skips finished
jobs and the evaluation is reused while the videos are unchanged. A changed training setting
changes the hash of the values it affects: only those are trained again from scratch (their
folder is cleared); a changed generation setting or job list regenerates (and re-evaluates)
the values without retraining them.

Multi-host (`processes.mode`): 'mesh' trains every value on all processes' devices (the
trainer's multi-process data split and checkpoints), generates with the jobs split across
processes, and evaluates and writes on process 0; 'split' runs value i on process
i % count as an independent single-process JAX run, and whichever process finishes a study's
last value writes the table (a rerun by any process completes what is missing).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maestro_jax.evaluation import sweep as sweep_lib
from maestro_jax.evaluation.ablation_config import (  # noqa: F401  (the study's API)
    NOT_HASHED,
    PARAMS,
    AblationError,
    check_value,
    config_hash,
    parse_overrides,
    split_identity,
    training_config,
)
from maestro_jax.files import write_json

KEEP_ON_REGENERATE = ("train", "train.json", "label_accuracy.json")
# generation fields that decide how a run goes, not what it makes (not in the videos' hash)
RUN_ONLY = ("compilation_cache", "outdir", "batch_size", "frame_chunk", "attn_impl")
COLUMNS = (
    ("Label acc. ↑", "label_accuracy", "accuracy", 3),
    ("Context acc.", "label_accuracy", "context_accuracy", 3),
    ("Held-out L_mse ↓", "label_accuracy", "context_mse", 4),
    ("L_sd (train) ↓", "training", "loss_sd", 4),
    ("L_mse (train) ↓", "training", "loss_mse", 4),
    ("Train min", "training", "minutes", 1),
    ("Gen+eval min", "timing", "generate_evaluate_min", 1),
)
PLOTS = {"label_accuracy": ("Label accuracy", "label_accuracy", "accuracy")}
TAIL = 100  # training losses: mean over the last TAIL steps (batches are small and noisy)


@dataclasses.dataclass
class Value:
    """One swept value: its training config and hash, and its sweep point (folder, jobs)."""

    point: sweep_lib.Point
    train_cfg: Any
    hash: str = ""
    hashed: dict = dataclasses.field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.point.subdir

    @property
    def train_dir(self) -> Path:
        return self.point.subdir / "train"

    @property
    def export(self) -> Path:
        return self.point.subdir / "train" / "export"


# ----------------------------------------------------------------------------- planning
def sweep_of(cfg, workdir: str | os.PathLike):
    """The study's sweep config: `cfg.sweep` over the values, CIMs = the values' exports."""
    s = copy.deepcopy(cfg.sweep)
    out = Path(workdir).absolute()
    s.outdir = str(out)
    s.param = cfg.param
    s.param_values = tuple(cfg.param_values)
    s.checkpoints = ",".join(
        f"{sweep_lib.value_label(v)}={sweep_lib.value_dir(out, cfg.param, v) / 'train' / 'export'}"
        for v in cfg.param_values
    )
    s.checkpoint_pattern = ""
    g = s.generation
    if cfg.param == "lambda1":
        g.num_queries = int(cfg.training.model.cim.num_queries)
    if not g.imagebind_checkpoint and cfg.training.model.imagebind.params:
        g.imagebind_checkpoint = cfg.training.model.imagebind.params
    return s


def check(cfg, workdir: str | os.PathLike) -> tuple[list[Value], Any, Any, str | None]:
    """Every check of a study before any compute (AblationError, one line naming the field).
    Returns (values, sweep config, evaluation config, reference)."""
    from maestro_jax.training import cim
    from maestro_jax.training.cim_loss import build_models
    from maestro_jax.training.validate import ConfigError

    if cfg.param not in PARAMS:
        raise AblationError(f"config.param={cfg.param!r}: must be one of {', '.join(PARAMS)}")
    values = list(cfg.param_values)
    if not values:
        raise AblationError("config.param_values is empty")
    for v in values:
        check_value(cfg, v)
    labels = [sweep_lib.value_label(v) for v in values]
    if len(set(labels)) != len(labels):
        raise AblationError(f"config.param_values: duplicate values {labels}")
    if cfg.processes.mode not in ("mesh", "split"):
        raise AblationError(f"config.processes.mode={cfg.processes.mode!r}: 'mesh' or 'split'")
    split_identity(cfg)
    _check_training_files(cfg.training)
    la = cfg.label_accuracy
    if la.source not in ("toy", "dataset", "none"):
        raise AblationError(f"config.label_accuracy.source={la.source!r}: toy, dataset or none")
    if la.source == "toy" and int(la.per_class) < 1:
        raise AblationError("config.label_accuracy.per_class must be >= 1 (source 'toy')")
    if la.source == "dataset" and (int(la.max_clips) < 1 or not cfg.training.data.dir):
        raise AblationError(
            "config.label_accuracy.source='dataset' needs config.training.data.dir and "
            "max_clips >= 1 (or set source='none')"
        )
    trains = [training_config(cfg, v) for v in values]
    for t in trains:
        try:
            cim.validate_config(t)
            build_models(t)  # reads the frozen models' config.json files, no weights
        except (ConfigError, ValueError) as e:
            raise AblationError(str(e).replace("config.", "config.training.", 1)) from None
    s = sweep_of(cfg, workdir)
    if int(s.generation.mosaic.token_offset) != int(cfg.training.token_offset):
        raise AblationError(
            f"config.sweep.generation.mosaic.token_offset={s.generation.mosaic.token_offset} "
            f"differs from config.training.token_offset={cfg.training.token_offset}"
        )
    q_train, q_gen = int(cfg.training.model.cim.num_queries), int(s.generation.num_queries)
    if cfg.param == "lambda1" and q_gen != q_train:  # (sweep_of sets it; an override may not)
        raise AblationError(f"generation N_Q {q_gen} != training N_Q {q_train}")
    try:
        points, ecfg, reference = sweep_lib.prepare(s, require_cims=False)
    except sweep_lib.SweepError as e:  # (its fields live under config.sweep here)
        raise AblationError(str(e).replace("--config.", "--config.sweep.")) from None
    return [Value(p, t) for p, t in zip(points, trains)], s, ecfg, reference


def _check_training_files(t) -> None:
    """The trainer's frozen models and data exist (it would find out only when its value's
    training starts, possibly after other values)."""
    for part in ("unet", "vae", "text", "imagebind"):
        folder = t.model[part].params
        if folder and not Path(folder).exists():
            raise AblationError(f"config.training.model.{part}.params: {folder} does not exist")
        if not folder and not t.model.random_init:
            raise AblationError(
                f"config.training.model.{part}.params is empty: give the converted folder "
                "(README, 'Training the CIM')"
            )
    if not t.data.synthetic and not (t.data.dir and Path(t.data.dir).is_dir()):
        raise AblationError(
            f"config.training.data.dir={t.data.dir!r}: give the prepared dataset folder "
            "(python -m data.prepare / data.curate)"
        )


# ----------------------------------------------------------------------------- steps
def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _lead() -> bool:
    import jax

    return jax.process_index() == 0


def _sync(name: str) -> None:
    from maestro_jax import distributed

    distributed.barrier(f"ablation_{name}")


def _train(train_cfg, workdir: Path) -> dict:
    """The trainer itself (`training.cim.train`): resumes from workdir/checkpoints."""
    from maestro_jax.training import cim

    return cim.train(train_cfg, workdir)


def _loss_tail(metrics: Path, steps: int) -> dict:
    rows = [r for r in _jsonl(metrics) if int(r.get("step", 0)) <= steps][-TAIL:]
    out = {}
    for k in ("loss_sd", "loss_mse"):
        vals = [float(r[k]) for r in rows if k in r]
        if vals:
            out[k] = sum(vals) / len(vals)
    return out


def _jsonl(path: Path) -> list[dict]:
    from maestro_jax.files import read_jsonl

    try:
        return read_jsonl(path)
    except (OSError, json.JSONDecodeError):
        return []


def train_value(v: Value, log: Callable) -> dict:
    """Train the value's CIM unless a finished record has its hash; returns the record."""
    path = v.dir / "train.json"
    rec = _read(path)
    if (
        rec
        and rec.get("hash") == v.hash
        and rec.get("state") == "done"
        and (v.export / "params").exists()
    ):
        log(f"{v.point.label}: trained earlier ({rec['steps']} steps, hash {v.hash}), skipped")
        return rec
    stale = rec is not None and rec.get("hash") != v.hash
    _sync(f"train_read_{v.point.label}")
    if _lead():
        if stale:
            log(f"{v.point.label}: training settings changed (hash {rec.get('hash')} -> "
                f"{v.hash}): training again from scratch")  # fmt: skip
            shutil.rmtree(v.dir)
        elif rec is None and v.train_dir.exists():
            shutil.rmtree(v.train_dir)  # no record of what made it: not ours to resume
        write_json(path, {"hash": v.hash, "state": "started", "config": v.hashed})
    _sync(f"train_start_{v.point.label}")
    t0 = time.perf_counter()
    res = _train(v.train_cfg, v.train_dir)
    wall = time.perf_counter() - t0
    steps = int(res["step"])
    rec = {
        "hash": v.hash, "state": "done", "config": v.hashed, "steps": steps,
        "resumed_from": res.get("resumed_from"), "wall_s": round(wall, 1),
        "export": str(v.export), "losses": _loss_tail(v.train_dir / "metrics.jsonl", steps),
    }  # fmt: skip
    if _lead():
        write_json(path, rec)
    _sync(f"train_done_{v.point.label}")
    return rec


def heldout_audio(cfg):
    """(mel [N, S, 128, 204], classes [N], labels) for the nearest-label accuracy."""
    from maestro_jax.evaluation import label_accuracy as la_lib

    la = cfg.label_accuracy
    if la.source == "toy":
        from maestro_jax.toy import world as tw

        stems, classes, labels = la_lib.toy_stems(int(la.per_class), int(la.seed))
        g = cfg.sweep.generation
        return la_lib.stem_mels(stems, tw.SR, float(g.clip_window), g.clip_rule), classes, labels
    return la_lib.dataset_clips(cfg.training, la.split, int(la.max_clips))


def label_accuracy(v: Value, cfg, audio: Callable, log: Callable) -> dict | None:
    """The value's nearest-label accuracy (cached under the training hash). Every process
    computes it (reading weights is collective under several processes); process 0 writes."""
    from maestro_jax.evaluation import label_accuracy as la_lib

    if cfg.label_accuracy.source == "none":
        return None
    path = v.dir / "label_accuracy.json"
    key = {"train": v.hash, "settings": cfg.label_accuracy.to_dict()}
    old = _read(path)
    if old and old.get("key") == key:
        return old["result"]
    mel, classes, labels = audio()
    t0 = time.perf_counter()
    res = la_lib.label_accuracy(v.train_cfg, v.export, mel, classes, labels)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    if _lead():
        write_json(path, {"key": key, "result": res})
    log(f"{v.point.label}: nearest-label accuracy {res['correct']}/{res['n']} held-out "
        f"clips (whole context {res['context']['accuracy']:.3f})")  # fmt: skip
    _sync(f"label_accuracy_{v.point.label}")
    return res


def refresh_videos(v: Value, log: Callable) -> None:
    """Clear the value's videos when what made them (CIM, generation config, jobs) changed."""
    p = v.point
    jobs = [dataclasses.asdict(j) for j in p.jobs]
    gen = json.loads(p.gen_cfg.to_json_best_effort())
    gen = {k: x for k, x in gen.items() if k not in RUN_ONLY}
    made = {"train": v.hash, "generation": gen, "jobs": jobs}
    key = hashlib.sha256(json.dumps(made, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = v.dir / "generation.json"
    old = _read(path)
    same = old is not None and old.get("hash") == key
    _sync(f"videos_read_{p.label}")
    if not same and _lead():
        gone = [e for e in v.dir.iterdir() if e.name not in KEEP_ON_REGENERATE]
        if gone and old is not None:
            log(f"{p.label}: the CIM, generation settings or jobs changed: generating again")
        for e in gone:
            shutil.rmtree(e) if e.is_dir() and not e.is_symlink() else e.unlink()
        write_json(path, {"hash": key, "made_by": made})
    _sync(f"videos_ready_{p.label}")


def _row_extras(rec: dict, la: dict | None) -> dict:
    t = {"steps": rec["steps"], "minutes": rec["wall_s"] / 60.0, "wall_s": rec["wall_s"],
         "resumed_from": rec.get("resumed_from"), **rec.get("losses", {})}  # fmt: skip
    out = {"training": t}
    if la:
        out["label_accuracy"] = {
            "accuracy": la["accuracy"], "correct": la["correct"], "n": la["n"],
            "cosine_accuracy": la["cosine_accuracy"], "mse_own": la["mse_own"],
            "context_accuracy": la["context"]["accuracy"], "context_mse": la["context"]["mse_own"],
        }  # fmt: skip
    return out


# ----------------------------------------------------------------------------- the study
def run(
    cfg,
    workdir: str | os.PathLike,
    log: Callable = print,
    on_event: Callable[[str, str], None] | None = None,
) -> dict:
    """Run (or finish) the study in `workdir`. Returns {'rows', 'failed', 'pending' (values
    still to do on other processes, 'split' mode), 'table', 'plots', 'grid' (when written),
    'wall_s'}. `on_event(stage, label)` is called after each value's 'trained',
    'label_accuracy' and 'evaluated' stage (progress; tests stop a study there)."""
    import jax

    t_start = time.perf_counter()
    values, s, ecfg, reference = check(cfg, workdir)
    per_device = int(cfg.training.batch_size_per_device)
    for v in values:
        v.hash, v.hashed = config_hash(v.train_cfg, per_device * jax.device_count())
    mine = values
    if cfg.processes.mode == "split":
        index, count = split_identity(cfg)
        mine = [v for i, v in enumerate(values) if i % count == index]
        log(f"process {index} of {count} (split): values {[v.point.label for v in mine]}")
    Path(s.outdir).mkdir(parents=True, exist_ok=True)
    audio_cache: dict = {}

    def audio():
        if "a" not in audio_cache:
            audio_cache["a"] = heldout_audio(cfg)
        return audio_cache["a"]

    event = on_event or (lambda stage, label: None)
    failed, timing = [], {}
    for v in mine:
        label = v.point.label
        log(f"== {sweep_lib.TITLES[cfg.param]} = {label}: {v.dir}")
        t0 = time.perf_counter()
        rec = train_value(v, log)
        event("trained", label)
        t1 = time.perf_counter()
        la = label_accuracy(v, cfg, audio, log)
        event("label_accuracy", label)
        t2 = time.perf_counter()
        refresh_videos(v, log)
        old = _read(v.dir / "row.json")  # (cleared with the videos when they are remade)
        index = values.index(v)
        row, bad = sweep_lib.run_point(index, v.point, cfg.param, ecfg, reference, log)
        gen_s = time.perf_counter() - t2
        if bad:
            failed.append(label)
        if _lead():
            # the time of the run that made the videos (a rerun that only reuses them keeps it)
            made_s = (old or {}).get("timing", {}).get("generate_evaluate_s", round(gen_s, 1))
            row = {k: x for k, x in row.items() if k != "per_video"}
            row["timing"] = {"generate_evaluate_s": made_s, "generate_evaluate_min": made_s / 60}
            write_json(v.dir / "row.json", {**row, **_row_extras(rec, la)})
        event("evaluated", label)
        timing[label] = {"train_s": round(t1 - t0, 1), "label_accuracy_s": round(t2 - t1, 1),
                         "generate_evaluate_s": round(gen_s, 1)}  # fmt: skip
    _sync("values_done")
    out = {"rows": [], "failed": failed, "pending": [], "wall_s": 0.0}
    if not _lead():
        return out
    rows = [_read(v.dir / "row.json") for v in values]
    out["pending"] = [v.point.label for v, r in zip(values, rows) if r is None]
    out["wall_s"] = round(time.perf_counter() - t_start, 1)
    runs = _log_run(Path(s.outdir), out["wall_s"], timing, [v.point.label for v in mine])
    if out["pending"]:
        log(f"values still to finish on other processes: {', '.join(out['pending'])} (the "
            "process that finishes the last one writes the table; rerun to finish them here)")  # fmt: skip
        return out
    failed = sorted({*failed, *(r["name"] for r in rows if r.get("error"))})
    notes = _notes(cfg, values, rows)
    res = sweep_lib.write_outputs(
        s, [v.point for v in values], rows, failed, log, name="ablation",
        title=f"{sweep_lib.TITLES[cfg.param]} ablation ({cfg.variant})", columns=COLUMNS,
        notes=notes, plots=PLOTS,
        extra_json={"runs": runs, "training": {r["name"]: r.get("training") for r in rows}},
    )  # fmt: skip
    return {**out, **res, "failed": failed}


def _log_run(outdir: Path, wall_s: float, timing: dict, labels: list[str]) -> list[dict]:
    """Append this run (process 0 or a 'split' process) to OUTDIR/runs.jsonl: when, its wall
    time, the values it handled and their step times. Returns every run so far."""
    path = outdir / "runs.jsonl"
    line = {"finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "wall_s": wall_s,
            "values": labels, "timing": timing}  # fmt: skip
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
    return _jsonl(path)


def _notes(cfg, values: list[Value], rows: list[dict]) -> list[str]:
    t = cfg.training
    steps = sorted({int(r["training"]["steps"]) for r in rows})
    batch = values[0].hashed["global_batch"]
    fixed = f"N_Q {t.model.cim.num_queries}" if cfg.param == "lambda1" else f"lambda1 {t.lambda1}"
    notes = [
        f"Each value: a CIM trained {'/'.join(map(str, steps))} steps (global batch {batch}, "
        f"lr {t.optimizer.lr}, {fixed}), then the sweep's jobs generated with it. "
        f"L_sd / L_mse (train): mean of the last {TAIL} steps' denoising / text-MSE loss "
        "(view A); Train min: wall minutes of the training call that finished it.",
    ]
    la = cfg.label_accuracy
    if la.source != "none":
        n = next((r["label_accuracy"]["n"] for r in rows if r.get("label_accuracy")), 0)
        what = (
            f"{n} fresh toy object sounds ({la.per_class} per class, seed {la.seed})"
            if la.source == "toy"
            else f"{n} clips of the '{la.split}' split"
        )
        notes.append(
            f"Label acc.: fraction of {what} whose CIM tokens are nearest (MSE over the token "
            "columns, mean over 2 s segments) to their own class label's text embedding; "
            "Context acc. / Held-out L_mse: the same decision / the own label's MSE on the whole "
            "placed context (null embedding + tokens), the training's L_mse "
            "(maestro_jax.evaluation.label_accuracy)."
        )
    return notes
