"""What the web app accepts from a browser, checked before anything is queued: uploaded audio
(stored under the app's folder with server-made names) and a generation request (sources, boxes,
settings) turned into a `generation.jobs.Job` and validated by the same `plan_job` the
`generate` command uses. No path from a request is ever used: audio is named by an id that this
module made, and resolved inside the app's upload folder only.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
import secrets
from pathlib import Path
from typing import Any

import numpy as np

from maestro_jax import mosaic
from maestro_jax.files import atomic_path
from maestro_jax.generation import sampling
from maestro_jax.generation.jobs import InputError, Job, JobError
from maestro_jax.generation.plan import plan_job

AUDIO_ID = re.compile(r"^[0-9a-f]{32}$")
AUDIO_EXTS = (".wav", ".flac", ".ogg")  # what soundfile decodes; nothing else reaches ffmpeg
SETTINGS = ("mode", "n_d", "steps", "guidance", "seed")


class RequestError(ValueError):
    """A request the app refuses; the message names the field (shown in the page)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What an uploaded sound may be."""

    max_bytes: int = 20 << 20
    min_rate: int = 8000
    max_rate: int = 96000
    max_channels: int = 2
    min_seconds: float = 0.5
    max_seconds: float = 60.0
    max_sources: int = 8


def new_id() -> str:
    return secrets.token_hex(16)


class AudioStore:
    """Uploaded (and example) sounds in one folder, each `<id><ext>`; ids are made here."""

    def __init__(self, folder: Path, limits: Limits | None = None) -> None:
        self.folder = Path(folder)
        self.limits = limits or Limits()

    def path_of(self, audio_id: Any) -> Path:
        """The file of a stored sound; RequestError for an id this store did not make."""
        if not isinstance(audio_id, str) or not AUDIO_ID.match(audio_id):
            raise RequestError(f"audio id {str(audio_id)[:40]!r} is not one this app made")
        for ext in AUDIO_EXTS:
            p = self.folder / f"{audio_id}{ext}"
            if p.is_file():
                return p
        raise RequestError(f"audio {audio_id} is not stored here (uploaded before a restart?)")

    def add(self, data: bytes, name: str = "") -> dict:
        """Check an upload (size, decodable, rate, channels, length) and store it. Returns its
        description: id, seconds, rate, channels, name (the browser's name, display only)."""
        import soundfile as sf

        lim = self.limits
        label = re.sub(r"[^\w .-]", "_", str(name))[:60] or "upload"
        if not data:
            raise RequestError(f"{label}: the file is empty")
        if len(data) > lim.max_bytes:
            raise RequestError(
                f"{label}: {len(data) / 2**20:.1f} MiB is over the {lim.max_bytes >> 20} MiB limit"
            )
        try:
            info = sf.info(io.BytesIO(data))
        except Exception as e:  # noqa: BLE001 - libsndfile's errors vary by format
            why = str(e).rsplit(": ", 1)[-1] or type(e).__name__
            raise RequestError(f"{label}: not a readable WAV, FLAC or OGG file ({why})") from e
        seconds = info.frames / info.samplerate if info.samplerate else 0.0
        if not lim.min_rate <= info.samplerate <= lim.max_rate:
            raise RequestError(
                f"{label}: sample rate {info.samplerate} Hz is outside "
                f"[{lim.min_rate}, {lim.max_rate}] Hz"
            )
        if not 1 <= info.channels <= lim.max_channels:
            raise RequestError(
                f"{label}: {info.channels} channels; give mono or stereo (at most "
                f"{lim.max_channels})"
            )
        if not lim.min_seconds <= seconds <= lim.max_seconds:
            raise RequestError(
                f"{label}: {seconds:.2f} s long; sounds must last "
                f"{lim.min_seconds}-{lim.max_seconds:.0f} s"
            )
        ext = {"WAV": ".wav", "FLAC": ".flac", "OGG": ".ogg"}.get(info.format)
        if ext is None:
            raise RequestError(f"{label}: format {info.format} is not WAV, FLAC or OGG")
        audio_id = new_id()
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / f"{audio_id}{ext}") as tmp:
            tmp.write_bytes(data)
        try:  # decoded in full once: a header that lies fails here, not in a job
            sf.read(str(self.folder / f"{audio_id}{ext}"), frames=-1, dtype="float32")
        except Exception as e:  # noqa: BLE001
            (self.folder / f"{audio_id}{ext}").unlink(missing_ok=True)
            raise RequestError(f"{label}: the audio data does not decode ({e})") from e
        return {
            "id": audio_id,
            "name": label,
            "seconds": round(seconds, 3),
            "rate": int(info.samplerate),
            "channels": int(info.channels),
        }


