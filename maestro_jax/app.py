"""A local web app over `generate`: hear the sources, draw the boxes, watch the video.

    python -m maestro_jax.app                        # the toy world's weights, 127.0.0.1:8000
    python -m maestro_jax.app --config=configs/generate.py --config.checkpoint=... --port 8080
    make app

Open the printed address. Upload one sound per source (or a mixture plus one text query per
source; the demo mixture and the toy world's sounds are one click away), draw one box per source
on the frame (drag to draw, drag inside to move, drag a corner to resize; keyframes for moving
boxes), choose the mode, N_D, steps, guidance and seed, and generate. One job runs at a time;
other tabs' jobs wait in a queue that every tab sees. Each result keeps its video, contact sheet,
settings JSON, its `generate --jobs` line and the `generate` command that makes it again.

Takes the same `--config` (and `--config.*` overrides) as `generate`. Serves on 127.0.0.1 only,
unless --host names another address AND --allow_remote is given (the app has no login). Writes
only under --outdir: uploads/ (server-named sounds), results/ and jobs.jsonl.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from maestro_jax import cli
from maestro_jax.toy import config as toy_config

_CONFIG = config_flags.DEFINE_config_file(
    "config", f"{toy_config.__file__}:generate", "generation config (default: the toy world)"
)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "address to serve on")
_PORT = flags.DEFINE_integer("port", 8000, "port to serve on (0: any free port)")
_REMOTE = flags.DEFINE_bool("allow_remote", False, "allow a --host other than loopback")
_OUTDIR = flags.DEFINE_string("outdir", "outputs/app", "the app's folder (uploads, results)")
_MAX_MIB = flags.DEFINE_integer("max_upload_mib", 20, "largest upload, MiB")
_MAX_SECONDS = flags.DEFINE_float("max_seconds", 60.0, "longest uploaded sound, seconds")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.error(f"unexpected arguments: {argv[1:]}")
    if not _loopback(_HOST.value) and not _REMOTE.value:
        return cli.error(f"--host={_HOST.value} is not loopback: add --allow_remote (no login!)")
    if not 0 <= _PORT.value <= 65535:
        return cli.error(f"--port={_PORT.value} is not a port number")
    if not 1 <= _MAX_MIB.value <= 1024:
        return cli.error(f"--max_upload_mib={_MAX_MIB.value} is outside [1, 1024]")
    if not 1.0 <= _MAX_SECONDS.value <= 600.0:
        return cli.error(f"--max_seconds={_MAX_SECONDS.value} is outside [1, 600]")
    cfg = _CONFIG.value
    from maestro_jax.generation import weights as gen_weights
    from maestro_jax.generation.jobs import InputError
    from maestro_jax.generation.outputs import video_spec
    from maestro_jax.generation.runner import enable_compilation_cache

    try:  # the networks' configs and the video size, before the server starts
        video_spec(cfg).check(gen_weights.base_spec(cfg))
    except (InputError, ValueError, OSError) as e:
        return cli.error(f"--config: {e}")
    import uvicorn

    from maestro_jax.webapp import requests as req
    from maestro_jax.webapp.server import make_app
    from maestro_jax.webapp.service import Service

    enable_compilation_cache(cfg.compilation_cache)
    overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
    limits = req.Limits(max_bytes=_MAX_MIB.value << 20, max_seconds=_MAX_SECONDS.value)
    config_arg = flags.FLAGS["config"].config_filename  # file[:variant], as given
    service = Service(cfg, Path(_OUTDIR.value), config_arg=config_arg, overrides=overrides,
                      limits=limits)  # fmt: skip
    print(f"maestro app: http://{_HOST.value}:{_PORT.value}/  (outputs in {service.outdir})")
    uvicorn.run(make_app(service), host=_HOST.value, port=_PORT.value, log_level="warning")
    return 0


if __name__ == "__main__":
    cli.run(main)
