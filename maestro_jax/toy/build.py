"""Build the toy world's weights from scratch: `make toy-world` = `python -m maestro_jax.toy.build`.

Runs every stage of `maestro_jax.toy.config` (`configs/toy.py`) in order through the project's
training entry point (`python -m maestro_jax.train --config=<that file>:<stage>
--workdir=<root>/<stage>`), each
in its own process with its own progress bar; a stage whose export exists is skipped, and an
interrupted stage resumes from its newest checkpoint when the command is run again. At the end
the exports are copied (atomically) into `maestro_jax/assets/toy/`:

    vc/unet  <- t2v_layout (the t2v model, layout fine-tuned)   vc/vae <- vae   vc/text <- text
    t2i/ <- t2i
    imagebind/ <- imagebind     cim/ <- cim     separator/ <- separator

with `build.json` (per stage: the command, wall time, steps, the final logged metrics; the
machine and versions). Options: `--root runs/toy` (work folders), `--assets DIR`,
`--stages t2v,cim` (only these, in order), `--force` (retrain the listed stages from scratch),
`--no_install`, `--smoke` (a few steps per stage).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import flags

from maestro_jax import cli
from maestro_jax.toy import config as toy_config
from maestro_jax.toy.config import ASSETS, STAGES

_ROOT = flags.DEFINE_string("root", "runs/toy", "work folders of the stages")
_ASSETS = flags.DEFINE_string("assets", str(ASSETS), "where the weights are installed")
_STAGES = flags.DEFINE_string("stages", ",".join(STAGES), "comma-separated stages")
_FORCE = flags.DEFINE_bool("force", False, "retrain the listed stages")
_NO_INSTALL = flags.DEFINE_bool("no_install", False, "train only; leave the assets alone")
_SMOKE = flags.DEFINE_bool("smoke", False, "a few steps per stage (untrained weights)")

LAYOUT = {
    "text": "vc/text",
    "vae": "vc/vae",
    "t2v_layout": "vc/unet",
    "t2i": "t2i",
    "imagebind": "imagebind",
    "cim": "cim",
    "separator": "separator",
}
MAX_BYTES = 50 * 2**20


def _last_metrics(workdir: Path) -> dict:
    m = workdir / "metrics.jsonl"
    if not m.exists():
        return {}
    lines = [ln for ln in m.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else {}


# --smoke: a few steps per stage (tests and tooling; the weights are NOT trained)
SMOKE = {
    "vae": ["--config.total_steps=3", "--config.batch_size=2"],
    "t2i": ["--config.total_steps=3", "--config.batch_size=2"],
    "t2v": ["--config.total_steps=3", "--config.batch_size=1"],
    "t2v_layout": ["--config.total_steps=2", "--config.batch_size=1"],
    "separator": ["--config.total_steps=3"],
    "cim": ["--config.total_steps=3", "--config.data.synthetic_clips=12"],
}


def _total_steps(stage: str, extra: list[str] | None) -> int:
    from maestro_jax.toy import config as toy

    for a in extra or []:
        if a.startswith("--config.total_steps="):
            return int(a.split("=", 1)[1])
    return int(toy.get_config(stage).get("total_steps", 0))


def run_stage(stage: str, root: Path, force: bool = False, extra: list[str] | None = None) -> dict:
    """Train one stage (or skip it when its export exists); returns its build record."""
    workdir = root / stage
    export = workdir / "export"
    record_path = workdir / "stage.json"
    if force and workdir.exists():
        shutil.rmtree(workdir)
    steps = _total_steps(stage, extra)
    if (export / "params").exists() and record_path.exists():
        record = json.loads(record_path.read_text())
        if record.get("total_steps") == steps:
            print(f"[toy-world] {stage}: done earlier ({export}), skipped")
            return record
        # the config asks for more (or fewer) steps: resume the stage from its checkpoint
        print(f"[toy-world] {stage}: trained to {record.get('total_steps')} steps, want {steps}")
    cmd = [
        sys.executable, "-m", "maestro_jax.train", f"--config={toy_config.__file__}:{stage}",
        f"--workdir={workdir}", f"--config.root={root}", *(extra or []),
    ]  # fmt: skip
    print(f"[toy-world] {stage}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd)
    if proc.returncode:
        raise SystemExit(
            f"[toy-world] stage {stage} failed (exit {proc.returncode}); run the same command "
            "again to resume it"
        )
    wall = time.perf_counter() - t0
    prev = json.loads(record_path.read_text()) if record_path.exists() else {}
    record = {
        "stage": stage,
        "command": " ".join(["python", *cmd[1:]]).replace(toy_config.__file__, "configs/toy.py"),
        "total_steps": steps,
        "wall_s": round(wall + float(prev.get("wall_s", 0.0)), 1),
        "final_metrics": _last_metrics(workdir),
    }
    tmp = record_path.with_name(".stage.json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, record_path)
    return record


def write_demo(folder: Path, seed: int = 25, num_sources: int = 2) -> None:
    """The bundled demo mixture of `make demo`: mixture.wav + job.json (queries, boxes). Seed 25
    gives a blue square (left) and a red disc (right)."""
    from maestro_jax import audio as audio_lib
    from maestro_jax.toy import batches as toy_batches
    from maestro_jax.toy import world as toyworld

    job = toy_batches.demo_job(seed, num_sources)
    folder.mkdir(parents=True, exist_ok=True)
    audio_lib.write_wav(folder / "mixture.wav", job["mixture"][None], toyworld.SR)
    spec = {
        "mixture": "mixture.wav",
        "seconds": toyworld.SECONDS,
        "queries": list(job["labels"]),
        "classes": [int(c) for c in job["classes"]],
        "boxes": [[float(v) for v in b] for b in job["boxes"]],
        "made_by": f"maestro_jax.toy.world.demo_job(seed={seed}, num_sources={num_sources})",
    }
    (folder / "job.json").write_text(json.dumps(spec, indent=1))


def install(root: Path, assets: Path, records: dict) -> Path:
    """Copy every export into `assets` (a temporary sibling renamed into place)."""
    assets.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".toy-", dir=assets.parent))
    try:
        for stage, sub in LAYOUT.items():
            src = root / stage / "export"
            if not (src / "params").exists():
                raise SystemExit(f"[toy-world] {src} is missing: build stage {stage!r} first")
            shutil.copytree(src, tmp / sub)
        write_demo(tmp / "demo")
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        if size > MAX_BYTES:
            raise SystemExit(f"[toy-world] the weights take {size / 2**20:.1f} MB > 50 MB")
        import jax

        build = {
            "made_by": "python -m maestro_jax.toy.build (make toy-world)",
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "python": platform.python_version(),
            "jax": jax.__version__,
            "total_bytes": size,
            "stages": records,
        }
        (tmp / "build.json").write_text(json.dumps(build, indent=1))
        from maestro_jax.checkpoints import replace_dir

        replace_dir(tmp, assets)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"[toy-world] weights installed in {assets} ({size / 2**20:.1f} MB)")
    return assets


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.error(f"unexpected arguments: {argv[1:]}")
    stages = [s.strip() for s in _STAGES.value.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        return cli.error(f"unknown stage(s) {bad}; known: {', '.join(STAGES)}")
    root = Path(_ROOT.value).resolve()
    t0 = time.perf_counter()
    records = {}
    for stage in STAGES:  # always in dependency order
        if stage in stages:
            extra = SMOKE.get(stage, []) if _SMOKE.value else []
            records[stage] = run_stage(stage, root, force=_FORCE.value, extra=extra)
        elif (root / stage / "stage.json").exists():
            records[stage] = json.loads((root / stage / "stage.json").read_text())
    print(f"[toy-world] stages done in {time.perf_counter() - t0:.0f} s")
    if not _NO_INSTALL.value:
        install(root, Path(_ASSETS.value), records)
    return 0


if __name__ == "__main__":
    cli.run(main)
