"""The web app in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium;
nothing downloaded): upload two WAVs, draw two boxes by mouse drags, generate on the toy world's
weights (4 DDIM steps), watch the video play, check the job's JSON against the drawn boxes and
the page's `generate` command against the video (bit-identical frames); and bad input.

MAESTRO_APP_SCREENSHOTS=DIR saves the page before and after the run (the README's pictures).
"""

import json
import os
import shlex
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from maestro_jax.toy import config as toy_config

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
    "--disable-background-networking --disable-component-update --disable-sync "
    "--autoplay-policy=no-user-gesture-required --window-size=1300,1500"
).split()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from maestro_jax.webapp.server import Served, make_app
    from maestro_jax.webapp.service import Service

    cfg = toy_config.generate_config()
    out = tmp_path_factory.mktemp("app")
    svc = Service(cfg, out, config_arg=f"{toy_config.__file__}:generate")
    served = Served(make_app(svc))
    yield svc, served.url
    served.stop()
    svc.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    for exe in (CHROMIUM, DRIVER):  # .ci/run installs them (apt: chromium chromium-driver)
        assert os.access(exe, os.X_OK), (
            f"{exe} is missing: apt-get install chromium chromium-driver"
        )
    profile = tempfile.mkdtemp(prefix="maestro-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in [*FLAGS, f"--user-data-dir={profile}"]:
        opts.add_argument(f)
    driver = webdriver.Chrome(options=opts, service=DriverService(DRIVER))
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, fn, timeout=30.0, what=""):
    end = time.time() + timeout
    while time.time() < end:
        value = fn(driver)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; page says: " + driver.execute_script(
        "return ['input-msg','box-msg','run-msg','status'].map(i => "
        "document.getElementById(i).textContent).join(' | ')"))  # fmt: skip


def _text(driver, element_id):
    return driver.find_element("id", element_id).text


