"""End-to-end generation on CPU with tiny random models: the CLI contract, sweeps (batched,
resumable, failing jobs skipped), separation jobs, determinism, and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maestro_jax.audio import load_audio
from maestro_jax.generation import config as gen_configs
from maestro_jax.generation import config as t2v_configs
from maestro_jax.generation import runner as gen
from maestro_jax.generation import sampling
from maestro_jax.generation.jobs import Job
from maestro_jax.video import read_png, read_video

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg():
    return gen_configs.get_config("runlocal")


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax_cache"))


def _cli(args, jax_cache, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    return subprocess.run(
        [sys.executable, "-m", "maestro_jax.generate", *args,
         f"--config.compilation_cache={jax_cache}"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout,
    )  # fmt: skip


def test_cli_two_real_stems_lr(tmp_path, audio_dir, jax_cache):
    """The exact form outside checks use; checks the .mp4 and the .json."""
    out = tmp_path / "out"
    r = _cli(
        ["--config=configs/generate.py:runlocal", "--audio", str(audio_dir / "dog.wav"),
         "--audio", str(audio_dir / "violin.wav"), "--boxes", "LR", "--outdir", str(out)],
        jax_cache,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    frames, fps = read_video(out / "dog_violin.mp4")
    cfg = gen_configs.get_config("runlocal")
    assert frames.shape == (cfg.num_frames, cfg.height, cfg.width, 3)
    assert fps == pytest.approx(cfg.num_frames / cfg.clip_window)
    audio, sr = load_audio(out / "dog_violin.mp4")
    assert audio.shape[1] / sr == pytest.approx(cfg.num_frames / fps, abs=0.05)
    settings = json.loads((out / "dog_violin.json").read_text())
    assert settings["job"]["audio"] == [str(audio_dir / "dog.wav"), str(audio_dir / "violin.wav")]
    assert settings["num_sources"] == 2 and settings["n_d"] == cfg.n_d
    assert settings["boxes_per_frame"][0] == [[0.0, 0.3, 0.5, 0.7], [0.5, 0.3, 1.0, 0.7]]
    assert settings["mosaic_boxes_per_frame"][0][0] == [0.0, 0.0, 0.5, 1.0]
    assert settings["random_weights"] is True
    sheet = read_png(out / "dog_violin.png")
    assert sheet.shape[0] > cfg.height and sheet.shape[1] > cfg.width
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--audio", "NOPE.wav", "--audio", "NOPE2.wav", "--boxes", "LR"], "NOPE.wav"),
        (["--box", "0,0,1.2,1", "--box", "0,0,.5,1"], "1.2"),
        (["--boxes", "LR", "--n_d", "9"], "N_D = 9"),
        (["--box", "0,0,.5,.5"], "2 sources but 1 boxes"),
    ],
)
def test_cli_bad_input_fails_before_compute(tmp_path, audio_dir, jax_cache, extra, needle):
    stems = [] if "NOPE.wav" in extra else ["--audio", str(audio_dir / "dog.wav"),
                                            "--audio", str(audio_dir / "cat.wav")]  # fmt: skip
    out = tmp_path / "out"
    r = _cli(["--config=configs/generate.py:runlocal", *stems, *extra,
              "--outdir", str(out)], jax_cache, timeout=120)  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert needle in r.stderr
    assert not out.exists()  # a run that failed before writing anything leaves no folder


def test_too_many_sources_is_a_clear_error(cfg, audio_dir, tmp_path):
    c = gen_configs.get_config("runlocal")
    c.num_queries = 40  # floor(76 / 40) = 1 source fits
    job = Job(name="x", audio=[str(audio_dir / "dog.wav"), str(audio_dir / "cat.wav")],
              boxes="LR")  # fmt: skip
    with pytest.raises(gen.InputError, match="do not fit one 77-token context: at most"):
        gen.run(c, [job], tmp_path, strict=True)


def test_silent_stem_warns(cfg, audio_dir, tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "silent.wav", np.zeros((16000, 1), np.float32), 16000)
    job = Job(name="s", audio=[str(audio_dir / "dog.wav"), str(tmp_path / "silent.wav")])
    plan = gen.plan_job(job, cfg, {"resolutions": ((16, 16), (8, 8), (4, 4))})
    assert any("silent" in w for w in plan.warnings)


def test_sweep_batched_resumable_and_failures(cfg, audio_dir, tmp_path, capsys):
    d, c, v = (str(audio_dir / f) for f in ("dog.wav", "cat.wav", "violin.wav"))
    jobs = [
        Job(name="a", audio=[d, c], boxes="LR", seed=1),
        Job(name="b", audio=[c, v], boxes="TD", seed=2),
        Job(name="c", audio=[d, v], boxes=[[0, 0, 0.5, 1], [0.5, 0, 1, 1]], seed=3, n_d=0),
        Job(name="bad", audio=[d, str(tmp_path / "missing.wav")], boxes="LR"),
        Job(name="t", audio=[d, c, v], boxes=["0,0,.4,1", "0:.3,0,.7,1;1:.6,0,1,1", ".6,0,1,1"]),
    ]
    out = tmp_path / "sweep"
    status = gen.run(cfg, jobs, out, strict=False)
    assert status == 1  # one job failed, the others were written
    err = capsys.readouterr().err
    assert "missing.wav" in err
    for n in "abct":
        assert (out / f"{n}.mp4").is_file() and (out / f"{n}.json").is_file()
    assert not (out / "bad.mp4").exists()
    kf = json.loads((out / "t.json").read_text())["boxes_per_frame"]
    assert kf[0][1][0] == pytest.approx(0.3) and kf[-1][1][0] == pytest.approx(0.6)
    stamp = {n: (out / f"{n}.mp4").stat().st_mtime_ns for n in "abct"}
    # resume: finished jobs are skipped, nothing is rewritten
    status = gen.run(cfg, jobs[:3], out, strict=False)
    assert status == 0
    assert "skip a: already done" in capsys.readouterr().out
    assert all((out / f"{n}.mp4").stat().st_mtime_ns == stamp[n] for n in "abc")


def test_same_job_and_seed_same_video(cfg, audio_dir):
    from maestro_jax import mosaic
    from maestro_jax.audio import encoder as ae
    from maestro_jax.generation import sampling

    m = gen.build_models(cfg)
    stems = [load_audio(audio_dir / "dog.wav"), load_audio(audio_dir / "piano.wav")]
    tokens = ae.encode_stems(m.audio, stems)
    spec = sampling.VideoSpec(cfg.num_frames, cfg.height, cfg.width)
    loc, mos = mosaic.preset("LR")
    st = gen._settings(cfg, cfg.n_d)
    a = sampling.sample_maestro(m, [sampling.prepare_job(m, tokens, loc, mos, spec, 7)], st)
    b = sampling.sample_maestro(m, [sampling.prepare_job(m, tokens, loc, mos, spec, 7)], st)
    c = sampling.sample_maestro(m, [sampling.prepare_job(m, tokens, loc, mos, spec, 8)], st)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3
    # the ablation modes differ from the full method (edits do something)
    v = sampling.sample_maestro(m, [sampling.prepare_job(m, tokens, loc, mos, spec, 7)],
                          gen._settings(cfg, cfg.n_d, "vanilla"))  # fmt: skip
    assert np.abs(np.asarray(a) - np.asarray(v)).max() > 1e-4


def test_batched_sharded_equals_one_by_one(cfg, audio_dir, cpu_mesh):
    from maestro_jax import mosaic
    from maestro_jax.audio import encoder as ae
    from maestro_jax.sharding import make_mesh

    m = gen.build_models(cfg)
    spec = sampling.VideoSpec(cfg.num_frames, cfg.height, cfg.width)
    st = gen._settings(cfg, cfg.n_d)
    names = ["dog", "cat", "violin", "piano", "drum", "guitar", "fire", "car"]
    jobs = []
    for i in range(8):
        stems = [
            load_audio(audio_dir / f"{names[i]}.wav"),
            load_audio(audio_dir / f"{names[i - 1]}.wav"),
        ]
        loc, mos = mosaic.preset("LR" if i % 2 else "TD")
        jobs.append(sampling.prepare_job(m, ae.encode_stems(m.audio, stems), loc, mos, spec, i))
    mesh = make_mesh((8, 1), ("data", "fsdp"))
    batched = np.asarray(sampling.sample_maestro(m, jobs, st, mesh=mesh))
    for i in (0, 5):
        one = np.asarray(sampling.sample_maestro(m, [jobs[i]], st))[0]
        assert np.linalg.norm(batched[i] - one) / np.linalg.norm(one) < 1e-5


def test_mixture_job_separates_first(cfg, audio_dir, tmp_path):
    """Separation first; every folder and file written gets the modes the umask allows."""
    mix, sr = sampling.mixture_of(
        [load_audio(audio_dir / "dog.wav"), load_audio(audio_dir / "cat.wav")]
    )
    import soundfile as sf

    sf.write(tmp_path / "mix.wav", mix.T, sr)
    job = Job(name="m", mixture=str(tmp_path / "mix.wav"), queries=["dog barking", "cat meowing"],
              boxes="LR")  # fmt: skip
    out = tmp_path / "new" / "o"
    old = os.umask(0o027)
    try:
        assert gen.run(cfg, [job], out, strict=True) == 0
    finally:
        os.umask(old)
    made = [out.parent, out, *out.rglob("*")]
    assert len(made) == 2 + 4 + 2  # mp4, png, json, stems/ + two stems
    for p in made:
        assert p.stat().st_mode & 0o777 == (0o750 if p.is_dir() else 0o640), p
    stems = sorted((out / "m_stems").glob("*.wav"))
    assert [p.name for p in stems] == ["00_dog_barking.wav", "01_cat_meowing.wav"]
    w, ssr = load_audio(stems[0])
    assert ssr == 32000 and abs(w.shape[1] / ssr - mix.shape[1] / sr) < 1e-3
    assert json.loads((out / "m.json").read_text())["kind"] == "mixture"


def test_t2v_runlocal_cli(tmp_path, jax_cache):
    r = _cli(["--config=configs/t2v.py:runlocal", "--prompt", "a dog barking",
              "--outdir", str(tmp_path)], jax_cache)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    mp4 = tmp_path / "t2v_a_dog_barking.mp4"
    frames, _ = read_video(mp4)
    assert frames.shape[0] == 16 == t2v_configs.get_config("runlocal").num_frames
    assert "%" in r.stdout or "%" in r.stderr  # the progress bar
