"""python -m convert.verify FIXTURE_DIR [--kind KIND]: check a converter + Flax module against a
golden fixture made from the original code; prints one line per output and PASS or FAIL (exit 0
only on pass; 2 for a folder that is not a readable fixture). See `convert.verify`."""

from __future__ import annotations

from pathlib import Path

from absl import flags

from convert import cli
from convert.common import ConversionError
from convert.verify import FixtureError, report, run_kind

_KIND = flags.DEFINE_string("kind", None, "fixture kind (default: the folder's name)")


def main(argv: list[str]) -> int:
    (fixture_dir,) = cli.positionals(argv, "fixture_dir")
    if not fixture_dir.is_dir():
        return cli.error(f"{fixture_dir} is not a folder", 2)
    kind = _KIND.value or Path(fixture_dir).resolve().name
    import jax

    jax.config.update("jax_enable_x64", False)
    try:
        checks = run_kind(fixture_dir, kind)
    except (FixtureError, ConversionError) as e:
        return cli.error(f"{kind} fixture {fixture_dir}: {e}", 2)
    return 0 if report(checks) else 1


if __name__ == "__main__":
    cli.run(main)
