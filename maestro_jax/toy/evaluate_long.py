"""Long videos on the toy world: FreeNoise-style whole-audio generation vs independent 4 s
segments, and boxes from stereo sound vs true boxes (`maestro_jax.toy.long_eval`).

    python -m maestro_jax.toy.evaluate_long --jobs 8 --out results/toy_long

Writes OUT/long.md (the README's tables), OUT/long.json and OUT/long_example.png (rows: the
true video, naive segments, FreeNoise windows, whole-UNet windows, FreeNoise with auto boxes,
of the first scene).
"""

from __future__ import annotations

from absl import flags, logging
from ml_collections import config_flags

from maestro_jax import cli
from maestro_jax.toy import config as toy_config

_CONFIG = config_flags.DEFINE_config_file(
    "config", f"{toy_config.__file__}:generate", "toy generation config (--config.X=V overrides)"
)
_ASSETS = flags.DEFINE_string("assets", None, "toy weights folder (default: the config's assets)")
_JOBS = flags.DEFINE_integer("jobs", 8, "12 s scenes to generate")
_SOURCES = flags.DEFINE_integer("sources", 2, "sources per scene")
_STRIDE = flags.DEFINE_integer("stride", 4, "frames between FreeNoise windows (1..8)")
_METHODS = flags.DEFINE_string(
    "methods", "naive,freenoise,windows,auto", "methods, comma-separated"
)
_SEED = flags.DEFINE_integer("seed", 0, "seed of the scene set")
_OUT = flags.DEFINE_string("out", "results/toy_long", "output folder")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.error(f"unexpected arguments: {argv[1:]}")
    from maestro_jax.generation.runner import enable_compilation_cache
    from maestro_jax.toy import long_eval as le
    from maestro_jax.toy import long_world as lw
    from maestro_jax.toy import placement as tp
    from maestro_jax.toy import world as tw

    logging.set_verbosity(logging.WARNING)
    cfg = _CONFIG.value
    if _ASSETS.value:
        cfg.assets = _ASSETS.value
    methods = [m.strip() for m in _METHODS.value.split(",") if m.strip()]
    if not methods or any(m not in le.METHODS for m in methods):
        return cli.error(f"--methods {_METHODS.value!r}: give names from {le.METHODS}")
    if _JOBS.value < 1:
        return cli.error(f"--jobs must be >= 1, got {_JOBS.value}")
    if not 1 <= _SOURCES.value <= tw.NUM_CLASSES:
        return cli.error(f"--sources must lie in [1, {tw.NUM_CLASSES}], got {_SOURCES.value}")
    if not 1 <= _STRIDE.value <= tw.NUM_FRAMES:
        return cli.error(f"--stride must lie in [1, {tw.NUM_FRAMES}], got {_STRIDE.value}")
    try:
        tp.check_assets(cfg)
    except tp.ToyEvalError as e:
        return cli.error(str(e))
    enable_compilation_cache(cfg.compilation_cache)
    scenes = lw.make_long_scenes(_JOBS.value, _SOURCES.value, _SEED.value)
    result = le.evaluate_long(cfg, scenes, methods, _STRIDE.value)
    paths = le.write_results(result, _OUT.value)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    cli.run(main)
