"""python -m convert.audiosep audiosep_base_4M_steps.ckpt OUT [--trust_pickle]: AudioSep's
separator and CLAP text encoder -> an orbax params folder (see `convert.audiosep`)."""

from __future__ import annotations

from absl import flags

from convert import cli
from convert.audiosep import convert_file
from convert.common import ConversionError

flags.declare_key_flag(cli.TRUST_PICKLE.name)


def main(argv: list[str]) -> int:
    src, out = cli.positionals(argv, "src", "out")
    cli.reject_unused(cli.TRUST_PICKLE)
    if not src.exists():
        return cli.error(f"checkpoint {src} not found", 2)
    try:
        convert_file(src, out, trust_pickle=cli.TRUST_PICKLE.value)
    except ConversionError as e:
        return cli.error(f"{src}: {e}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
