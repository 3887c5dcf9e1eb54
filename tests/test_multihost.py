"""Real multi-process runs on localhost: two JAX processes with 4 simulated CPU devices each,
joined by `jax.distributed.initialize` (gloo collectives over loopback), against one process.

  - training (`python -m maestro_jax.train`, runlocal): the two processes train to step 3
    (orbax checkpoint written by both, one data-iterator state per process), resume to step 5,
    and their metrics (process 0's metrics.jsonl) and the step-3 sample image equal those of
    one process with all 8 devices: per-process data is disjoint and assembles the same global
    batch;
  - generation (`python -m maestro_jax.generate --jobs`, runlocal, 3 jobs): jobs split between
    the processes with no overlap and no gaps, outputs identical to one process's sweep, and a
    rerun skips every finished job.

Compiles dominate (2 cores), so runs overlap in three phases: the single-process references;
the two-process training to step 3 and sweep; the resume to step 5 (its compiled steps from
the persistent cache of phase 2) and the sweep's rerun.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from maestro_jax import distributed
from maestro_jax.generation.jobs import Job, split_for_process

pytestmark = pytest.mark.multihost

REPO = Path(__file__).resolve().parents[1]
TRAIN_ARGS = [
    "-m",
    "maestro_jax.train",
    "--config=configs/cim.py:runlocal",
    "--config.sample.every_steps=3",
]
GEN_ARGS = [
    "-m",
    "maestro_jax.generate",
    "--config=configs/generate.py:runlocal",
    "--config.compilation_cache=",
    "--config.batch_size=1",  # one compiled call shape in every process
]
PHASE_TIMEOUT_S = 480


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAESTRO_")}
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        **extra,
    )
    if "MAESTRO_SHARED" in os.environ:
        env["MAESTRO_SHARED"] = os.environ["MAESTRO_SHARED"]
    return env


class _Run:
    """One command in one or two processes (the latter joined on a free loopback port)."""

    def __init__(
        self, name: str, args: list[str], logs: Path, processes: int, devices: int = 8, **env: str
    ):
        self.name, self.procs, self.logs = name, [], []
        port = _free_port()
        for i in range(processes):
            extra = dict(env)
            if processes > 1:
                extra.update(
                    MAESTRO_COORDINATOR=f"127.0.0.1:{port}",
                    MAESTRO_NUM_PROCESSES=str(processes),
                    MAESTRO_PROCESS_ID=str(i),
                )
            log = logs / f"{name}.p{i}.log"
            self.logs.append(log)
            with open(log, "w") as f:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, *args],
                        cwd=REPO,
                        env=_env(devices // processes, **extra),
                        stdout=f,
                        stderr=subprocess.STDOUT,
                    )
                )

    def text(self, i: int) -> str:
        return self.logs[i].read_text()


def _wait(runs: list[_Run], deadline: float) -> None:
    """Wait for every process; on a failure or past the deadline kill the rest and report."""
    try:
        for r in runs:
            for i, p in enumerate(r.procs):
                rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
                if rc != 0:
                    raise AssertionError(f"{r.name} process {i} exit {rc}:\n{r.text(i)[-3000:]}")
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"timed out: {[r.name for r in runs]}") from e
    finally:
        for r in runs:
            for p in r.procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The runlocal synthetic dataset (as `train` writes it into its workdir)."""
    from maestro_jax.data.synthetic import write_synthetic_dataset
    from maestro_jax.training.cim_config import get_config

    c = get_config("runlocal")
    data_dir = tmp_path_factory.mktemp("multihost_data")
    write_synthetic_dataset(
        data_dir,
        num_clips=c.data.synthetic_clips,
        resolution=c.data.synthetic_resolution,
        num_classes=c.data.synthetic_classes,
        seed=c.seed,
        frames_rule=c.frames.rule,
        num_test=c.sample.num_clips,
    )
    return data_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, audio_dir, data_dir):
    root = tmp_path_factory.mktemp("multihost")
    logs = root / "logs"
    logs.mkdir()
    names = [("dog", "cat", "LR"), ("violin", "piano", "TD"), ("drum", "guitar", "LR")]
    jobs = root / "jobs.jsonl"
    jobs.write_text(
        "".join(
            json.dumps(
                {"name": f"j{i}", "audio": [str(audio_dir / f"{a}.wav"), str(audio_dir / f"{b}.wav")],
                 "boxes": box, "seed": i}
            ) + "\n"
            for i, (a, b, box) in enumerate(names)
        )
    )  # fmt: skip
    train = [*TRAIN_ARGS, f"--config.data.dir={data_dir}"]
    gen = [*GEN_ARGS, f"--jobs={jobs}"]
    cache = str(root / "jax_cache")  # the two-process training's, reused by its resume
    t1, t2 = f"--workdir={root / 't1'}", f"--workdir={root / 't2'}"
    # phase 1: the single-process references (training on 8 devices, the sweep on 4)
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    one_train = _Run("train1", [*train, t1, "--config.total_steps=5"], logs, 1)
    one_gen = _Run("gen1", [*gen, f"--outdir={root / 'g1'}"], logs, 1, devices=4)
    _wait([one_train, one_gen], deadline)
    # phase 2: two processes train to step 3 (checkpoint) and run the sweep
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    two_train = _Run(
        "train2", [*train, t2, "--config.total_steps=3"], logs, 2, JAX_COMPILATION_CACHE_DIR=cache
    )
    two_gen = _Run("gen2", [*gen, f"--outdir={root / 'g2'}"], logs, 2)
    _wait([two_train, two_gen], deadline)
    first_ckpt = sorted(p.name for p in (root / "t2" / "checkpoints").iterdir())
    mtimes = {p.name: p.stat().st_mtime_ns for p in (root / "g2").iterdir()}
    # phase 3: resume to step 5 (compiled steps from the cache); the sweep again (all done)
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    resume = _Run(
        "train2_resume",
        [*train, t2, "--config.total_steps=5"],
        logs,
        2,
        JAX_COMPILATION_CACHE_DIR=cache,
    )
    rerun = _Run("gen2_rerun", [*gen, f"--outdir={root / 'g2'}"], logs, 2)
    _wait([resume, rerun], deadline)
    return {
        "root": root,
        "first_ckpt": first_ckpt,
        "two_train": two_train,
        "resume": resume,
        "two_gen": two_gen,
        "rerun": rerun,
        "g2_mtimes": mtimes,
    }


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_training_two_processes_equal_one_process(runs):
    root = runs["root"]
    one, two = _records(root / "t1"), _records(root / "t2")
    # process 0 alone writes the metrics: each step once, steps 1-3 then 4-5 after the resume
    assert [r["step"] for r in two] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in one] == [1, 2, 3, 4, 5]
    for a, b in zip(one, two):
        for k in ("loss", "loss_sd", "loss_sd_aug", "loss_mse", "loss_mse_aug", "param_norm"):
            np.testing.assert_allclose(b[k], a[k], rtol=2e-6, err_msg=f"step {a['step']} {k}")
        np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=1e-5)
    # the first run ended with a checkpoint at step 3 that the second run resumed from
    assert runs["first_ckpt"] == ["3"]
    assert "resumed from" in runs["resume"].text(0) and "at step 3" in runs["resume"].text(0)
    for step in ("3", "5"):
        data = root / "t2" / "checkpoints" / step / "data"
        assert sorted(p.name for p in data.glob("*.json")) == [
            "process_0-of-2.json",
            "process_1-of-2.json",
        ]
    # both processes joined one job of 8 devices; only process 0 logs progress
    for i in (0, 1):
        assert f"process {i}/2, 8 devices (4 local)" in runs["two_train"].text(i)
    assert "step 3 loss" in runs["two_train"].text(0)
    assert "step 3 loss" not in runs["two_train"].text(1)


