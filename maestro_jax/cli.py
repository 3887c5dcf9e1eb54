"""absl entry points with one-line errors: `run(main)` parses the flags (with `--config.*`
overrides of an `ml_collections` config flag) and runs `main`. A bad flag or override prints
one line `error: ...` naming it and exits with status 2, instead of absl's traceback."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

from absl import app, flags


def _override_error(argv: list[str], exc: BaseException) -> str:
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


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing; any failure becomes one `error:` line and exit status 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    except (KeyError, AttributeError, TypeError, ValueError) as e:
        # ml_collections' config_flags raise these for an unknown field or a bad override
        msg = _override_error(argv, e)
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def run(main: Callable[[list[str]], int | None]) -> None:
    """`app.run(main)` with `parse_flags`; `main`'s return value is the exit status."""
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
