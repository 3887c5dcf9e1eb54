"""What the `python -m convert.X` commands share: the flags several of them take, the runner.

absl flags are global to a process, so a flag two commands both take is defined here, once; the
flags of one command only are defined in that command's `convert/X/__main__.py`, which nothing
imports (see `convert/__init__.py`). Shared flags a command does not use are refused by
`reject_unused`, so they are not silently ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from absl import app, flags

from convert.common import TRUST_PICKLE_FLAG
from maestro_jax.cli import call, run  # noqa: F401  (the commands and tests use them)
from maestro_jax.cli import error as _error

TRUST_PICKLE = flags.DEFINE_bool(
    TRUST_PICKLE_FLAG.removeprefix("--"),
    False,
    "Load a .ckpt/.pth that pickles Python objects besides tensors with torch.load("
    "weights_only=False). That runs whatever code the file names: only for files you trust. "
    "Without it such a file is refused.",
)
TORCH_CONFIG = flags.DEFINE_string(
    "torch_config",
    None,
    "JSON of the original model's constructor kwargs (or a fixture config.json holding them "
    "under 'constructor_kwargs'); default: the released model's sizes",
)
LDM_CONFIG = flags.DEFINE_string(
    "ldm_config",
    None,
    "JSON of the LDM yaml's model params (unet_config.params for convert.unet, "
    "first_stage_config.params for convert.vae; a fixture config.json holding them under "
    "'params' works too); default: the full-size preset",
)
FORMAT = flags.DEFINE_enum(
    "format",
    "auto",
    ["auto", "ldm", "diffusers"],
    "key layout of the checkpoint (auto: a diffusers folder or diffusers key names -> diffusers)",
)
_SHARED = (TRUST_PICKLE, TORCH_CONFIG, LDM_CONFIG, FORMAT)


def reject_unused(*used: flags.FlagHolder) -> None:
    """Raise UsageError for a shared flag given on the command line that this command ignores."""
    names = {h.name for h in used}
    for holder in _SHARED:
        if holder.name not in names and flags.FLAGS[holder.name].present:
            raise app.UsageError(f"--{holder.name} does not apply to this command")


def positionals(argv: Sequence[str], *names: str) -> list[Path]:
    """The positional arguments (after argv[0]) as paths; UsageError unless exactly `names`."""
    args = list(argv[1:])
    if len(args) != len(names):
        raise app.UsageError(
            f"expected {len(names)} positional arguments ({' '.join(names).upper()}), "
            f"got {len(args)}: {args}"
        )
    return [Path(a) for a in args]


def error(msg: str, code: int = 1) -> int:
    """Print `error: msg`; a conversion that failed exits 1 (bad arguments: 2)."""
    return _error(msg, code)
