"""data.prepare and data.curate: the Apache Beam pipelines on DirectRunner with 2 worker
processes (records equal to those built in this process, error rows, reruns, a killed run
resumed), the layouts, and the curation rules."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from maestro_jax import files
from maestro_jax.data import beam_pipelines as BP
from maestro_jax.data import frames as F
from maestro_jax.data import prepare as P
from maestro_jax.data import sources
from maestro_jax.data import tfds_format as TF
from maestro_jax.data.synthetic import make_synthetic_videos, render_frames
from tests.conftest import REPO

BPE = "clip_tokenizer/bpe_simple_vocab_16e6.txt.gz"
RES = 32
WORKERS = 2  # DirectRunner worker processes
# One Beam worker in this process: for the layout checks, where worker processes add nothing.
IN_PROCESS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _output(out: Path) -> tuple[list[dict], list[bytes]]:
    """(manifest rows, the records' bytes read from the TFDS shards) in manifest order."""
    from array_record.python import array_record_module as arm

    manifest = files.read_jsonl(out / "manifest.jsonl")
    recs = []
    for m in manifest:
        r = arm.ArrayRecordReader(str(TF.tfds_dir(out) / m["shard"]))
        recs.append(r.read([m["row"]])[0])
        r.close()
    return manifest, recs


# ==================================================================================================
# prepare (landscape layout, two worker processes)
# ==================================================================================================


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    vids = root / "videos"
    # 5 videos: 1 static, 2 silent, 3 lasts 21 s (two 10 s clips); plus one corrupt file.
    files_ = make_synthetic_videos(vids, 5, static_ids=(1,), silent_ids=(2,), long_ids=(3,))
    out = root / "out"
    opts = P.PrepOptions(resolution=RES)
    summary = BP.prepare(vids, out, "landscape", opts=opts, files_per_part=2, num_workers=WORKERS)
    return {"root": root, "videos": vids, "out": out, "files": files_, "summary": summary}


def test_prepare_skips_and_logs_corrupt_file(prepared):
    s, out = prepared["summary"], prepared["out"]
    corrupt = [f for f in prepared["files"] if f["kind"] == "corrupt"]
    assert len(corrupt) == 1
    assert s["jobs"] == 6 and s["processed"] == 6 and s["skipped"] == 0 and s["units"] == 3
    assert s["clips_written"] == 6  # 5 files, one of them twice as long
    assert [e["source"] for e in s["errors"]] == ["rain_falling/vid_005.mp4"]
    logged = files.read_jsonl(out / "errors.jsonl")
    assert [e["source"] for e in logged] == ["rain_falling/vid_005.mp4"]
    assert "decode" in logged[0]["error"] or "Invalid" in logged[0]["error"]
    # Its unit was committed with the other file's two clips; the sidecar keeps the error.
    part = out / "parts" / "train" / f"{logged[0]['part']}.json"
    side = json.loads(part.read_text())
    assert side["num_records"] == 2 and [e["key"] for e in side["errors"]] == [logged[0]["key"]]


def test_prepare_manifest_and_records(prepared):
    import tensorflow_datasets as tfds

    out = prepared["out"]
    classes = TF.load_classes(out)
    assert classes == ["dog barking", "rain falling"]
    manifest = files.read_jsonl(out / "manifest.jsonl")
    assert [m["index"] for m in manifest] == list(range(6))
    # Discovery order (class folders, then file names), whatever worker ran which unit first.
    assert [m["clip_id"] for m in manifest] == [
        "dog_barking/vid_000_000000",
        "dog_barking/vid_002_000000",
        "dog_barking/vid_004_000000",
        "rain_falling/vid_001_000000",
        "rain_falling/vid_003_000000",
        "rain_falling/vid_003_000010",
    ]
    by_id = {m["clip_id"]: m for m in manifest}
    for m in manifest:
        assert m["split"] == "train"
        assert classes[m["label_index"]] == m["label"]
        assert m["source"] == m["clip_id"].rsplit("_", 1)[0] + ".mp4"
        assert m["num_frames"] == 80 and m["fps"] == 8.0
        assert m["frame_indices"] == F.frame_indices(80)
        assert m["duration"] == pytest.approx(10.0)
        assert (TF.tfds_dir(out) / m["shard"]).is_file()
    assert by_id["rain_falling/vid_003_000010"]["start"] == 10.0
    # Curation measures: the static video has no flow, the silent one no audio.
    assert by_id["rain_falling/vid_001_000000"]["flow_mag"] < 0.1
    assert by_id["dog_barking/vid_000_000000"]["flow_mag"] > 0.1
    assert by_id["dog_barking/vid_002_000000"]["audio_peak"] == 0.0
    assert by_id["dog_barking/vid_000_000000"]["audio_peak"] > 0.1

    # tfds reads the shards without TensorFlow; index i is manifest row i.
    ds = tfds.data_source("maestro_av", split="train", data_dir=str(out))
    assert len(ds) == 6
    for m in manifest:
        rec = ds[m["index"]]
        assert rec["clip_id"].decode() == m["clip_id"]
        assert rec["label"].decode() == m["label"] and int(rec["label_index"]) == m["label_index"]
        assert rec["frames"].shape == (5, RES, RES, 3) and rec["frames"].dtype == np.uint8
        assert rec["mel"].shape == (5, 128, 204) and rec["mel"].dtype == np.float16
        assert rec["audio"].shape == (160000,) and rec["audio"].dtype == np.float16

    # The second clip of the long video holds what its [10, 20) s window decodes to.
    from maestro_jax.audio import imagebind_audio_input, load_audio

    m = by_id["rain_falling/vid_003_000010"]
    rec = ds[m["index"]]
    path = prepared["videos"] / m["source"]
    frames, fps = F.read_video_window(path, 10.0, 10.0, 2 * RES)
    want = F.resize_center_crop(frames[np.array(F.frame_indices(len(frames)))], RES)
    np.testing.assert_array_equal(rec["frames"], want)
    wave = load_audio(path, sr=16000, mono=True)[0][0][160000:320000]
    np.testing.assert_allclose(rec["audio"].astype(np.float32), wave, atol=1e-3)
    mel = np.asarray(imagebind_audio_input(wave[None], 16000, 5))[:, 0]
    np.testing.assert_allclose(rec["mel"].astype(np.float32), mel, atol=4e-3, rtol=2e-3)


def test_prepare_rerun_is_idempotent(prepared, tmp_path):
    vids, out = prepared["videos"], tmp_path / "out"
    shutil.copytree(prepared["out"], out)
    opts = P.PrepOptions(resolution=RES)
    manifest, recs = _output(out)
    errors = files.read_jsonl(out / "errors.jsonl")
    run = dict(opts=opts, files_per_part=2, num_workers=WORKERS)

    # Every unit is committed: nothing runs; the corrupt file's error row stays, once.
    s = BP.prepare(vids, out, "landscape", **run)
    assert s["units"] == 0 and s["skipped"] == 6 and s["clips_written"] == 0 and not s["errors"]
    assert _output(out) == (manifest, recs)
    assert files.read_jsonl(out / "errors.jsonl") == errors

    # retry_errors runs the unit with the corrupt file again: same records, one error row.
    s = BP.prepare(vids, out, "landscape", retry_errors=True, **run)
    assert s["units"] == 1 and s["processed"] == 2 and s["clips_written"] == 2
    assert [e["source"] for e in s["errors"]] == ["rain_falling/vid_005.mp4"]
    assert _output(out) == (manifest, recs)
    assert [e["key"] for e in files.read_jsonl(out / "errors.jsonl")] == [errors[0]["key"]]

    # An interrupted unit: its sidecar was never written, a temp file was left behind.
    part_dir = out / "parts" / "train"
    sidecar = sorted(part_dir.glob("*.json"))[0]
    lost = json.loads(sidecar.read_text())["done"]
    sidecar.unlink()
    (part_dir / ".junk.0123.array_record.tmp").write_bytes(b"x")
    s = BP.prepare(vids, out, "landscape", **run)
    assert s["units"] == 1 and s["processed"] == len(lost) and s["clips_written"] == len(lost)
    assert not list(part_dir.glob(".*.tmp"))
    assert _output(out) == (manifest, recs)  # same names, same order, same bytes

    # Other units (--files_per_part changed): committed clips are not written twice.
    s = BP.prepare(vids, out, "landscape", opts=opts, files_per_part=3, beam_args=IN_PROCESS)
    assert s["processed"] == 1 and s["clips_written"] == 0  # the corrupt file, again
    m2, r2 = _output(out)
    assert sorted(m["clip_id"] for m in m2) == sorted(m["clip_id"] for m in manifest)
    assert sorted(r2) == sorted(recs)

    with pytest.raises(ValueError, match="every worker sees"):
        BP.prepare(vids, "gs://bucket/out", "landscape", opts=opts)

    # Other record options cannot resume into the same folder.
    with pytest.raises(ValueError, match="other options"):
        BP.prepare(vids, out, "landscape", opts=P.PrepOptions(resolution=48), beam_args=IN_PROCESS)


# ==================================================================================================
# Equality with records built in this process; a killed run resumed
# ==================================================================================================


def _toy_world_video(path: Path) -> None:
    """A toy-world scene (two objects over a background, their sounds + ambience) as an mp4."""
    from maestro_jax.toy import world as tw
    from maestro_jax.video import write_video

    scene, stems, ambient = tw.sample_scene(np.random.default_rng(3), 2)
    frames = tw.render(scene, tw.NUM_FRAMES, 64)
    write_video(path, frames, tw.FPS, tw.mixture(stems, ambient), tw.SR)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, audio_dir):
    """Landscape input of synthetic videos (and a corrupt file), a toy-world video and real
    recordings (car.wav, 10 s at 44.1 kHz stereo; dog.wav, 3 s) under rendered frames."""
    from maestro_jax.audio import load_audio
    from maestro_jax.video import write_video

    root = tmp_path_factory.mktemp("mixed")
    src = root / "videos"
    make_synthetic_videos(src, 2, num_classes=2, size=(36, 64))
    (src / "toy_world").mkdir()
    _toy_world_video(src / "toy_world" / "scene_0.mp4")
    (src / "real_audio").mkdir()
    for k, name in enumerate(("car", "dog")):
        wave, sr = load_audio(audio_dir / f"{name}.wav")
        frames = render_frames(int(wave.shape[-1] / sr * 8), 8.0, 40, 56, 3 + k)
        write_video(src / "real_audio" / f"{name}.mp4", frames, 8.0, wave, sr)
    out = root / "out"
    opts = P.PrepOptions(resolution=RES)
    s = BP.prepare(src, out, "landscape", opts=opts, files_per_part=1, num_workers=WORKERS)
    return {"src": src, "out": out, "opts": opts, "summary": s}


