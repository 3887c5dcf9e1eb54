"""`python -m convert.verify`: every fixture kind is registered, the CLI prints a line per
output and PASS/FAIL, and its exit status follows the result."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from convert import verify

REPO = Path(__file__).resolve().parents[1]


def test_every_fixture_kind_is_registered(fixtures_dir):
    kinds = sorted(p.name for p in fixtures_dir.iterdir() if p.is_dir())
    assert kinds, fixtures_dir
    missing = [k for k in kinds if k not in verify.KINDS]
    assert not missing, f"fixtures without a verify kind: {missing}"
    for k in kinds:  # every registered function exists
        mod, fn = verify.KINDS[k].split(":")
        assert callable(getattr(__import__(mod, fromlist=[fn]), fn)), k


def test_cli_pass_and_exit_status(fixtures_dir):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    r = subprocess.run(
        [sys.executable, "-m", "convert.verify", str(fixtures_dir / "clip_tokenizer")],
        capture_output=True, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "PASS"
    assert any(line.startswith("out_ids ") and "rel_l2=" in line for line in lines)
    bad = subprocess.run(
        [sys.executable, "-m", "convert.verify", str(fixtures_dir), "--kind", "nope"],
        capture_output=True, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    assert bad.returncode != 0 and "unknown fixture kind" in (bad.stderr + bad.stdout)


def test_report_fails_on_any_mismatch():
    ref = np.ones(10, np.float32)
    good = verify.Check("a", ref * (1 + 1e-7), ref)
    off = verify.Check("b", ref * (1 + 1e-3), ref)
    buf = io.StringIO()
    assert verify.report([good], buf) and buf.getvalue().strip().endswith("PASS")
    buf = io.StringIO()
    assert not verify.report([good, off], buf)
    assert "b max_abs" in buf.getvalue() and buf.getvalue().strip().endswith("FAIL")
    assert not verify.report([], io.StringIO())  # nothing checked is not a pass
    assert not verify.Check("s", np.ones(3), np.ones(4)).passed()  # shape mismatch
    assert verify.Check("m", ref + 5e-5, ref, tol=1e-4, metric="max_rel").passed()
    assert not verify.Check("e", ref + 1e-6, ref, metric="exact").passed()
