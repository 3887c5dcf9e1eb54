"""python -m convert.cim perceiver.pth OUT [--torch_config FILE] [--trust_pickle]: Maestro's CIM
-> an orbax params folder (see `convert.cim`)."""

from __future__ import annotations

import json

from absl import flags

from convert import cli
from convert.cim import convert_file
from maestro_jax.models import cim as cim_lib

for _held in (cli.TORCH_CONFIG, cli.TRUST_PICKLE):
    flags.declare_key_flag(_held.name)


def main(argv: list[str]) -> int:
    src, out = cli.positionals(argv, "src", "out")
    cli.reject_unused(cli.TORCH_CONFIG, cli.TRUST_PICKLE)
    if not src.exists():
        return cli.error(f"checkpoint {src} not found", 2)
    try:
        cfg = None
        if cli.TORCH_CONFIG.value is not None:
            with open(cli.TORCH_CONFIG.value) as f:
                kw = json.load(f)
            cfg = cim_lib.CIMConfig.from_torch_kwargs(kw.get("constructor_kwargs", kw))
        config = convert_file(src, out, cfg, trust_pickle=cli.TRUST_PICKLE.value)
    except ValueError as e:  # ConversionError or a bad --torch_config
        return cli.error(f"{src} does not match the CIM config:\n{e}")
    print(f"wrote {out}: CIM depth {config['cim']['depth']}, {config['parameters']:,} parameters")
    return 0


if __name__ == "__main__":
    cli.run(main)
