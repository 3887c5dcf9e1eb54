"""Check a converter + Flax module against a golden fixture made from the original code.

    python -m convert.verify FIXTURES/vc2_unet3d [--kind vc2_unet3d]

Builds the module from the fixture's `config.json`, converts its state dict(s), runs every
`io*.npz` and prints `name max_abs rel_l2 tol` per output, then `PASS` or `FAIL` (exit 0 only on
pass). The default bound is relative L2 error 1e-5 in float32 (fixtures stored in float16 are cast
to float32 first); a kind may set its own bound where its fixture README does.

Each kind is a function `verify(fixture_dir: Path) -> list[Check]` in a converter module,
registered in `KINDS` below. A fixture whose layout the verifier cannot follow raises
`FixtureError` (printed as one `error:` line, exit status 2), never a bare assert.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path

import numpy as np

from convert.common import rel_l2

# kind -> "module:function". A kind's module is imported only when that kind is verified.
KINDS = {
    "vc2_unet3d": "convert.unet:verify_vc2_unet3d",
    "sd21_unet": "convert.unet:verify_sd21_unet",
    "vc2_ddim": "convert.ddim:verify_vc2_ddim",
    "vc2_vae": "convert.vae:verify_vc2_vae",
    "openclip_text": "convert.clip_text:verify_openclip_text",
    "clip_tokenizer": "convert.clip_text:verify_clip_tokenizer",
    "imagebind_fbank": "convert.fbank:verify_imagebind_fbank",
    "imagebind_audio": "convert.imagebind:verify_imagebind_audio",
    "cim_resampler": "convert.cim:verify_cim_resampler",
    "object_locating": "convert.mosaic:verify_object_locating",
    "i3d": "convert.i3d:verify_i3d",
    "stft": "convert.audiosep:verify_stft",
    "audiosep_resunet": "convert.audiosep:verify_audiosep_resunet",
    "clap_text": "convert.audiosep:verify_clap_text",
    "frechet": "convert.metrics:verify_frechet",
    "av_align": "convert.metrics:verify_av_align",
}

DEFAULT_TOL = 1e-5


class FixtureError(ValueError):
    """A fixture folder does not hold what its kind expects (fields, arrays, shapes, layout):
    the message names the case / array and the problem. The CLI prints it on one line."""


@dataclasses.dataclass
class Check:
    """One compared output. `metric` is 'rel_l2' (default), 'max_rel' (max|d| / max|ref|),
    'max_abs' or 'exact'."""

    name: str
    out: np.ndarray
    ref: np.ndarray
    tol: float = DEFAULT_TOL
    metric: str = "rel_l2"

    def errors(self) -> tuple[float, float]:
        out = np.asarray(self.out, np.float64)
        ref = np.asarray(self.ref, np.float64)
        if out.shape != ref.shape:
            return float("inf"), float("inf")
        max_abs = float(np.max(np.abs(out - ref))) if out.size else 0.0
        return max_abs, rel_l2(out, ref)

    def passed(self) -> bool:
        out = np.asarray(self.out)
        ref = np.asarray(self.ref)
        if out.shape != ref.shape:
            return False
        if self.metric == "exact":
            return bool(np.array_equal(out, ref))
        max_abs, rl2 = self.errors()
        if self.metric == "rel_l2":
            return rl2 <= self.tol
        if self.metric == "max_rel":
            den = float(np.max(np.abs(ref))) if ref.size else 1.0
            return max_abs <= self.tol * (den if den > 0 else 1.0)
        if self.metric == "max_abs":
            return max_abs <= self.tol
        raise ValueError(f"unknown metric {self.metric}")


def run_kind(fixture_dir: Path, kind: str) -> list[Check]:
    if kind not in KINDS:
        raise SystemExit(f"unknown fixture kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    mod_name, fn_name = KINDS[kind].split(":")
    fn = getattr(importlib.import_module(mod_name), fn_name)
    return fn(Path(fixture_dir))


def report(checks: list[Check], out=sys.stdout) -> bool:
    ok = bool(checks)
    for c in checks:
        max_abs, rl2 = c.errors()
        good = c.passed()
        ok &= good
        print(
            f"{c.name} max_abs={max_abs:.3e} rel_l2={rl2:.3e} "
            f"({c.metric} tol {c.tol:g}) {'ok' if good else 'MISMATCH'}",
            file=out,
        )
    print("PASS" if ok else "FAIL", file=out)
    return ok
