"""The web app's server side without a browser: upload checks, request validation (the generate
command's own rules), the queue (one job at a time, a tab's second submit, cancel, failures),
the HTTP layer (limits, ids instead of paths) and the command's refusals."""

import io
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile as sf

from maestro_jax import cli
from maestro_jax.toy import config as toy_config
from maestro_jax.webapp import requests as req
from maestro_jax.webapp.queue import Busy, Cancelled, Entry, JobQueue
from tests.conftest import load_command


def wav_bytes(seconds=1.0, sr=16000, channels=1, fmt="WAV") -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    wave = np.stack([0.3 * np.sin(2 * np.pi * 440 * t)] * channels, axis=-1)
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt)
    return buf.getvalue()


@pytest.fixture
def store(tmp_path):
    return req.AudioStore(tmp_path / "uploads", req.Limits(max_bytes=200_000, max_seconds=5.0))


def test_uploads_are_checked_and_stored_under_server_names(store, tmp_path):
    ok = store.add(wav_bytes(), "../../evil name.wav")
    assert req.AUDIO_ID.match(ok["id"]) and ok["rate"] == 16000 and ok["channels"] == 1
    assert [p.name for p in store.folder.iterdir()] == [f"{ok['id']}.wav"]
    assert store.path_of(ok["id"]).parent == store.folder
    flac = store.add(wav_bytes(fmt="FLAC", channels=2), "b.flac")
    assert store.path_of(flac["id"]).suffix == ".flac" and flac["channels"] == 2
    bad = {
        "empty": (b"", "empty"),
        "garbage": (b"RIFF not really audio" * 10, "not a readable"),
        "huge": (b"\0" * 300_000, "limit"),
        "rate": (wav_bytes(sr=4000), "sample rate 4000"),
        "channels": (wav_bytes(channels=3), "3 channels"),
        "short": (wav_bytes(seconds=0.1), "0.10 s long"),
        "long": (wav_bytes(seconds=6.0, sr=8000), "6.00 s long"),
    }
    for name, (data, why) in bad.items():
        with pytest.raises(req.RequestError, match=why):
            store.add(data, name)
    assert len(list(store.folder.iterdir())) == 2  # nothing half-kept
    for hostile in ("../uploads/x", "/etc/passwd", ok["id"] + "/..", 7, "0" * 32):
        with pytest.raises(req.RequestError):
            store.path_of(hostile)


@pytest.fixture(scope="module")
def toy_cfg():
    return toy_config.generate_config()


def test_requests_are_validated_with_the_generate_rules(store, toy_cfg):
    a, b = (store.add(wav_bytes(), n)["id"] for n in ("a", "b"))
    good = {"sources": [a, b], "boxes": [[0, 0.2, 0.5, 0.8], [0.5, 0.2, 1, 0.8]]}
    job, settings = req.job_of(good, store, toy_cfg, "x")
    assert settings == {"mode": "maestro", "steps": 20, "n_d": 4, "guidance": 5.0, "seed": 0}
    assert job.audio == [str(store.path_of(a)), str(store.path_of(b))]
    padded = req.validate(job, req.run_config(toy_cfg, settings))  # 1 s uploads
    assert len(padded) == 2 and all("padded with silence to the 4 s window" in w for w in padded)

    def refused(body, match, cfg=toy_cfg):
        with pytest.raises(req.RequestError, match=match):
            job, settings = req.job_of({**good, **body}, store, cfg, "x")
            req.validate(job, req.run_config(cfg, settings))

    refused({"boxes": [[0, 0.2, 0.5, 0.8]]}, "one box per source")
    refused({"boxes": [[0.5, 0.2, 0.5, 0.8], [0.5, 0.2, 1, 0.8]]}, "left must be < right")
    refused({"boxes": [[0, 0.2, 0.05, 0.8], [0.5, 0.2, 1, 0.8]]}, "covers no latent cell")
    refused({"boxes": [[-0.1, 0.2, 0.5, 0.8], [0.5, 0.2, 1, 0.8]]}, r"lie in \[0, 1\]")
    refused({"settings": {"n_d": 30}}, r"settings.n_d: 30 is outside \[0, 20\]")
    refused({"settings": {"mode": "fast"}}, "settings.mode")
    refused({"settings": {"steps": "many"}}, "settings.steps")
    refused({"settings": {"cfg": 1}}, "unknown field")
    refused({"sources": [a, "../../x"]}, "not one this app made")
    refused({"sources": [], "mixture": a, "queries": ["dog", " "]}, r"queries\[1\]: the query is")
    refused({"sources": [], "mixture": a, "queries": []}, "one text query per source")
    too_wide = toy_cfg.copy_and_resolve_references()
    too_wide.num_queries = 40  # one source fills the 77-token context
    refused({}, "do not fit one 77-token context", too_wide)
    small = req.AudioStore(store.folder, req.Limits(max_sources=1))
    with pytest.raises(req.RequestError, match="more than this app takes"):
        req.job_of(good, small, toy_cfg, "x")
    moving = {"keyframes": [[1.0, [0.5, 0.2, 1, 0.8]], [0.0, [0, 0.2, 0.5, 0.8]]]}
    job, settings = req.job_of(
        {**good, "boxes": [moving, [0.4, 0.2, 0.9, 0.8]]}, store, toy_cfg, "x"
    )
    assert job.boxes[0]["keyframes"][0][0] == 0.0  # sorted by position
    warnings = req.validate(job, req.run_config(toy_cfg, settings))
    assert warnings and "sources 1 and 2 overlap" in warnings[0]


