"""Verify `maestro_jax.audio` against the `imagebind_fbank` fixture (no weights to convert).

    python -m convert.verify FIXTURES/imagebind_fbank

Bounds from the fixture README: raw fbank max_abs 1e-2 (log units; float32 FFT rounding near
the floor), normalised mel and pipeline outputs max_abs 1.5e-3; the floored entries and the clip sample ranges / exact clip
times must match exactly, the padded frames within 1e-7 (1-2 ulp, see below).
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np

from convert.verify import Check
from maestro_jax import audio

FBANK_ATOL = 1e-2
MEL_ATOL = 1.5e-3
PAD_ATOL = 1e-7
SAMPLERS = {"pypi_0.1.5": "pypi015", "git_fixed_rule_computed_from_definition": "git"}


def _floored(x: np.ndarray) -> np.ndarray:
    return np.isclose(x, audio.LOG_FLOOR, rtol=0.0, atol=1e-5)


def verify_imagebind_fbank(fixture_dir: Path) -> list[Check]:
    fixture_dir = Path(fixture_dir)
    cfg = json.loads((fixture_dir / "config.json").read_text())
    io = np.load(fixture_dir / "io.npz")
    checks: list[Check] = []

    for name, clip in cfg["clips"].items():
        wave = io[f"in_wave_{name}"]
        fb = np.asarray(audio.waveform_to_fbank(wave))
        ref_fb = io[f"out_fbank_{name}"]
        checks.append(Check(f"fbank_{name}", fb, ref_fb, FBANK_ATOL, "max_abs"))
        checks.append(Check(f"floored_{name}", _floored(fb), _floored(ref_fb), metric="exact"))
        mel = np.asarray(audio.waveform_to_melspec(wave))
        ref_mel = io[f"out_mel_{name}"]
        checks.append(Check(f"mel_{name}", mel, ref_mel, MEL_ATOL, "max_abs"))
        t = clip["fbank_frames"]
        if t < audio.TARGET_LENGTH:
            # Padded frames are (0 + 4.268) / 9.138 = 0.46706066 in the reference. XLA on CPU
            # turns a division by a broadcast scalar into a multiplication by its reciprocal,
            # which can be 1 ulp (3e-8) off; 1e-7 still rules out any other padding value.
            checks.append(
                Check(f"padded_{name}", mel[..., t:], ref_mel[..., t:], PAD_ATOL, "max_abs")
            )

    for case, p in cfg["pipelines"].items():
        wave = io[p["input_array"]]
        out = audio.imagebind_audio_input(
            wave,
            audio.IMAGEBIND_SAMPLE_RATE,
            p["clips_per_video"],
            rule="pypi015",  # the fixture ran pytorchvideo 0.1.5
            clip_duration=2.0,
            max_seconds=10.0,
            dc_leak=True,
        )
        ref = io[f"out_pipeline_{case}"]
        checks.append(Check(f"pipeline_{case}", np.asarray(out)[None], ref, MEL_ATOL, "max_abs"))
        ranges = audio.clip_sample_ranges(p["duration_s"], p["clips_per_video"], rule="pypi015")
        checks.append(
            Check(
                f"pipeline_ranges_{case}",
                np.array(ranges),
                np.array(p["sample_ranges_16k"]),
                metric="exact",
            )
        )

    records = json.loads((fixture_dir / "clip_starts.json").read_text())["records"]
    for sampler, rule in SAMPLERS.items():
        out_ranges, ref_ranges, out_frac, ref_frac = [], [], [], []
        for r in records:
            if r["sampler"] != sampler:
                continue
            d, s = float(r["duration"]), r["clips_per_video"]
            out_ranges += audio.clip_sample_ranges(d, s, rule=rule)
            ref_ranges += [tuple(x) for x in r["sample_ranges_16k"]]
            for st, en in audio.clip_starts(d, s, rule=rule):
                out_frac += [(st.numerator, st.denominator), (en.numerator, en.denominator)]
            for st, en in r["clips_exact"]:
                fs, fe = Fraction(st), Fraction(en)
                ref_frac += [(fs.numerator, fs.denominator), (fe.numerator, fe.denominator)]
        checks.append(
            Check(
                f"clip_ranges_{rule}",
                np.array(out_ranges, np.int64),
                np.array(ref_ranges, np.int64),
                metric="exact",
            )
        )
        checks.append(
            Check(
                f"clip_times_exact_{rule}",
                np.array(out_frac, np.int64),
                np.array(ref_frac, np.int64),
                metric="exact",
            )
        )
    return checks