# ----------------------------------------------------------------------------- requests
def _number(body: dict, key: str, kind: type, lo: float, hi: float, default: Any) -> Any:
    value = body.get(key, default)
    if value is None or value == "":
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"settings.{key}: {value!r} is not a number")
    if kind is int and float(value) != int(value):
        raise RequestError(f"settings.{key}: {value!r} is not a whole number")
    if not math.isfinite(float(value)) or not lo <= value <= hi:
        raise RequestError(f"settings.{key}: {value} is outside [{lo}, {hi}]")
    return kind(value)


def settings_of(body: Any, cfg) -> dict:
    """mode, n_d, steps, guidance, seed of a request (the config's values by default)."""
    body = body or {}
    if not isinstance(body, dict):
        raise RequestError("settings must be an object")
    unknown = sorted(set(body) - set(SETTINGS))
    if unknown:
        raise RequestError(f"settings: unknown field(s) {unknown}")
    mode = body.get("mode") or cfg.mode
    if mode not in sampling.MODES:
        raise RequestError(f"settings.mode: {mode!r} is not one of {', '.join(sampling.MODES)}")
    steps = _number(body, "steps", int, 1, 1000, cfg.steps)
    return {
        "mode": mode,
        "steps": steps,
        "n_d": _number(body, "n_d", int, 0, steps, min(cfg.n_d, steps)),
        "guidance": _number(body, "guidance", float, 0.0, 50.0, float(cfg.guidance)),
        "seed": _number(body, "seed", int, 0, 2**31 - 1, cfg.seed),
    }


def _round(value: Any) -> float:
    """A coordinate to 1e-4 of the frame (far below a pixel), so that the job's JSON, its
    command line and the video agree exactly."""
    return round(float(value), 4)


def _boxes_of(items: Any, n: int) -> list:
    if not isinstance(items, list) or len(items) != n:
        raise RequestError(f"boxes: give one box per source ({n}), got {items!r:.60}")
    out = []
    for i, b in enumerate(items):
        if isinstance(b, dict) and "keyframes" in b:
            kfs = b["keyframes"]
            if not isinstance(kfs, list) or not kfs:
                raise RequestError(f"boxes[{i}].keyframes: a list of [position, [l, t, r, b]]")
            try:
                kfs = sorted(((_round(p), [_round(c) for c in box]) for p, box in kfs))
            except (TypeError, ValueError) as e:
                raise RequestError(f"boxes[{i}].keyframes: {e}") from e
            out.append({"keyframes": [[p, box] for p, box in kfs]} if len(kfs) > 1 else kfs[0][1])
        elif isinstance(b, list):
            try:
                out.append([_round(c) for c in b])
            except (TypeError, ValueError) as e:
                raise RequestError(f"boxes[{i}]: four numbers (left, top, right, bottom)") from e
        else:
            raise RequestError(f"boxes[{i}]: [l, t, r, b] or {{'keyframes': ...}}")
    return out


