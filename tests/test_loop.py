"""The shared training loop (`maestro_jax.training.loop`) and its checkpoints, on a tiny
regression task: records, resume, host fetches only at log steps, the non-finite stop, and
the fall-back past corrupt checkpoints (a truncated array file, a garbled `_METADATA`)."""

from __future__ import annotations

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maestro_jax.training import loop as loop_lib
from maestro_jax.training.checkpoints import UnreadableCheckpointError

DIM = 512  # 2 KB of weights: stored in an array data file (orbax inlines values under 1 KB)


def _task(nan_at: int = 0, per_step: bool = False) -> loop_lib.Task:
    true_w = np.linspace(-1, 1, DIM).astype(np.float32)

    @jax.jit
    def step(state, batch):
        def loss_fn(w):
            return jnp.mean((batch["x"] @ w - batch["y"]) ** 2)

        loss, g = jax.value_and_grad(loss_fn)(state["w"])
        loss = jnp.where(batch["i"] == nan_at, jnp.nan, loss)
        return {"w": state["w"] - 0.05 * g}, {"loss": loss, "gnorm": jnp.linalg.norm(g)}

    def batch(i: int) -> dict:
        x = np.random.default_rng([0, i]).normal(size=(16, DIM)).astype(np.float32)
        return {"x": x, "y": x @ true_w, "i": np.int32(i)}

    return loop_lib.Task(
        "tiny",
        {"w": jnp.zeros(DIM)},
        step,
        batch,
        export=lambda s: {"w": np.asarray(s["w"])},
        config={"what": "test"},
        per_step_records=per_step,
    )


def _run(workdir, total: int, **kw) -> dict:
    loop = loop_lib.LoopConfig(total, log_every=2, checkpoint_every=2, keep=3, async_save=False)
    return loop_lib.run(_task(**kw), loop, workdir)


def _steps(workdir) -> list[int]:
    return [json.loads(ln)["step"] for ln in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    w = tmp_path_factory.mktemp("straight")
    return {6: _run(w, 6)["w"], 8: _run(w, 8)["w"]}


def test_records_checkpoints_and_resume(tmp_path, straight):
    out = _run(tmp_path, 4)
    assert out["step"] == 4 and out["resumed_from"] is None
    out = _run(tmp_path, 6)
    assert out["resumed_from"] == 4
    np.testing.assert_array_equal(out["w"], straight[6])  # bit for bit
    assert _steps(tmp_path) == [2, 4, 6]  # one line per log step: the means since the last
    rec = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"loss", "gnorm", "step_time_s", "data_time_s", "elapsed_s"} <= set(rec)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "4", "6"]
    assert json.loads((tmp_path / "config.json").read_text()) == {"what": "test"}
    # the data position of a pure-function-of-step stream is the step
    assert json.loads((tmp_path / "checkpoints/6/data/metadata").read_text()) == {"step": 6}


def test_metrics_reach_the_host_only_at_log_steps(tmp_path, monkeypatch):
    calls = []
    real = jax.device_get
    monkeypatch.setattr(loop_lib.jax, "device_get", lambda x: calls.append(1) or real(x))
    loop = loop_lib.LoopConfig(6, log_every=3, checkpoint_every=6, async_save=False)
    loop_lib.run(_task(per_step=True), loop, tmp_path)
    # two fetches for 6 steps: the flushes at steps 3 and 6 (the save at 6 needs no separate
    # finite check, the flush just checked every step)
    assert len(calls) == 2
    assert _steps(tmp_path) == [1, 2, 3, 4, 5, 6]  # per-step lines, fetched stacked


def test_non_finite_stops_without_saving(tmp_path):
    loop = loop_lib.LoopConfig(8, log_every=4, checkpoint_every=2, async_save=False)
    with pytest.raises(loop_lib.NonFiniteError, match="step 5: loss=nan is not finite") as e:
        loop_lib.run(_task(nan_at=5, per_step=True), loop, tmp_path)
    assert "last good checkpoint is step 4" in str(e.value)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [2, 4]
    assert _steps(tmp_path) == [1, 2, 3, 4]


def _data_file(step_dir):
    """The largest array data file of the saved state (ocdbt data under state/)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


def test_truncated_array_file_falls_back_to_the_older_step(tmp_path, straight, caplog):
    _run(tmp_path, 6)
    f = _data_file(tmp_path / "checkpoints" / "6")
    assert f.stat().st_size > 1000
    f.write_bytes(f.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="maestro_jax.train"):
        out = _run(tmp_path, 8)
    warn = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert "checkpoint step 6 is unreadable" in warn[0] and "trying step 4" in warn[0]
    assert "checkpoints/6/state" in warn[0] and "\n" not in warn[0]
    assert out["resumed_from"] == 4
    np.testing.assert_array_equal(out["w"], straight[8])  # as if step 6 had never been saved
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "6.unreadable" in names and "8" in names
    assert _steps(tmp_path) == [2, 4, 6, 8]


def test_corrupt_metadata_names_the_file(tmp_path, caplog):
    _run(tmp_path, 4)
    (tmp_path / "checkpoints" / "4" / "state" / "_METADATA").write_text("{garbage")
    with caplog.at_level(logging.WARNING, logger="maestro_jax.train"):
        out = _run(tmp_path, 4)
    warn = next(r.getMessage() for r in caplog.records if "unreadable" in r.getMessage())
    assert "step 4" in warn and "checkpoints/4/state/_METADATA" in warn
    assert "not valid JSON" in warn
    assert out["resumed_from"] == 2 and out["step"] == 4


def test_no_readable_step_is_a_clear_error(tmp_path):
    _run(tmp_path, 4)
    for s in ("2", "4"):
        (tmp_path / "checkpoints" / s / "state" / "_METADATA").write_text("")
    with pytest.raises(UnreadableCheckpointError, match=r"step 4: .*_METADATA.*; step 2: "):
        _run(tmp_path, 6)
