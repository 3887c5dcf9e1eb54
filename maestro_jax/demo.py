"""`make demo`: Maestro end to end on the embedded toy world, with no downloads.

Takes the bundled toy mixture (`maestro_jax/assets/toy/demo/`: two sound objects over an ambient
background, 4 s at 16 kHz) and runs the whole method on the committed toy-world weights:
AudioSep-shaped separation by class-name query -> ImageBind-shaped audio encoder -> CIM ->
contexts -> Object Locating + Mosaic Denoising DDIM sampling with the VideoCrafter2-shaped 3D
UNet -> VAE decode. Writes `out.mp4` (the mixture muxed in), `out.png` (contact sheet with the
boxes drawn), `out.json` (settings) and the separated stems, and prints where each source was
asked to appear.

    python -m maestro_jax.demo [--outdir outputs/demo] [--assets DIR] [--seed 0]

The weights come from `make toy-world` (`maestro_jax/assets/toy/build.json` says how they were
made). The toy world: `maestro_jax/toy/world.py`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from absl import flags

from maestro_jax import cli
from maestro_jax.toy import config as toy_config

_OUTDIR = flags.DEFINE_string("outdir", "outputs/demo", "output folder")
_ASSETS = flags.DEFINE_string("assets", str(toy_config.ASSETS), "toy-world weights")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")

BOX_COLOURS = ("red", "blue", "green", "yellow")  # maestro_jax.video's contact-sheet order


def _where(box: list[float]) -> str:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    horiz = "left" if cx < 0.4 else "right" if cx > 0.6 else "centre"
    vert = "top" if cy < 0.4 else "bottom" if cy > 0.6 else "middle"
    return f"{vert} {horiz} (x {x0:.2f}-{x1:.2f}, y {y0:.2f}-{y1:.2f} of the frame)"


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.error(f"unexpected arguments: {argv[1:]}")
    t0 = time.perf_counter()
    assets = Path(_ASSETS.value)
    demo = assets / "demo" / "job.json"
    if not demo.is_file():
        return cli.error(
            f"{demo} is missing: the toy-world weights are not installed in {assets} "
            "(run `make toy-world`, about two hours on 2 CPU cores)"
        )
    spec = json.loads(demo.read_text())
    build = json.loads((assets / "build.json").read_text())

    from maestro_jax.generation import runner as gen
    from maestro_jax.generation.jobs import Job

    cfg = toy_config.generate_config()
    cfg.assets = str(assets)
    cfg.seed = _SEED.value
    out = Path(_OUTDIR.value)
    out.mkdir(parents=True, exist_ok=True)
    print(f"maestro_jax demo: the toy world's trained weights ({assets}, built {build['date']})")
    print(f"mixture: {assets / 'demo' / spec['mixture']} ({spec['seconds']:.0f} s)")
    for i, (q, b) in enumerate(zip(spec["queries"], spec["boxes"])):
        print(f"  source {i + 1}: query {q!r} -> box {_where(b)}")
    gen.enable_compilation_cache(cfg.compilation_cache)
    job = Job(
        name="out",
        mixture=str(assets / "demo" / spec["mixture"]),
        queries=list(spec["queries"]),
        boxes=[list(b) for b in spec["boxes"]],
        seed=_SEED.value,
    )
    for f in ("out.json", "out.mp4"):
        (out / f).unlink(missing_ok=True)  # always regenerate
    status = gen.run(cfg, [job], out, strict=True)
    if status:
        return status
    print(f"\nvideo:         {out / 'out.mp4'}  ({cfg.num_frames} frames, the mixture muxed in)")
    print(f"contact sheet: {out / 'out.png'}  (frames left to right, boxes drawn)")
    for i, (q, b) in enumerate(zip(spec["queries"], spec["boxes"])):
        colour = BOX_COLOURS[i % len(BOX_COLOURS)]
        print(f"  {colour} box = source {i + 1} ({q}): {_where(b)}")
    print(f"separated:     {out / 'out_stems'}/")
    print(f"settings:      {out / 'out.json'}")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    cli.run(main)
