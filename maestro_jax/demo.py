"""`make demo`: Maestro end to end on this machine, with no downloads.

Synthesises a two-source scene (a beeping 880 Hz tone and low noise bursts), then runs the whole
method — ImageBind-shaped audio encoder -> CIM -> contexts -> Object Locating + Mosaic Denoising
DDIM sampling with the VideoCrafter2-shaped 3D UNet -> VAE decode -> mp4 with the mixture muxed
in, plus a contact sheet with the boxes drawn.

The networks are TINY and RANDOMLY INITIALISED (configs/generate.py:runlocal): real weights
cannot be shipped, and the trained miniature world is not built yet, so the video shows noise
patterns, not a dog or a violin. See README "Real weights" for the real model.

    python -m maestro_jax.demo [--outdir outputs/demo]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def synth_stems(sr: int = 16000, seconds: float = 4.0) -> list[np.ndarray]:
    """Two clearly different sources: beeps at 880 Hz (0.25 s on / 0.25 s off) and a low
    noise-burst rhythm; each [1, N] float32."""
    t = np.arange(int(sr * seconds)) / sr
    beep = 0.5 * np.sin(2 * np.pi * 880 * t) * ((t % 0.5) < 0.25)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(t.shape)
    kernel = np.ones(40) / 40  # a crude low-pass
    low = np.convolve(noise, kernel, mode="same") * ((t % 1.0) < 0.3) * 2.0
    return [beep[None].astype(np.float32), low[None].astype(np.float32)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--outdir", default="outputs/demo")
    args = ap.parse_args(argv)
    out = Path(args.outdir)
    t0 = time.perf_counter()
    print("maestro_jax demo: TINY RANDOM weights (no trained model ships yet); the video shows")
    print("noise patterns, but every stage of the method runs for real.")

    from configs import generate as gen_configs
    from maestro_jax import audio as audio_lib
    from maestro_jax import generation as gen
    from maestro_jax.jobs import Job

    stem_dir = out / "stems"
    stem_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, wave in zip(("beep_880hz", "low_bursts"), synth_stems()):
        p = stem_dir / f"{name}.wav"
        audio_lib.write_wav(p, wave, 16000)
        paths.append(str(p))
    cfg = gen_configs.get_config("runlocal")
    gen.enable_compilation_cache(cfg.compilation_cache)
    job = Job(name="demo", audio=paths, boxes="LR", seed=0)
    for f in ("demo.json", "demo.mp4"):
        (out / f).unlink(missing_ok=True)  # always regenerate
    status = gen.run(cfg, [job], out, strict=True)
    if status:
        return status
    print(f"\nvideo:         {out / 'demo.mp4'}  (16 frames, the two-source mixture muxed in)")
    print(f"contact sheet: {out / 'demo.png'}  (source 1 box red, source 2 blue)")
    print(f"settings:      {out / 'demo.json'}")
    print(f"stems:         {stem_dir}/")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
