"""python -m convert.videocrafter model.ckpt OUT [--bpe bpe_simple_vocab_16e6.txt.gz]
[--trust_pickle]: VideoCrafter2 -> OUT/{unet,vae,text} + OUT/config.json (see
`convert.videocrafter`: memory, finished folders, where to get the BPE file)."""

from __future__ import annotations

import sys

from absl import flags

from convert import cli
from convert.common import ConversionError
from convert.videocrafter import check_bpe, convert_file

_BPE = flags.DEFINE_string(
    "bpe",
    None,
    "the CLIP vocabulary bpe_simple_vocab_16e6.txt.gz, stored in OUT/text so generation needs "
    "no flag for it (checked before any weight is read)",
)
flags.declare_key_flag(cli.TRUST_PICKLE.name)


def main(argv: list[str]) -> int:
    src, out = cli.positionals(argv, "src", "out")
    cli.reject_unused(cli.TRUST_PICKLE)
    if not src.is_file():
        return cli.error(f"{src} not found", 2)
    try:
        if _BPE.value is not None:
            check_bpe(_BPE.value)
        convert_file(src, out, bpe=_BPE.value, trust_pickle=cli.TRUST_PICKLE.value)
    except ConversionError as e:
        return cli.error(f"{src}: {e}")
    print(f"wrote {out}/unet, {out}/vae, {out}/text and {out}/config.json")
    if _BPE.value is None:
        print(
            "note: no --bpe given, so generation needs the CLIP vocabulary some other way "
            "(--config.bpe_path, MAESTRO_CLIP_BPE or an installed open_clip)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    cli.run(main)