def job_of(body: Any, store: AudioStore, cfg, name: str) -> tuple[Job, dict]:
    """(Job, settings) of a request {sources: [audio id, ...] | mixture: id + queries: [...],
    boxes: [...], settings: {...}}; RequestError names the bad field. The job is not yet
    validated against the models: see `validate`."""
    if not isinstance(body, dict):
        raise RequestError("the request must be a JSON object")
    unknown = sorted(set(body) - {"sources", "mixture", "queries", "boxes", "settings", "labels"})
    if unknown:
        raise RequestError(f"unknown field(s) {unknown}")
    settings = settings_of(body.get("settings"), cfg)
    audio, n = sources_of(body, store)
    boxes = _boxes_of(body.get("boxes"), n)
    job = Job(name=name, boxes=boxes, seed=settings["seed"], n_d=settings["n_d"], **audio)
    return job, settings


def sources_of(body: dict, store: AudioStore) -> tuple[dict, int]:
    """({'audio': [paths]} | {'mixture': path, 'queries': [...]}, number of sources)."""
    sources, mixture = body.get("sources") or [], body.get("mixture")
    if bool(sources) == bool(mixture):
        raise RequestError("sources: give one sound per source, or a mixture with queries")
    if mixture:
        queries = body.get("queries")
        if not isinstance(queries, list) or not queries:
            raise RequestError("queries: a mixture needs one text query per source")
        queries = [q.strip() if isinstance(q, str) else q for q in queries]
        for i, q in enumerate(queries):
            if not isinstance(q, str) or not q:
                raise RequestError(f"queries[{i}]: the query is empty")
            if len(q) > 200:
                raise RequestError(f"queries[{i}]: over 200 characters")
        n = len(queries)
        audio: dict = {"mixture": str(store.path_of(mixture)), "queries": queries}
    else:
        if not isinstance(sources, list):
            raise RequestError("sources: a list of audio ids")
        n = len(sources)
        audio = {"audio": [str(store.path_of(s)) for s in sources]}
    if n > store.limits.max_sources:
        raise RequestError(f"sources: {n} is more than this app takes ({store.limits.max_sources})")
    return audio, n


def run_config(cfg, settings: dict):
    """The base config with a request's settings (mode, steps, guidance, N_D, seed) applied."""
    run = cfg.copy_and_resolve_references()
    run.mode = settings["mode"]
    run.steps = settings["steps"]
    run.guidance = settings["guidance"]
    run.n_d = settings["n_d"]
    run.seed = settings["seed"]
    return run


def validate(job: Job, run_cfg) -> list[str]:
    """The `generate` command's checks of one job (audio readable, boxes inside the frame and
    covering a latent cell at every attention level, N_D within the steps, sources within the
    77-token context), then the sampler's settings; RequestError with the reason. Returns
    warnings (a silent stem, boxes that overlap)."""
    from maestro_jax.generation.runner import attention_resolutions

    try:
        resolutions = attention_resolutions(run_cfg)
        plan = plan_job(job, run_cfg, {"resolutions": resolutions})
        sampling.SamplerSettings(steps=run_cfg.steps, n_d=job.n_d or 0, mode=run_cfg.mode).check()
    except (JobError, InputError, ValueError) as e:
        raise RequestError(str(e).replace(f"job {job.name}: ", "")) from e
    own = overlaps(plan.locate_boxes, int(run_cfg.num_frames))  # the app's wording for boxes
    return own + [w for w in plan.warnings if not w.startswith("boxes ")]


def overlaps(boxes, num_frames: int, at_least: float = 0.0) -> list[str]:
    """A warning per pair of sources whose boxes overlap on some frame (the CLI accepts that:
    a shared latent cell goes to one source, so the other may not show there)."""
    per = [mosaic.as_boxes(b).per_frame(num_frames) for b in boxes]
    out = []
    for i in range(len(per)):
        for j in range(i + 1, len(per)):
            a, b = per[i], per[j]
            w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
            h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
            inter = float((w.clip(min=0) * h.clip(min=0)).max())
            if inter > at_least:
                out.append(f"the boxes of sources {i + 1} and {j + 1} overlap: where they do, "
                           "one source's cells win and the other may not show")  # fmt: skip
    return out