def test_training_sample_image_equal(runs):
    from maestro_jax.video import read_png

    root = runs["root"]
    a = read_png(root / "t1" / "samples" / "step_0000003.png").astype(np.int16)
    b = read_png(root / "t2" / "samples" / "step_0000003.png").astype(np.int16)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1


def test_generation_two_processes_equal_one_process(runs):
    from maestro_jax.video import read_png, read_video

    root, gen2 = runs["root"], runs["two_gen"]
    # round-robin: process 0 ran j0 and j2, process 1 ran j1; each job exactly once
    assert "wrote" in gen2.text(0) and "wrote" in gen2.text(1)
    done = {i: {n for n in ("j0", "j1", "j2") if f"{n}.mp4" in gen2.text(i)} for i in (0, 1)}
    assert done == {0: {"j0", "j2"}, 1: {"j1"}}
    for n in ("j0", "j1", "j2"):
        a, b = root / "g1", root / "g2"
        np.testing.assert_array_equal(read_png(b / f"{n}.png"), read_png(a / f"{n}.png"))
        va, fa = read_video(a / f"{n}.mp4")
        vb, fb = read_video(b / f"{n}.mp4")
        assert fa == fb
        np.testing.assert_array_equal(vb, va)
        ja, jb = (json.loads((d / f"{n}.json").read_text()) for d in (a, b))
        for j in (ja, jb):
            j.pop("seconds_per_video")
        assert ja == jb


