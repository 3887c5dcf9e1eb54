"""What every command (`python -m maestro_jax.<name>`, `python -m data.<step>`, the benchmarks)
shares: running an absl `main` with bad flags reported in one line, SIGTERM unwinding like
Ctrl-C (so writers clean their temporary files), quiet library logs, and a way for tests to call a
command in-process.

Command pattern: a command module defines its absl flags at module level (`flags.DEFINE_*`,
`config_flags.DEFINE_config_file`) and a thin `main(argv) -> int`, and ends with
`if __name__ == "__main__": cli.run(main)`. Nothing imports a command module except tests, so
its flags never clash with another command's.
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


def _override_hint(argv: Sequence[str], exc: BaseException) -> str | None:
    """One line for a `--config.x.y=v` override naming a field the config lacks."""
    names = re.findall(r"'([^'\"]+)'", str(exc))
    field = names[-1] if names else None
    for a in argv:
        if a.startswith("--") and "." in a.split("=", 1)[0]:
            path = a[2:].split("=", 1)[0]
            if field is None or path.split(".")[-1] == field or f".{field}" in f".{path}":
                return f"{a}: the config has no field {field or path.split('.', 1)[1]!r}"
    return None


def parse_flags(argv: Sequence[str]) -> list[str]:
    """`flags.FLAGS(argv)`, with every parsing failure (an unknown flag, a bad value, a config
    file that does not load, a `--config.field` the config lacks) as one line and exit 2."""
    try:
        return flags.FLAGS(list(argv))
    except flags.Error as e:
        sys.exit(error(f"{e} (see --helpfull)"))
    except (KeyError, AttributeError) as e:
        sys.exit(error(_override_hint(argv, e) or f"bad flag: {e}"))
    except (OSError, ValueError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        sys.exit(error(f"{first} (a --config file that does not load, or a bad override)"))


def _terminate(signum, frame):  # noqa: ARG001
    # An exception unwinds the stack (unlike the default action), so `finally` blocks of the
    # writers remove their temporary files and folders.
    raise SystemExit(128 + signum)


def run(main: Callable[[list[str]], int | None]) -> None:
    """`app.run(main)` with `parse_flags`, SIGTERM/SIGHUP raising SystemExit, and absl logging
    at WARNING unless --verbosity is given (orbax logs every step of a save at INFO)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)

    def quiet_main(argv: list[str]) -> int | None:
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        return main(argv)

    app.run(quiet_main, flags_parser=parse_flags)


def call(main: Callable[[list[str]], int | None], argv: Sequence[str]) -> int | None:
    """Run a command's `main` in this process as `python -m ... ARGV` would (tests): parse the
    flags, call, then reset every flag to its default."""
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