def _entry(i, client="tab0000001"):
    return Entry(f"job{i}", client, i, {})


def test_queue_runs_one_at_a_time_cancels_and_survives_failures():
    gate, seen, running = threading.Event(), [], []

    def runner(entry, progress):
        running.append(entry.id)
        try:
            assert len(running) == 1  # never two at once
            if entry.payload == 3:
                raise RuntimeError("boom\nsecond line")
            for step in range(100):
                progress.step(step)  # raises Cancelled once the entry is cancelled
                if step == 1:
                    gate.wait(10)
            seen.append(entry.id)
            return {"ok": entry.id}
        finally:
            running.pop()

    q = JobQueue(runner)
    try:
        assert q.submit(_entry(1, "tabA000001")) == 0
        with pytest.raises(Busy, match="still"):
            q.submit(_entry(9, "tabA000001"))  # the same tab's second submit
        assert q.submit(_entry(2, "tabB000001")) == 1
        assert q.submit(_entry(3, "tabC000001")) == 2
        assert q.submit(_entry(4, "tabD000001")) == 3
        deadline = time.time() + 10
        while q.get("job1")["state"] != "running" and time.time() < deadline:
            time.sleep(0.01)
        assert [v["id"] for v in q.snapshot()] == ["job1", "job2", "job3", "job4"]
        assert q.get("job4")["position"] == 2
        assert q.cancel("job2")  # still waiting: removed
        gate.set()
        assert q.wait_idle(10)
        assert q.get("job1")["state"] == "done" and q.get("job1")["result"] == {"ok": "job1"}
        assert q.get("job2")["state"] == "cancelled"
        assert q.get("job3")["state"] == "failed"
        assert q.get("job3")["message"] == "RuntimeError: boom"
        assert q.get("job4")["state"] == "done"  # the worker went on after the failure
        running.clear()
        gate.clear()
        q.submit(_entry(5, "tabA000001"))  # the tab's job is finished: a new one is taken
        while q.get("job5")["step"] < 2 and time.time() < deadline:
            time.sleep(0.01)
        assert q.cancel("job5")
        gate.set()
        assert q.wait_idle(10)
        assert q.get("job5")["state"] == "cancelled" and "job5" not in seen
        assert q.get("job5")["step"] == 2  # stopped at the step after the cancel
    finally:
        q.close()


def test_progress_reports_the_phase():
    q = JobQueue(lambda e, p: {})
    try:
        e = _entry(1)
        e.steps, e.n_d, e.stage = 4, 2, "sample"
        q.progress.entry = e
        q.progress.step(0)
        assert e.view()["phase"] == "Object Locating" and e.step == 1
        q.progress.step(2)
        assert e.view()["phase"] == "Mosaic Denoising"
        e.cancel.set()
        with pytest.raises(Cancelled):
            q.progress.step(3)
    finally:
        q.progress.entry = None
        q.close()