def test_beam_records_equal_in_process_records(mixed):
    """Each stored record has the bytes `process_source` + `serialize_record` give in this
    process (what the process pool stored, and the synthetic writers use), in discovery order."""
    s, opts = mixed["summary"], mixed["opts"]
    assert s["units"] == 6 and [e["source"] for e in s["errors"]] == ["dog_barking/vid_002.mp4"]
    manifest, recs = _output(mixed["out"])
    jobs, _, _ = sources.discover(mixed["src"], "landscape")
    features = P.features_for(opts)
    want_rows, want_recs = [], []
    for job in jobs:
        if job.source.endswith("vid_002.mp4"):
            continue  # the corrupt file
        for rec, entry in P.process_source(job, opts):
            want_recs.append(TF.serialize_record(features, rec))
            want_rows.append({**entry, "source": job.source, "key": job.key})
    assert [m["clip_id"] for m in manifest] == [r["clip_id"] for r in want_rows]
    assert {m["source"] for m in manifest} >= {"toy_world/scene_0.mp4", "real_audio/car.mp4"}
    for m, w in zip(manifest, want_rows):
        assert {k: m[k] for k in w} == w
    assert recs == want_recs  # same bytes: frames, mel floats, audio, labels
    # Field by field, as the trainer's reader sees them.
    from maestro_jax.data.pipeline import data_source

    ds = data_source(mixed["out"], "train")
    for i, b in enumerate(want_recs):
        got, want = ds[i], features.deserialize_example_np(b)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    dog = [m for m in manifest if m["source"] == "real_audio/dog.mp4"]
    assert len(dog) == 1 and dog[0]["duration"] == pytest.approx(3.02, abs=0.03)


