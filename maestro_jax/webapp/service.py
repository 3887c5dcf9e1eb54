"""The web app's state: the generation config, ONE `ModelPool` for the app's lifetime (the
weights load once), the folders under the app's output folder (uploads/, results/), the queue,
and running one job with `generation.runner.run` (the `generate` command's library).

    OUT/uploads/<id>.wav      uploaded and example sounds (server-made names)
    OUT/results/<job>.mp4 .png .json [_stems/]   what `generate` writes for the job
    OUT/results/<job>.app.json   the page's record: sources, boxes, settings, command, jobs line
    OUT/jobs.jsonl            every finished job's `generate --jobs` line
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from maestro_jax import files, mosaic
from maestro_jax.generation.jobs import Job, output_paths
from maestro_jax.webapp import requests as req
from maestro_jax.webapp.queue import Entry, JobQueue, Progress

JOB_ID = r"^app-\d{8}-\d{6}-[0-9a-f]{6}$"
FILE_KINDS = {"mp4": "video", "png": "sheet", "json": "json"}


def new_job_id() -> str:
    return time.strftime("app-%Y%m%d-%H%M%S-", time.gmtime()) + req.new_id()[:6]


class Service:
    """Everything the routes use. `config_arg` and `overrides` (the app's `--config` value and
    `--config.*` flags) go into each job's reproducing command."""

    def __init__(
        self, cfg, outdir: Path, *, config_arg: str, overrides: list[str] = (),
        limits: req.Limits | None = None, runner=None,
    ) -> None:  # fmt: skip
        from maestro_jax.generation.runner import ModelPool

        self.cfg = cfg
        self.outdir = Path(outdir).absolute()
        self.results = files.make_dir(self.outdir / "results")
        self.store = req.AudioStore(files.make_dir(self.outdir / "uploads"), limits or req.Limits())
        self.config_arg = config_arg
        self.overrides = list(overrides)
        self.pool = ModelPool()
        self.queue = JobQueue(runner or self.run_entry)

    # ------------------------------------------------------------------ page data
    def info(self) -> dict:
        from maestro_jax.generation.runner import attention_resolutions
        from maestro_jax.video import BOX_COLORS

        cfg = self.cfg
        cap = mosaic.context_capacity(cfg.num_queries, cfg.mosaic.token_offset)
        return {
            "frame": {"width": int(cfg.width), "height": int(cfg.height)},
            "num_frames": int(cfg.num_frames),
            "resolutions": [list(r) for r in attention_resolutions(cfg)],
            "cell_rule": cfg.mosaic.cell_rule,
            "max_sources": min(cap, self.store.limits.max_sources),
            "defaults": {"mode": cfg.mode, "n_d": int(cfg.n_d), "steps": int(cfg.steps),
                         "guidance": float(cfg.guidance), "seed": int(cfg.seed)},  # fmt: skip
            "modes": ["maestro", "vanilla", "locate", "mosaic"],
            "presets": {k: [list(b) for b in v[0]] for k, v in mosaic.PRESETS.items()},
            "limits": {"max_mib": self.store.limits.max_bytes >> 20,
                       "seconds": [self.store.limits.min_seconds, self.store.limits.max_seconds]},
            "colors": BOX_COLORS.tolist(),
            "separator": bool(cfg.separator_checkpoint) or cfg.model == "tiny",
        }  # fmt: skip

    def gallery(self, limit: int = 24) -> list[dict]:
        """Finished jobs, newest first (read from the results folder, so they survive a restart)."""
        rows = []
        for p in sorted(self.results.glob("app-*.app.json"), reverse=True)[:limit]:
            try:
                rows.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                continue
        return rows

    def file_of(self, job_id: str, kind: str, index: int = 0) -> Path:
        """A file this app wrote for job `job_id` (kind mp4 | png | json | stem); RequestError
        for anything else. The path is built here from checked parts only."""
        import re

        if not re.match(JOB_ID, job_id or ""):
            raise req.RequestError(f"no job {job_id[:40]!r}")
        paths = output_paths(self.results, job_id)
        if kind == "stem":
            stems = sorted(paths["stems"].glob("*.wav")) if paths["stems"].is_dir() else []
            if not 0 <= index < len(stems):
                raise req.RequestError(f"job {job_id} has no separated stem {index}")
            return stems[index]
        if kind not in FILE_KINDS or not paths[FILE_KINDS[kind]].is_file():
            raise req.RequestError(f"job {job_id} has no {kind!r} file")
        return paths[FILE_KINDS[kind]]

    def examples(self) -> list[dict]:
        """The one-click inputs: the toy world's demo mixture (with its queries and boxes) and
        one sound per toy object class."""
        from maestro_jax.toy import world

        out = [{"name": "demo", "kind": "mixture", "label": "demo mixture (toy world)"}]
        out += [{"name": o.name, "kind": "stem", "label": o.label} for o in world.OBJECTS]
        return out

    def example(self, name: str) -> dict:
        """Store example `name` as an upload; its description (plus queries and boxes for the
        demo mixture)."""
        import io

        from maestro_jax.toy import config as toy_config
        from maestro_jax.toy import world

        if name == "demo":
            demo = toy_config.assets_dir() / "demo"
            spec = json.loads((demo / "job.json").read_text())
            out = self.store.add((demo / spec["mixture"]).read_bytes(), "demo mixture.wav")
            return {**out, "queries": spec["queries"], "boxes": spec["boxes"]}
        names = [o.name for o in world.OBJECTS]
        if name not in names:
            raise req.RequestError(f"example {name[:40]!r} is not one of demo, {', '.join(names)}")
        import numpy as np
        import soundfile as sf

        cls = names.index(name)
        wave, _ = world.object_sound(cls, np.random.default_rng(cls))
        buf = io.BytesIO()
        sf.write(buf, wave, world.SR, format="WAV", subtype="PCM_16")
        return {**self.store.add(buf.getvalue(), f"{world.OBJECTS[cls].label}.wav"),
                "label": world.OBJECTS[cls].label}  # fmt: skip

    # ------------------------------------------------------------------ jobs
    def submit(self, body: Any, client: str) -> dict:
        """Validate a request (the `generate` command's checks) and queue it."""
        _check_client(client)
        job_id = new_job_id()
        job, settings = req.job_of(body, self.store, self.cfg, job_id)
        run_cfg = req.run_config(self.cfg, settings)
        warnings = req.validate(job, run_cfg)
        summary = {
            "sources": body.get("sources") or [], "mixture": body.get("mixture"),
            "queries": job.queries, "labels": _labels(body, job.num_sources),
            "boxes": job.boxes, "settings": settings, "warnings": warnings,
        }  # fmt: skip
        entry = Entry(job_id, client, (job, run_cfg), summary)
        entry.steps, entry.n_d = settings["steps"], settings["n_d"]
        position = self.queue.submit(entry)
        return {"id": job_id, "position": position, "warnings": warnings}

    def separate(self, body: Any, client: str) -> dict:
        """Queue separating a mixture by its queries alone (the stems are then playable before
        any boxes are drawn)."""
        _check_client(client)
        if not isinstance(body, dict) or not body.get("mixture"):
            raise req.RequestError("mixture: upload a mixture first")
        audio, n = req.sources_of({"mixture": body["mixture"], "queries": body.get("queries")},
                                  self.store)  # fmt: skip
        job_id = new_job_id()
        job = Job(name=job_id, **audio)
        summary = {"mixture": body["mixture"], "queries": job.queries, "separation": True}
        position = self.queue.submit(Entry(job_id, client, ("separate", job), summary))
        return {"id": job_id, "position": position, "warnings": []}

    def _separate(self, job: Job, progress: Progress) -> dict:
        from maestro_jax import audio as audio_lib
        from maestro_jax.generation import outputs
        from maestro_jax.generation import weights as gen_weights
        from maestro_jax.generation.plan import Plan

        cfg = self.cfg
        try:
            mixture = audio_lib.load_audio(job.mixture)
        except (OSError, ValueError) as e:
            raise req.RequestError(f"mixture: {e}") from e
        weights = gen_weights.check_weights(cfg, gen_weights.base_spec(cfg), set(), True)
        progress.stage("load", [job.name])
        models = self.pool.models(weights, audio=False, separator=True)
        progress.stage("prepare", [job.name])
        plan = Plan(job, "mixture", [], mixture, (), (), 0, [])
        outputs.sources_of(plan, models, self.results, cfg)
        stems = sorted(output_paths(self.results, job.name)["stems"].glob("*.wav"))
        return {"id": job.name, "kind": "separation", "stems": [p.name for p in stems]}

    def check(self, body: Any) -> dict:
        """Validate without queueing (the page's 'check' before a run)."""
        job, settings = req.job_of(body, self.store, self.cfg, "check")
        return {"ok": True, "warnings": req.validate(job, req.run_config(self.cfg, settings))}

    def command(self, job, run_cfg) -> str:
        """The `generate` command line that makes the same video."""
        args = ["python", "-m", "maestro_jax.generate", f"--config={self.config_arg}"]
        args += self.overrides
        for key in ("mode", "steps", "guidance"):
            if run_cfg[key] != self.cfg[key]:
                args.append(f"--config.{key}={run_cfg[key]}")
        if job.mixture:
            args += ["--mixture", job.mixture, *[f"--query={q}" for q in job.queries]]
        else:
            args += [f"--audio={a}" for a in job.audio]
        for b in job.boxes:
            if isinstance(b, dict):
                kfs = ";".join(f"{p:g}:" + ",".join(f"{c:g}" for c in box)
                               for p, box in b["keyframes"])  # fmt: skip
                args.append(f"--box={kfs}")
            else:
                args.append("--box=" + ",".join(f"{c:g}" for c in b))
        args += [f"--seed={job.seed}", f"--n_d={job.n_d}", f"--name={job.name}"]
        args.append(f"--outdir={self.results}")
        return shlex.join(args)

    def run_entry(self, entry: Entry, progress: Progress) -> dict:
        from maestro_jax.generation.runner import run

        if entry.payload[0] == "separate":
            return self._separate(entry.payload[1], progress)
        job, run_cfg = entry.payload
        status = run(run_cfg, [job], self.results, strict=True, pool=self.pool, progress=progress)
        if status != 0:
            raise RuntimeError(_failure_reason(self.results, job.name, status))
        paths = output_paths(self.results, job.name)
        stems = sorted(paths["stems"].glob("*.wav")) if paths["stems"].is_dir() else []
        line = json.dumps(job.to_json(), sort_keys=True)
        files.append_jsonl(self.outdir / "jobs.jsonl", [job.to_json()])
        record = {
            "id": job.name, "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "summary": entry.summary, "jobs_line": line,
            "command": self.command(job, run_cfg), "config_overrides": {
                k: run_cfg[k] for k in ("mode", "steps", "guidance", "n_d", "seed")},
            "stems": [p.name for p in stems],
            "seconds": round(time.time() - entry.started, 1),
        }  # fmt: skip
        files.write_json(self.results / f"{job.name}.app.json", record)
        return record

    def close(self) -> None:
        self.queue.close()


def _check_client(client: Any) -> None:
    if not isinstance(client, str) or not 8 <= len(client) <= 64 or not client.isalnum():
        raise req.RequestError("client: a tab id of 8-64 letters and digits")


def _labels(body: dict, n: int) -> list[str]:
    labels = body.get("labels") if isinstance(body.get("labels"), list) else []
    out = [str(x)[:60] if isinstance(x, str) and x.strip() else "" for x in labels[:n]]
    out += [""] * (n - len(out))
    return [x or f"source {i + 1}" for i, x in enumerate(out)]


def log(msg: str) -> None:
    print(f"maestro app: {msg}", file=sys.stderr, flush=True)


def _failure_reason(results: Path, name: str, status: int) -> str:
    """Why job `name` failed: its row in the run's failures.json, else the exit status."""
    try:
        rows = json.loads((results / "failures.json").read_text())
        return next(r["reason"] for r in rows if r.get("job") == name)
    except (OSError, ValueError, KeyError, StopIteration, TypeError):
        return f"generation ended with status {status}"