def _drag(driver, box):
    """Press at (left, top) of the canvas and release at (right, bottom), frame fractions."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("id", "frame")
    w, h = canvas.size["width"], canvas.size["height"]
    x0, y0, x1, y1 = (round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h))
    chain = ActionChains(driver)
    chain.move_to_element_with_offset(canvas, x0 - w // 2, y0 - h // 2).click_and_hold()
    chain.move_by_offset((x1 - x0) // 2, (y1 - y0) // 2).move_by_offset(
        x1 - x0 - (x1 - x0) // 2, y1 - y0 - (y1 - y0) // 2
    )
    chain.release().perform()
    return [x0 / w, y0 / h, x1 / w, y1 / h]


def _set(driver, element_id, value):
    el = driver.find_element("id", element_id)
    el.clear()
    el.send_keys(str(value))


def _toy_wavs(folder: Path) -> list[Path]:
    import soundfile as sf

    from maestro_jax.toy import world

    paths = []
    for cls in (0, 1):  # red disc, blue square
        wave, _ = world.object_sound(cls, np.random.default_rng(10 + cls))
        paths.append(folder / f"{world.OBJECTS[cls].name}.wav")
        sf.write(paths[-1], wave, world.SR)
    return paths


def _shot(driver, name):
    folder = os.environ.get("MAESTRO_APP_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def test_draw_generate_play_and_reproduce(app, browser, tmp_path, monkeypatch):
    svc, url = app
    d = browser
    d.get(url)
    _wait(d, lambda d: d.find_element("id", "frame").size["width"] > 100, what="the page")
    wavs = _toy_wavs(tmp_path)
    d.find_element("id", "stem-files").send_keys("\n".join(str(p) for p in wavs))
    _wait(d, lambda d: len(d.find_elements("css selector", "#sources li")) == 2, what="uploads")
    drawn = [_drag(d, [0.05, 0.2, 0.45, 0.8]), _drag(d, [0.55, 0.25, 0.95, 0.75])]
    _set(d, "steps", 4)
    _set(d, "n_d", 2)
    _wait(d, lambda d: _text(d, "box-msg") == "ready", what="the server's check")
    _shot(d, "app_before.png")
    d.find_element("id", "generate").click()
    _wait(d, lambda d: "DDIM step" in _text(d, "status") or _text(d, "result-id"), 300, "steps")
    _wait(d, lambda d: _text(d, "result-id"), 600, "the result")
    video = d.find_element("id", "video")
    _wait(d, lambda d: d.execute_script("return arguments[0].readyState", video) >= 2, 60,
          "the video to load")  # fmt: skip
    assert d.execute_script("return arguments[0].currentSrc", video).endswith("/mp4")
    assert d.execute_script("return arguments[0].duration", video) > 1.0
    d.execute_script("arguments[0].play()", video)
    _wait(d, lambda d: d.execute_script("return arguments[0].currentTime", video) > 0.2, 30,
          "the video to play")  # fmt: skip
    _shot(d, "app_after.png")

    job_id = _text(d, "result-id")
    with urllib.request.urlopen(f"{url}/api/files/{job_id}/json", timeout=30) as r:
        settings = json.load(r)
    boxes = settings["job"]["boxes"]
    np.testing.assert_allclose(boxes, drawn, atol=2e-3)  # the drawn boxes, to a pixel
    np.testing.assert_allclose(settings["boxes_per_frame"][0], drawn, atol=2e-3)
    assert settings["config"]["steps"] == 4 and settings["n_d"] == 2
    line = json.loads(_text(d, "jobs-line"))
    assert line["boxes"] == boxes and line["name"] == job_id

    # the page's command, run as the CLI (no progress hook): the same frames, bit for bit
    from absl import flags

    from maestro_jax import cli
    from maestro_jax.video import read_png
    from tests.conftest import load_command

    argv = shlex.split(_text(d, "command"))
    assert argv[:3] == ["python", "-m", "maestro_jax.generate"]
    argv = [a for a in argv[3:] if not a.startswith("--outdir=")]
    argv += [f"--outdir={tmp_path / 'cli'}", "--config.compilation_cache="]
    gen = load_command("maestro_jax.generate")
    for name in [n for n in list(flags.FLAGS) if n.startswith("config.")]:
        delattr(flags.FLAGS, name)
    monkeypatch.setattr("sys.argv", ["generate", *argv])
    assert cli.call(gen.main, argv) == 0
    app_sheet = read_png(svc.results / f"{job_id}.png")
    np.testing.assert_array_equal(read_png(tmp_path / "cli" / f"{job_id}.png"), app_sheet)


def test_bad_input_is_explained_in_the_page(app, browser, tmp_path):
    svc, url = app
    d = browser
    d.get(url)
    _wait(d, lambda d: d.find_element("id", "frame").size["width"] > 100, what="the page")
    d.find_element("id", "generate").click()
    assert "add at least one source" in _text(d, "run-msg")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF....WAVE" + bytes(range(256)) * 4)
    d.find_element("id", "stem-files").send_keys(str(junk))
    _wait(d, lambda d: "not a readable" in _text(d, "input-msg"), what="the upload's refusal")
    assert not d.find_elements("css selector", "#sources li")
    d.find_element("css selector", "button[data-example=red_disc]").click()
    _wait(d, lambda d: len(d.find_elements("css selector", "#sources li")) == 1, what="example")
    _drag(d, [0.1, 0.1, 0.13, 0.13])  # smaller than a latent cell
    _wait(d, lambda d: "covers no latent cell" in _text(d, "box-msg"), what="the box check")
    d.find_element("id", "generate").click()
    assert "covers no latent cell" in _text(d, "run-msg")
    _set(d, "n_d", 50)  # more Object Locating steps than steps: the server's check says why
    _drag(d, [0.1, 0.1, 0.6, 0.6])
    d.find_element("id", "generate").click()
    _wait(d, lambda d: "settings.n_d" in _text(d, "run-msg"), what="the settings check")
    assert svc.queue.snapshot() == []  # nothing was queued


def test_cancel_stops_the_sampler_and_the_app_serves_on(app, tmp_path):
    """After the first test the sampler with the progress hook is compiled: a job cancelled at
    its first DDIM steps ends 'cancelled' before its last step, and writes no video."""
    svc, url = app
    ids = [svc.store.add(p.read_bytes(), p.name)["id"] for p in _toy_wavs(tmp_path)]
    request = {"sources": ids, "boxes": [[0, 0.2, 0.5, 0.8], [0.5, 0.2, 1, 0.8]],
               "settings": {"steps": 4, "n_d": 2}}  # fmt: skip
    job_id = svc.submit(request, "canceltab01")["id"]
    end = time.time() + 300
    while svc.queue.get(job_id)["step"] < 1 and time.time() < end:
        time.sleep(0.01)
    assert svc.queue.cancel(job_id)
    assert svc.queue.wait_idle(120)
    view = svc.queue.get(job_id)
    assert view["state"] == "cancelled" and view["step"] < 4, view
    assert not (svc.results / f"{job_id}.mp4").exists()
    with urllib.request.urlopen(f"{url}/api/queue", timeout=30) as r:
        assert json.load(r) == []