def test_killed_run_resumes_to_the_same_output(mixed, tmp_path):
    """SIGKILL a `python -m data.prepare` (launcher and Beam workers) once a unit is committed;
    the rerun writes the rest: the same manifest and record bytes as the uninterrupted run."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "data.prepare", "--input", str(mixed["src"]), "--out", str(out),
           "--layout", "landscape", "--resolution", str(RES), "--files_per_part", "1",
           "--direct_num_workers", str(WORKERS)]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not list((out / "parts").glob("*/*.json")) and proc.poll() is None:
            assert time.monotonic() < deadline, "no unit committed in 300 s"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.jsonl").exists()  # killed before the commit step
    committed = len(list((out / "parts").glob("*/*.json")))
    assert 1 <= committed < 6

    from maestro_jax import cli
    from tests.conftest import load_command

    cmd_mod = load_command("data.prepare")
    assert cli.call(cmd_mod.main, cmd[3:]) == 0
    assert _output(out) == _output(mixed["out"])
    assert not list((out / "parts").glob("*/.*.tmp"))
    got = [e["key"] for e in files.read_jsonl(out / "errors.jsonl")]
    assert got == [e["key"] for e in files.read_jsonl(mixed["out"] / "errors.jsonl")]


def test_prepare_command_beam_options(tmp_path):
    from maestro_jax import cli

    assert cli.beam_args("--project=p --region=r", ["--temp_location=gs://b/t"]) == [
        "--project=p", "--region=r", "--temp_location=gs://b/t",
    ]  # fmt: skip
    assert cli.beam_args("", ["oops"]) == 2
    opts = pytest.importorskip("apache_beam").options.pipeline_options
    from maestro_jax.data.beam_pipelines import pipeline_options

    o = pipeline_options("DirectRunner", 2, ["--direct_num_workers=3"]).view_as(opts.DirectOptions)
    assert o.direct_running_mode == "multi_processing" and o.direct_num_workers == 3
    o = pipeline_options("DataflowRunner", 2, ["--project=p", "--setup_file=./setup.py"])
    assert o.view_as(opts.StandardOptions).runner == "DataflowRunner"
    assert o.view_as(opts.GoogleCloudOptions).project == "p"
    assert o.view_as(opts.SetupOptions).setup_file == "./setup.py"


# ==================================================================================================
# The other layouts
# ==================================================================================================


def test_prepare_vggsound_and_frames_wav_layouts(tmp_path, audio_dir):
    import cv2

    from maestro_jax.audio import write_wav
    from maestro_jax.data.synthetic import render_audio
    from maestro_jax.video import write_video

    # VGGSound: two pre-cut clips, one corrupt file, one full video cut at 3 s, one missing.
    src = tmp_path / "vgg"
    make_synthetic_videos(src, 2, layout="vggsound", num_classes=2)
    write_video(
        src / "videos" / "fullvid.mp4",
        render_frames(120, 8.0, 48, 64, 1),
        8.0,
        render_audio(15.0, 1),
        16000,
    )
    csv = src / "vggsound.csv"
    csv.write_text(csv.read_text() + "fullvid,3,rain falling,test\nmissing01,0,dog barking,train\n")
    jobs, classes, problems = sources.discover(src, "vggsound", csv)
    assert classes == ["dog barking", "rain falling"]
    assert [p["source"] for p in problems] == ["missing01_000000"]
    assert {j.key: j.clips[0][1] for j in jobs}["fullvid_000003"] == 3.0
    out = tmp_path / "vgg_out"
    s = BP.prepare(src, out, "vggsound", csv, P.PrepOptions(resolution=16), beam_args=IN_PROCESS)
    assert s["splits"] == {"test": 1, "train": 2}
    assert {e["source"] for e in s["errors"]} == {
        "missing01_000000",
        "videos/vid0000002_000000.mp4",
    }
    assert {e["source"] for e in files.read_jsonl(out / "errors.jsonl")} == {
        e["source"] for e in s["errors"]
    }
    full = [m for m in files.read_jsonl(out / "manifest.jsonl") if m["clip_id"] == "fullvid_000003"]
    assert full[0]["start"] == 3.0 and full[0]["split"] == "test" and full[0]["num_frames"] == 80

    # The release's frames + wav folders: <class>/<clip>/<clip>_%04d.jpg + <clip>.wav; the second
    # clip has a real recording (cat.wav, 44.1 kHz stereo, 9.6 s) under 77 frames.
    fw = tmp_path / "fw"
    for name, n, wav in (("clip_a", 40, None), ("clip_b", 77, audio_dir / "cat.wav")):
        clip = fw / "horse_neighing" / name
        clip.mkdir(parents=True)
        for i, f in enumerate(render_frames(n, 8.0, 24, 24, 0)):
            cv2.imwrite(str(clip / f"{name}_{i:04d}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        if wav is None:
            write_wav(clip / f"{name}.wav", render_audio(5.0, 0), 16000)
        else:
            shutil.copy(wav, clip / f"{name}.wav")
    out = tmp_path / "fw_out"
    opts = P.PrepOptions(resolution=16, frames_rule="release", keep_audio=False)
    s = BP.prepare(fw, out, "frames_wav", None, opts, beam_args=IN_PROCESS)
    assert s["splits"] == {"train": 2} and not s["errors"]
    a, b = files.read_jsonl(out / "manifest.jsonl")
    assert a["label"] == "horse neighing" and a["num_frames"] == 40 and a["fps"] == 8.0
    assert a["frame_indices"] == F.frame_indices(40, "release")
    assert b["duration"] == pytest.approx(9.62, abs=0.01) and b["num_frames"] == 77
    from maestro_jax.data.pipeline import data_source

    rec = data_source(out, "train")[0]
    assert rec["frames"].shape == (10, 16, 16, 3) and "audio" not in rec


def test_prepare_without_units_left_still_commits(tmp_path):
    """An input whose every file fails: empty committed parts, no TFDS split, error rows."""
    src = tmp_path / "bad" / "some_class"
    src.mkdir(parents=True)
    (src / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    s = BP.prepare(src.parent, out, "landscape", beam_args=IN_PROCESS)
    assert s["splits"] == {} and s["units"] == 1 and len(s["errors"]) == 1
    assert [e["source"] for e in files.read_jsonl(out / "errors.jsonl")] == [
        "some_class/broken.mp4"
    ]
    assert files.read_jsonl(out / "manifest.jsonl") == []


# ==================================================================================================
# curate (random tiny ImageBind)
# ==================================================================================================


@pytest.fixture(scope="module")
def curated(prepared, fixtures_dir):
    from maestro_jax.data.beam_pipelines import curate

    cur = prepared["root"] / "curated"
    summary = curate(
        prepared["out"], "random-tiny", cur, bpe_path=fixtures_dir / BPE, num_workers=WORKERS,
        batch_size=4,
    )  # fmt: skip
    return {"dir": cur, "summary": summary}


def test_curate_median_rule_and_filters(prepared, curated, fixtures_dir):
    from maestro_jax.data import curate as C
    from maestro_jax.video import read_png

    cur = curated["dir"]
    rows = files.read_jsonl(cur / "curation.jsonl")
    assert len(rows) == 6
    sims = {k: np.array([r[k] for r in rows]) for k in C.SIMS}
    for v in sims.values():
        assert np.all(np.abs(v) <= 1.0 + 1e-5) and np.ptp(v) > 0
    med = {k: float(np.median(v)) for k, v in sims.items()}
    assert curated["summary"]["medians"] == pytest.approx(med)
    by_id = {r["clip_id"]: r for r in rows}
    assert "static" in by_id["rain_falling/vid_001_000000"]["reasons"]
    assert "silent" in by_id["dog_barking/vid_002_000000"]["reasons"]
    for r in rows:
        above = all(r[k] > med[k] for k in C.SIMS)
        want = above and r["flow_mag"] > 0.1 and r["audio_peak"] > 0.0
        assert r["kept"] == want and r["kept"] == (not r["reasons"])
    kept = {r["clip_id"] for r in rows if r["kept"]}
    manifest = files.read_jsonl(cur / "manifest.jsonl")
    assert [m["clip_id"] for m in manifest] == [r["clip_id"] for r in rows if r["kept"]]
    assert {m["clip_id"] for m in manifest} == kept
    assert all(set(C.SIMS) <= set(m) for m in manifest)
    img = read_png(cur / "histogram.png")
    assert img.shape == (180, 720, 3)
    assert np.any(np.all(img == (220, 30, 30), axis=-1))  # the median lines

    # The workers' similarities (batches of 4, tail padded) are this process's, batch of 16.
    cfg, params = C.load_imagebind("random-tiny")
    emb = C.Embedder(cfg, params, 16)
    text = C.text_embeddings(prepared["out"], emb, fixtures_dir / BPE)
    src = [
        {"i": i, **m} for i, m in enumerate(files.read_jsonl(prepared["out"] / "manifest.jsonl"))
    ]
    reader = C.RecordReader(prepared["out"])
    want = C.score_batch(src, reader, emb, text)
    reader.close()
    for r, w in zip(rows, want):
        assert r["clip_id"] == w["clip_id"]
        for k in C.SIMS:
            assert r[k] == pytest.approx(w[k], abs=1e-5)


def test_curate_copies_kept_records(prepared, fixtures_dir):
    from maestro_jax.data.beam_pipelines import curate
    from maestro_jax.data.pipeline import data_source

    # sim_rule='none' keeps everything but the static and the silent clip.
    cur = prepared["root"] / "curated_none"
    kw = dict(bpe_path=fixtures_dir / BPE, sim_rule="none", records_per_part=3)
    s = curate(prepared["out"], "random-tiny", cur, beam_args=IN_PROCESS, **kw)
    assert s["num_kept"] == 4 and s["dropped_for"] == {"static": 1, "silent": 1}
    assert s["splits"] == {"train": 4}
    assert len(list((cur / "parts" / "train").glob("*.array_record"))) == 2
    src = data_source(prepared["out"], "train")
    src_index = {
        m["clip_id"]: m["index"] for m in files.read_jsonl(prepared["out"] / "manifest.jsonl")
    }
    dst = data_source(cur, "train")
    assert len(dst) == 4
    manifest = files.read_jsonl(cur / "manifest.jsonl")
    for m in manifest:
        a, b = dst[m["index"]], src[src_index[m["clip_id"]]]
        assert a["clip_id"] == b["clip_id"]
        for k in ("frames", "mel", "audio"):
            np.testing.assert_array_equal(a[k], b[k])
    assert TF.load_classes(cur) == TF.load_classes(prepared["out"])
    # A rerun (also after a killed one) replaces the curation: no part is kept twice.
    part = cur / "parts" / "train" / "curated-00000"
    for ext in (".array_record", ".json"):
        shutil.copy(part.with_suffix(ext), part.with_name("curated-00009").with_suffix(ext))
    s = curate(prepared["out"], "random-tiny", cur, beam_args=IN_PROCESS, **kw)
    assert s["splits"] == {"train": 4} and files.read_jsonl(cur / "manifest.jsonl") == manifest
    # The command, Beam options after `--` (one part of up to 256 records by default).
    from maestro_jax import cli
    from tests.conftest import load_command

    argv = ["--data", str(prepared["out"]), "--imagebind", "random-tiny", "--out", str(cur),
            "--bpe", str(fixtures_dir / BPE), "--sim_rule", "none", "--", *IN_PROCESS]  # fmt: skip
    assert cli.call(load_command("data.curate").main, argv) == 0
    assert [m["clip_id"] for m in files.read_jsonl(cur / "manifest.jsonl")] == [
        m["clip_id"] for m in manifest
    ]
    assert sorted(p.name for p in (cur / "parts" / "train").iterdir()) == [
        "curated-00000.array_record", "curated-00000.json",
    ]  # fmt: skip


# ==================================================================================================
# The benchmark
# ==================================================================================================


def test_benchmark_smoke(tmp_path, capsys):
    """benchmarks/data_prepare.py on two tiny videos: one process vs Beam, same records."""
    from maestro_jax import cli
    from tests.conftest import load_command

    bench = load_command("benchmarks.data_prepare")
    argv = ["--videos", "2", "--size", "32x48", "--resolution", "16", "--files_per_part", "1",
            "--workers", "1", "--ways", "serial,beam", "--json", str(tmp_path / "r.json"),
            "--workdir", str(tmp_path / "w")]  # fmt: skip
    assert cli.call(bench.main, argv) == 0
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["impl"] for r in rows] == ["one process", "Beam DirectRunner"]
    assert all(r["clips"] == 2 and r["same_records"] for r in rows)
    assert "| Beam DirectRunner | 1 |" in capsys.readouterr().out