def _http(url, data=None, method=None):
    r = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(r, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_http_api_limits_and_ids(tmp_path, toy_cfg):
    from maestro_jax.webapp.server import Served, make_app
    from maestro_jax.webapp.service import Service

    def fake_run(entry, progress):
        job, _ = entry.payload
        progress.stage("sample", [job.name])
        progress.step(0)
        (svc.results / f"{job.name}.mp4").write_bytes(b"mp4")
        record = {"id": job.name, "summary": entry.summary, "finished": "now"}
        (svc.results / f"{job.name}.app.json").write_text(json.dumps(record))
        return record

    svc = Service(toy_cfg, tmp_path / "app", config_arg="configs/toy.py:generate",
                  limits=req.Limits(max_bytes=100_000), runner=fake_run)  # fmt: skip
    served = Served(make_app(svc))
    url = served.url
    try:
        status, page = _http(url + "/")
        assert status == 200 and b'<canvas id="frame"' in page and b"http" not in page
        assert _http(url + "/static/app.js")[0] == 200
        assert _http(url + "/static/..%2f__init__.py")[0] == 404
        status, body = _http(url + "/api/upload?name=big.wav", b"\0" * 200_000, "POST")
        assert status == 413 and b"limit" in body
        status, body = _http(url + "/api/upload?name=x.wav", b"junk", "POST")
        assert status == 400 and b"not a readable" in body
        ids = [json.loads(_http(url + "/api/upload?name=a.wav", wav_bytes(), "POST")[1])["id"]
               for _ in range(2)]  # fmt: skip
        assert _http(url + f"/api/audio/{ids[0]}")[0] == 200
        assert _http(url + "/api/audio/..%2f..%2fetc%2fpasswd")[0] in (400, 404)
        status, body = _http(url + "/api/jobs", b"{not json", "POST")
        assert status == 400 and b"not JSON" in body
        request = {"sources": ids, "boxes": [[0, 0.2, 0.5, 0.8], [0.5, 0.2, 1, 0.8]]}
        bad = {**request, "boxes": [[0, 0.2, 0.5, 0.8], [0.5, 0.9, 1, 0.9]]}
        body = json.dumps({"client": "tab123456", "request": bad}).encode()
        status, answer = _http(url + "/api/jobs", body, "POST")
        assert status == 400 and b"top must be < bottom" in answer
        body = json.dumps({"client": "tab123456", "request": request}).encode()
        status, answer = _http(url + "/api/jobs", body, "POST")
        assert status == 200, answer
        job_id = json.loads(answer)["id"]
        assert svc.queue.wait_idle(20)
        view = json.loads(_http(url + f"/api/jobs/{job_id}")[1])
        assert view["state"] == "done" and view["step"] == 1
        assert _http(url + f"/api/files/{job_id}/mp4") == (200, b"mp4")
        assert _http(url + f"/api/files/{job_id}/png")[0] == 400  # not written
        assert _http(url + "/api/files/..%2f..%2fuploads/mp4")[0] == 404
        gallery = json.loads(_http(url + "/api/gallery")[1])
        assert [g["id"] for g in gallery] == [job_id]
        for sep, why in [
            ({}, b"upload a mixture first"),
            ({"mixture": ids[0], "queries": ["dog", ""]}, b"the query is empty"),
        ]:
            body = json.dumps({"client": "tab654321", "request": sep}).encode()
            status, answer = _http(url + "/api/separate", body, "POST")
            assert status == 400 and why in answer, answer
        status, body = _http(url + "/api/example/../../etc", b"", "POST")
        assert status in (400, 404)
        assert _http(url + "/api/info")[0] == 200  # still serving
        written = {p.relative_to(tmp_path).parts[:2] for p in tmp_path.rglob("*") if p.is_file()}
        assert written <= {("app", "uploads"), ("app", "results")}
    finally:
        served.stop()
        svc.close()


def test_app_command_refuses_before_serving(monkeypatch, capsys):
    from absl import flags

    app = load_command("maestro_jax.app")
    toy = f"--config={toy_config.__file__}:generate"
    for argv, message in [
        (["--host=0.0.0.0"], "--allow_remote"),
        (["--max_upload_mib=0"], "--max_upload_mib=0"),
        ([toy, "--config.height=33"], "--config: video size 33x32"),  # not a size the nets make
    ]:
        for name in [n for n in list(flags.FLAGS) if n.startswith("config.")]:
            delattr(flags.FLAGS, name)  # an earlier call's override flags
        monkeypatch.setattr("sys.argv", ["app", *argv])  # where config overrides are read
        assert cli.call(app.main, argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
