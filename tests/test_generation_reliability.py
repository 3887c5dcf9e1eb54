"""Reliability of generation runs: a job's identity is its content (no stale results), one bad
job never sinks a sweep, bad values named before compute, the output folder checked, locked and
cleaned, warnings stored with the job.

The runner's compute (models, audio encoding, sampling, decoding) is replaced by stand-ins that
cost nothing (`fake_compute`): these tests are about what the runner does around it; the real
compute is covered by test_generate.py."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from maestro_jax import cli
from maestro_jax.generation import config as gen_configs
from maestro_jax.generation import identity
from maestro_jax.generation import outdir as gen_outdir
from maestro_jax.generation import outputs as gen_outputs
from maestro_jax.generation import runner as gen
from maestro_jax.generation.jobs import Job, JobError, job_from_dict, read_jobs

REPO = Path(__file__).resolve().parents[1]
HINT = {"resolutions": ((16, 16), (8, 8), (4, 4))}


@pytest.fixture()
def cfg():
    c = gen_configs.get_config("runlocal")
    c.compilation_cache = ""
    return c


@pytest.fixture()
def fake_compute(monkeypatch):
    """Models, encoding, sampling and decoding replaced by stand-ins; `calls` counts the sampled
    jobs. A job whose seed is 666 fails in sampling (with the others of its batch)."""
    calls = []

    def models(self, weights, cim_key="", **kw):
        return types.SimpleNamespace(random=True, audio=None, separator=None)

    def sample(models, prepared, settings, mesh=None, progress=None):
        calls.extend(prepared)
        if 666 in prepared:
            raise RuntimeError("sampler blew up")
        return np.zeros((len(prepared), 1))

    def decode(models, latents, chunk=None):
        c = gen_configs.get_config("runlocal")
        return np.full((latents.shape[0], c.num_frames, c.height, c.width, 3), 128, np.uint8)

    monkeypatch.setattr(gen.ModelPool, "models", models)
    monkeypatch.setattr(gen.ae, "encode_stems", lambda *a, **k: None)
    monkeypatch.setattr(gen.sampling, "prepare_job", lambda m, t, lb, mb, spec, seed, o: seed)
    monkeypatch.setattr(gen.sampling, "sample_maestro", sample)
    monkeypatch.setattr(gen.sampling, "decode", decode)
    return calls


def _stamp(path: Path) -> int:
    return path.stat().st_mtime_ns


# ------------------------------------------------------------------ 1: no stale results
def test_rerun_regenerates_when_inputs_or_settings_change(cfg, fake_compute, audio_dir, tmp_path,
                                                          capsys):  # fmt: skip
    d, c, v = (str(audio_dir / f) for f in ("dog.wav", "cat.wav", "violin.wav"))
    out = tmp_path / "o"
    assert gen.run(cfg, [Job(name="j", audio=[d, c], boxes="LR")], out, strict=True) == 0
    first = json.loads((out / "j.json").read_text())
    assert len(first["job_hash"]) == 64
    assert any("dropped" in w for w in first["warnings"])  # cat.wav is 9.6 s: cut to 4 s
    assert any("padded" in w for w in first["warnings"])  # dog.wav is 3 s
    t0 = _stamp(out / "j.mp4")
    # the same job again: skipped
    assert gen.run(cfg, [Job(name="j", audio=[d, c], boxes="LR")], out, strict=True) == 0
    assert "skip j: already done" in capsys.readouterr().out and _stamp(out / "j.mp4") == t0
    assert len(fake_compute) == 1
    # another input under the same name: regenerated
    assert gen.run(cfg, [Job(name="j", audio=[d, v], boxes="LR")], out, strict=True) == 0
    second = json.loads((out / "j.json").read_text())
    assert second["job"]["audio"][1] == v and second["job_hash"] != first["job_hash"]
    # a setting changed (the sweep form): regenerated
    cfg.steps = 10
    assert gen.run(cfg, [Job(name="j", audio=[d, v], boxes="LR")], out, strict=False) == 0
    assert json.loads((out / "j.json").read_text())["config"]["steps"] == 10
    assert len(fake_compute) == 3
    # asked to keep old results: refused, recorded, exit 1
    cfg.steps = 4
    job = Job(name="j", audio=[d, v], boxes="LR")
    assert gen.run(cfg, [job], out, strict=False, keep_existing=True) == 1
    rows = json.loads((out / "failures.json").read_text())
    assert rows[0]["job"] == "j" and "--keep_existing" in rows[0]["reason"]
    assert len(fake_compute) == 3


def test_job_hash_covers_bytes_fields_settings_and_weights(cfg, audio_dir, tmp_path):
    a = tmp_path / "a.wav"
    a.write_bytes((audio_dir / "dog.wav").read_bytes())
    job = Job(name="x", audio=[str(a)], boxes="0,0,.5,1")
    base = identity.job_hash(job, identity.settings_identity(cfg))
    assert identity.job_hash(Job(name="other", audio=[str(a)], boxes="0,0,.5,1"),
                             identity.settings_identity(cfg)) == base  # fmt: skip
    variants = [Job(name="x", audio=[str(a)], boxes="0,0,.5,1", seed=1),
                Job(name="x", audio=[str(a)], boxes=".5,0,1,1")]  # fmt: skip
    for j in variants:
        assert identity.job_hash(j, identity.settings_identity(cfg)) != base
    cfg.guidance = 3.0
    assert identity.job_hash(job, identity.settings_identity(cfg)) != base
    cfg.guidance = 7.5
    cfg.outdir = "elsewhere"  # where the outputs go does not change them
    assert identity.job_hash(job, identity.settings_identity(cfg)) == base
    a.write_bytes((audio_dir / "cat.wav").read_bytes())  # same path, other bytes
    assert identity.job_hash(job, identity.settings_identity(cfg)) != base
    w = tmp_path / "weights"
    w.mkdir()
    cfg.checkpoint = str(w)
    before = identity.settings_identity(cfg)
    (w / "params.bin").write_bytes(b"12345")
    assert identity.settings_identity(cfg) != before


def _generate_command(monkeypatch):
    gen_cmd = cli.load_command("maestro_jax.generate")
    monkeypatch.setattr(gen_cmd, "enable_compilation_cache", lambda path: None)  # conftest's
    return gen_cmd


def test_one_job_form_names_outputs_after_inputs(fake_compute, audio_dir, tmp_path, monkeypatch):
    gen_cmd = _generate_command(monkeypatch)
    out = tmp_path / "o"
    base = ["--config=configs/generate.py:runlocal", "--boxes", "LR", "--outdir", str(out)]
    for pair in (("dog", "cat"), ("dog", "violin")):
        argv = [*base, *(f"--audio={audio_dir / f'{n}.wav'}" for n in pair)]
        assert cli.call(gen_cmd.main, argv) == 0
    assert (out / "dog_cat.mp4").is_file() and (out / "dog_violin.mp4").is_file()
    argv = [*base, f"--audio={audio_dir / 'dog.wav'}", f"--audio={audio_dir / 'cat.wav'}",
            "--name=mine"]  # fmt: skip
    assert cli.call(gen_cmd.main, argv) == 0 and (out / "mine.mp4").is_file()


# ------------------------------------------------------------------ 2: per-job isolation
def test_one_failure_never_sinks_the_sweep(cfg, fake_compute, audio_dir, tmp_path, monkeypatch):
    d, c = str(audio_dir / "dog.wav"), str(audio_dir / "cat.wav")
    lines = [
        {"name": "good", "audio": [d, c], "boxes": "LR", "seed": 1},
        {"name": "badseed", "audio": [d, c], "seed": "abc"},
        {"name": "unwritable", "audio": [d, c], "boxes": "LR", "seed": 2},
        {"name": "boom", "audio": [d], "boxes": "0,0,.5,1", "seed": 666},
        {"name": "late", "audio": [c], "boxes": ".5,0,1,1", "seed": 3},
    ]
    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    real = gen_outputs.write_outputs

    def write(plan, *a, **k):
        if plan.job.name == "unwritable":
            raise PermissionError("[Errno 13] Permission denied: 'unwritable.mp4'")
        return real(plan, *a, **k)

    monkeypatch.setattr(gen, "write_outputs", write)
    cfg.batch_size = 1
    failures: list = []
    jobs = read_jobs(jobs_file, failures)
    out = tmp_path / "o"
    assert gen.run(cfg, jobs, out, strict=False, failures=failures) == 1
    assert (out / "good.mp4").is_file() and (out / "late.mp4").is_file()
    rows = {r["job"]: r for r in json.loads((out / "failures.json").read_text())}
    assert sorted(rows) == ["badseed", "boom", "unwritable"]
    assert rows["badseed"]["field"] == "seed" and "'abc'" in rows["badseed"]["reason"]
    assert "Permission denied" in rows["unwritable"]["reason"]
    assert "sampler blew up" in rows["boom"]["reason"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # lock and temp files gone


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"seed": "abc"}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"n_d": "2"}, "n_d"),
        ({"audio": [1, 2]}, "audio"),
        ({"queries": ["dog", " "], "mixture": "m.wav"}, "queries"),
        ({"boxes": 3}, "boxes"),
        ({"name": 7}, "name"),
        ({"sed": 1}, "sed"),
    ],
)
def test_job_fields_and_types_are_checked(fields, field):
    with pytest.raises(JobError) as e:
        job_from_dict({"audio": ["a.wav"], **fields}, 3)
    assert e.value.field == field and field in str(e.value)
    assert str(e.value).startswith("job 3")


# ------------------------------------------------------------------ 5: the output folder
def test_outdir_checked_before_compute(cfg, fake_compute, audio_dir, tmp_path, monkeypatch):
    job = Job(name="j", audio=[str(audio_dir / "dog.wav")], boxes="0,0,.5,1")
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad, needle in ((afile, "is a file"), (afile / "sub", "cannot be made")):
        with pytest.raises(gen.InputError, match=needle):
            gen.run(cfg, [job], bad, strict=False)
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access  # (tests may run as root, whom no mode stops)
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == ro else real_access(p, m))
    with pytest.raises(gen.InputError, match="not writable"):
        gen.run(cfg, [job], ro, strict=False)
    assert fake_compute == []


def test_outdir_lock_and_temp_files(cfg, fake_compute, audio_dir, tmp_path):
    out = tmp_path / "o"
    job = Job(name="j", audio=[str(audio_dir / "dog.wav")], boxes="0,0,.5,1")
    with gen_outdir.locked(out):  # another run is writing the folder
        with pytest.raises(gen.InputError, match=r"being written by another run \(pid \d+\)"):
            gen.run(cfg, [job], out, strict=False)
    assert fake_compute == []
    leftovers = [out / ".j.k3x_q9zz.mp4", out / ".j.ab12cd34.json"]
    for p in leftovers:
        p.write_bytes(b"half")
    (out / "j.mp4").write_bytes(b"half a video")  # no .json: not finished
    keep = out / ".other.ab12cd34.json"  # not one of this run's jobs: left alone
    keep.write_text("{}")
    assert gen.run(cfg, [job], out, strict=False) == 0
    assert not any(p.exists() for p in leftovers) and keep.exists()
    assert json.loads((out / "j.json").read_text())["job_hash"]
    assert not (out / gen_outdir.LOCK_NAME).exists() and not (out / "failures.json").exists()


def test_interrupted_run_leaves_no_temp_or_lock(cfg, fake_compute, audio_dir, tmp_path,
                                               monkeypatch):  # fmt: skip
    from maestro_jax.files import atomic_path

    def write(plan, frames, mix, outdir, *a, **k):
        with atomic_path(outdir / f"{plan.job.name}.mp4") as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt  # Ctrl-C (SIGTERM unwinds the same way under cli.run)

    monkeypatch.setattr(gen, "write_outputs", write)
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        gen.run(cfg, [Job(name="j", audio=[str(audio_dir / "dog.wav")], boxes="0,0,.5,1")], out,
                strict=False)  # fmt: skip
    assert os.listdir(out) == []


def test_bad_settings_are_named_before_models_load(cfg, fake_compute, audio_dir, tmp_path):
    job = Job(name="j", audio=[str(audio_dir / "dog.wav")], boxes="0,0,.5,1")
    for field, value in (("steps", 0), ("eta", -1.0), ("mode", "fast"), ("height", 4)):
        c = gen_configs.get_config("runlocal")
        c[field] = value
        with pytest.raises(gen.InputError, match=f"--config.{field} must be"):
            gen.run(c, [job], tmp_path / "o", strict=False)
    assert fake_compute == [] and not (tmp_path / "o").exists()


def test_generate_reports_a_misspelt_config_field_in_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "maestro_jax.generate", "--config=configs/generate.py:runlocal",
         "--config.stepz=10", "--audio=a.wav", f"--outdir={tmp_path}"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "stepz" in lines[0] and '"steps"' in lines[0], r.stderr


# ------------------------------------------------------------------ 6: warnings and errors
def test_warnings_for_boxes_queries_and_sources(cfg, audio_dir, tmp_path):
    d, c = str(audio_dir / "dog.wav"), str(audio_dir / "cat.wav")
    same = gen.plan_job(Job(name="s", audio=[d, c], boxes=[[0, 0, 0.5, 1]] * 2), cfg, HINT)
    assert any("identical" in w for w in same.warnings)
    over = gen.plan_job(Job(name="o", audio=[d, c], boxes=[[0, 0, 0.6, 1], [0.4, 0, 1, 1]]),
                        cfg, HINT)  # fmt: skip
    assert any("overlap (IoU up to 0.20)" in w for w in over.warnings)
    apart = gen.plan_job(Job(name="a", audio=[d, c], boxes="LR"), cfg, HINT)
    assert not any("overlap" in w or "identical" in w for w in apart.warnings)
    mix = tmp_path / "mix.wav"
    sf.write(mix, np.full((64000, 1), 0.1, np.float32), 16000)  # exactly the 4 s window
    hint = {**HINT, "separator_labels": ["red disc", "blue square"], "max_sources": 1,
            "separator_max_sources": 1}  # fmt: skip
    job = Job(name="m", mixture=str(mix), queries=["Red Disc", "purple cow"], boxes="LR")
    ws = gen.plan_job(job, cfg, hint).warnings
    assert [w for w in ws if "query" in w] == [
        "query 'purple cow' names none of the separator's classes (red disc, blue square)"
    ]
    assert any("2 sources, but the video model was trained with at most 1" in w for w in ws)
    assert any("2 sources, but the separator was trained with at most 1" in w for w in ws)
    assert not any("padded" in w or "dropped" in w for w in ws)


def test_toy_exports_record_labels_and_max_sources():
    from maestro_jax.toy import config as toy_config

    hints = gen.plan_hints(toy_config.generate_config())
    assert hints["max_sources"] == 4 and "red disc" in hints["separator_labels"]
    assert hints["separator_max_sources"] == 3
    assert gen.plan_hints(gen_configs.get_config("runlocal"))["max_sources"] is None


def test_empty_query_is_an_error(fake_compute, tmp_path, monkeypatch):
    gen_cmd = _generate_command(monkeypatch)
    mix = tmp_path / "mix.wav"
    sf.write(mix, np.zeros((16000, 1), np.float32), 16000)
    argv = ["--config=configs/generate.py:runlocal", f"--mixture={mix}", "--query=dog",
            "--query= ", f"--outdir={tmp_path / 'o'}"]  # fmt: skip
    assert cli.call(gen_cmd.main, argv) == 2
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ separation
def test_separate_checks_out_folder_queries_and_labels(tmp_path, audio_dir, monkeypatch, capsys):
    from maestro_jax.toy import config as toy_config

    separate_cli = cli.load_command("maestro_jax.separate")
    mix = str(audio_dir / "dog.wav")
    afile = tmp_path / "afile"
    afile.write_text("x")
    base = ["--config=configs/separate.py:runlocal", f"--mixture={mix}"]
    assert cli.call(separate_cli.main, [*base, "--query=dog", f"--out={afile}"]) == 2
    assert "--out" in capsys.readouterr().err
    out = tmp_path / "o"
    assert cli.call(separate_cli.main, [*base, "--query=dog", "--query=", f"--out={out}"]) == 2
    assert "--query: an empty query" in capsys.readouterr().err and not out.exists()
    # a separator export that records its classes: a query naming none of them is a warning
    sep_dir = toy_config.assets_dir() / "separator"
    qemb = tmp_path / "q.npz"
    np.savez(qemb, embeddings=np.zeros((2, 8), np.float32))
    monkeypatch.setattr(separate_cli, "separate", lambda v, c, m, e: np.zeros((len(e), 100)))
    argv = ["--config=configs/separate.py", f"--mixture={mix}", f"--checkpoint={sep_dir}",
            f"--query_embeddings={qemb}", "--query=Red disc", "--query=purple cow",
            f"--out={out}"]  # fmt: skip
    assert cli.call(separate_cli.main, argv) == 0
    notes = json.loads((out / "separate.json").read_text())["notes"]
    assert len(notes) == 1 and "'purple cow' names none of the separator's classes" in notes[0]
    assert all((out / f).stat().st_mode & 0o777 == 0o666 & ~_umask() for f in os.listdir(out))


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m
