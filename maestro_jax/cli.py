"""What every command (`python -m maestro_jax.<name>`, `python -m data.<step>`, the converters, the
benchmarks) shares: running an absl `main` with a bad flag or `--config.*` override reported in
one line (exit 2) instead of a traceback, SIGTERM unwinding like Ctrl-C (so writers clean their
temporary files), quiet library logs, and a way for tests to call a command in-process.

Command pattern: a command module defines its absl flags at module level (`flags.DEFINE_*`,
`config_flags.DEFINE_config_file`) and a thin `main(argv) -> int` (the exit status), and ends
with `if __name__ == "__main__": cli.run(main)`. Nothing imports a command module except tests,
so its flags never clash with another command's.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import sys
from collections.abc import Callable, Sequence

from absl import app, flags, logging


def error(msg: str, code: int = 2) -> int:
    """Print `error: msg` on stderr; returns `code` (2: bad input, the exit status)."""
    print(f"error: {msg}", file=sys.stderr)
    return code


def _override_error(argv: Sequence[str], exc: BaseException) -> str:
    """One line for a failed `--<flag>.<path>=value` override (unknown field, bad value)."""
    # ml_collections wraps a KeyError's text (with an escaped newline) in an AttributeError
    lines = [ln.strip("\"'\\ ") for ln in str(exc).replace("\\n", "\n").splitlines()]
    first = lines[0] if lines and lines[0] else type(exc).__name__
    hint = next((ln for ln in lines[1:] if "Did you mean" in ln), "")
    for arg in argv[1:]:
        m = re.match(r"--?(\w+)\.([\w.]+)(=.*)?$", arg)
        if m and first in m.group(2).split("."):
            msg = f"{arg.split('=')[0]}: the config has no field {first!r}"
            return f"{msg} ({hint.strip()})" if hint else msg
    return f"{type(exc).__name__}: {first}"


def parse_flags(argv: Sequence[str]) -> list[str]:
    """`flags.FLAGS(argv)`; any failure (an unknown flag, a bad value, a config file that does
    not load, a `--config.field` the config lacks) becomes one `error:` line and exit 2."""
    try:
        return flags.FLAGS(list(argv))
    except flags.Error as e:
        msg = (str(e).splitlines()[0] if str(e) else type(e).__name__) + " (see --helpfull)"
    except (KeyError, AttributeError) as e:
        msg = _override_error(argv, e)
    except (OSError, ValueError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        msg = f"{first} (a --config file that does not load, or a bad override)"
    sys.exit(error(msg))


def _terminate(signum, frame):
    # An exception unwinds the stack (unlike the default action), so `finally` blocks of the
    # writers remove their temporary files and folders.
    raise SystemExit(128 + signum)


def run(main: Callable[[list[str]], int | None]) -> None:
    """`app.run(main)` with `parse_flags` (main's return value is the exit status), SIGTERM and
    SIGHUP raising SystemExit, and absl logging at WARNING unless --verbosity is given (orbax
    logs every step of a save at INFO)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)

    def quiet_main(argv: list[str]) -> int | None:
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        return main(argv)

    app.run(quiet_main, flags_parser=parse_flags)


_SHARED_FLAGS = frozenset({"convert.cli", "data.beam_flags"})


def is_command_module(module_name: str) -> bool:
    """A module whose absl flags belong to one command: library modules define no flags (the
    architecture rule), so any module of this project that does is a command (the package's,
    the toy world's, data/*, convert/*/__main__, benchmarks/*), except the modules holding the
    flags several commands share (`convert.cli`, `data.beam_flags`)."""
    if module_name in _SHARED_FLAGS:
        return False
    return module_name.startswith(("maestro_jax.", "data.", "benchmarks.", "convert."))


def load_command(module_name: str):
    """Import command module `module_name` in this process with only its own command flags
    defined (tests; several commands define the same names, e.g. --config, --outdir): the flags
    of every other command module are removed (and the module forgotten, so a later load defines
    them again); a command whose flags were removed that way is imported again."""
    import importlib

    fv = flags.FLAGS
    for mod, defined in list(fv.flags_by_module_dict().items()):
        if mod != module_name and is_command_module(mod):
            for f in list(defined):
                if f.name in fv and fv[f.name] is f:
                    delattr(fv, f.name)
            fv.flags_by_module_dict().pop(mod, None)
            sys.modules.pop(mod, None)
    return importlib.import_module(module_name)


def call(main: Callable[[list[str]], int | None], argv: Sequence[str]) -> int | None:
    """Run a command's `main` in this process as `python -m ... ARGV` would (tests): with only
    that command's flags defined (`load_command`), parse the flags, call, then reset every flag
    to its default."""
    load_command(main.__module__)
    try:
        rest = flags.FLAGS(["prog", *argv])
        return main(rest)
    finally:
        flags.FLAGS.unparse_flags()


def beam_args(options: str, rest: Sequence[str]) -> list[str] | int:
    """Apache Beam pipeline options of a data command: the words of its --beam_options string,
    then what followed `--` on its command line. Each must be an option (`--name[=value]`, or
    a value after an option); anything else is reported like a bad flag (returns 2)."""
    args = [*shlex.split(options or ""), *rest]
    if args and not args[0].startswith("--"):
        return error(f"unexpected arguments: {args} (Beam options look like --name=value)")
    return args


def quiet_beam() -> None:
    """Keep Apache Beam's worker chatter (gRPC, the DirectRunner's job service) out of a data
    command's output (errors only)."""
    import logging as std_logging

    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    std_logging.getLogger("apache_beam").setLevel(std_logging.ERROR)