def test_generation_rerun_skips_finished_jobs(runs):
    rerun = runs["rerun"]
    assert "skip j0: already done" in rerun.text(0) and "skip j2: already done" in rerun.text(0)
    assert "skip j1: already done" in rerun.text(1)
    after = {p.name: p.stat().st_mtime_ns for p in (runs["root"] / "g2").iterdir()}
    assert after == runs["g2_mtimes"]


# ------------------------------------------------------------------- cheap checks, no processes
@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_split_for_process_no_overlap_no_gaps(count):
    jobs = [Job(name=f"j{i}", prompt="x") for i in range(11)]
    parts = [split_for_process(jobs, i, count) for i in range(count)]
    names = [j.name for p in parts for j in p]
    assert sorted(names) == sorted(j.name for j in jobs)  # no gaps
    assert len(names) == len(set(names))  # no overlap
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_block_split_assembles_the_global_batch(data_dir):
    """The trainer's data split: per-process batches of consecutive records, process p taking
    batch step * P + p, concatenate to the single-process global batch."""
    from maestro_jax.data.pipeline import make_map_dataset

    data = data_dir
    kw = dict(seed=0, shuffle=True, num_epochs=None, keys=("clip_id",))
    one = make_map_dataset(data, "train", batch_size=8, **kw)
    for procs in (2, 4):
        per = make_map_dataset(data, "train", batch_size=8 // procs, **kw)
        for step in range(3):
            parts = [list(per[p::procs][step]["clip_id"]) for p in range(procs)]
            flat = sum(parts, [])
            assert flat == list(one[step]["clip_id"])
        first = sum((list(per[p::procs][0]["clip_id"]) for p in range(procs)), [])
        assert len(set(first)) == 8  # disjoint (later batches may repeat clips across epochs)


def test_initialize_kwargs_from_environment(monkeypatch):
    for k in list(os.environ):
        if k.startswith("MAESTRO_"):
            monkeypatch.delenv(k)
    assert distributed.initialize_kwargs() is None
    assert distributed.initialize_kwargs(requested=True) == {}
    monkeypatch.setenv("MAESTRO_DISTRIBUTED", "1")
    assert distributed.initialize_kwargs() == {}
    monkeypatch.setenv("MAESTRO_COORDINATOR", "10.0.0.1:1234")
    with pytest.raises(ValueError, match="MAESTRO_NUM_PROCESSES"):
        distributed.initialize_kwargs()
    monkeypatch.setenv("MAESTRO_NUM_PROCESSES", "4")
    monkeypatch.setenv("MAESTRO_PROCESS_ID", "4")
    with pytest.raises(ValueError, match="not in"):
        distributed.initialize_kwargs()
    monkeypatch.setenv("MAESTRO_PROCESS_ID", "3")
    monkeypatch.setenv("MAESTRO_LOCAL_DEVICE_IDS", "0,1")
    assert distributed.initialize_kwargs() == {
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 4,
        "process_id": 3,
        "local_device_ids": [0, 1],
    }
