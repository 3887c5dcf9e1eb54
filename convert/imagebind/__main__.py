"""python -m convert.imagebind imagebind_huge.pth OUT [--modalities audio,vision,text]
[--torch_config FILE] [--trust_pickle]: ImageBind -> an orbax params folder
(see `convert.imagebind`)."""

from __future__ import annotations

import json

from absl import flags

from convert import cli
from convert.common import ConversionError
from convert.imagebind import MODALITIES, _check_modalities, convert_file
from maestro_jax.models import imagebind as ib

_MODALITIES = flags.DEFINE_string(
    "modalities", ",".join(MODALITIES), "comma-separated subset of audio,vision,text"
)
for _held in (cli.TORCH_CONFIG, cli.TRUST_PICKLE):
    flags.declare_key_flag(_held.name)


def main(argv: list[str]) -> int:
    src, out = cli.positionals(argv, "src", "out")
    cli.reject_unused(cli.TORCH_CONFIG, cli.TRUST_PICKLE)
    try:
        mods = _check_modalities(m.strip() for m in _MODALITIES.value.split(",") if m.strip())
    except ValueError as e:
        return cli.error(str(e), 2)
    if not src.exists():
        return cli.error(f"checkpoint {src} not found", 2)
    cfg = ib.imagebind_huge()
    if cli.TORCH_CONFIG.value is not None:
        with open(cli.TORCH_CONFIG.value) as f:
            kw = json.load(f)
        cfg = ib.ImageBindConfig.from_torch_kwargs(kw.get("constructor_kwargs", kw))
    try:
        config = convert_file(src, out, cfg, mods, trust_pickle=cli.TRUST_PICKLE.value)
    except ConversionError as e:
        return cli.error(f"{src} does not match the ImageBind config:\n{e}")
    print(f"wrote {out}: {', '.join(mods)}, {config['parameters']:,} parameters")
    return 0


if __name__ == "__main__":
    cli.run(main)
