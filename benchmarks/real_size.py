"""Peak memory and wall time of the full-size commands, as one markdown table.

    python benchmarks/real_size.py --out /scratch/rs \
        --vc2_ckpt model.ckpt --imagebind_pth imagebind_huge.pth --cim_pth perceiver.pth \
        [--bpe bpe_simple_vocab_16e6.txt.gz] [--generate --audio dog.wav --audio cat.wav] \
        [--command 'generate=python -m maestro_jax.generate --config.checkpoint={out}/vc2 ...']

`--generate` adds the generation rows of the README's "Real weights" table, on the folders
converted into --out (OUT/vc2 with its stored CLIP vocabulary, OUT/imagebind, OUT/cim): Maestro
with the two --audio sources (LR boxes), 16 frames at 192x320 and at 320x512, and text-to-video
at 320x512, each with `--generate_steps` DDIM steps (N_D = 1: both phases run) and no persistent
compilation cache (so compile time is measured); `--generate_flags` is appended to each (e.g.
`--config.dtype=bfloat16`). The generate rows print their own load / compile / per-step /
decode seconds (`timing:` lines), which the table shows.

Each command runs in its own child process (so its peak is its own), one after another, in the
order: convert.videocrafter (into OUT/vc2), convert.imagebind with audio, vision and text (OUT/
imagebind), convert.cim (OUT/cim), then every `--command NAME=SHELLCMD` in the order given (run by
`sh -c` in the repository root; `{out}` and `{python}` are replaced by --out and the interpreter,
so generation rows can use the folders converted before them). A converter whose input flag is not
given is skipped. The table reports, per command: peak RSS (the child's maximum resident set size,
as `/usr/bin/time -v` gives it), wall time, gigabytes of files written under --out, and the exit
status. Each command's output goes to OUT/.logs/NAME.log. `--max_rss_gb` stops a command whose
process group passes that resident size (for shared machines). This is a measurement, not a test:
nothing is asserted.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "benchmarks"):  # this checkout's package and benchmark helpers
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from peak_rss import GB, format_table, run_measured  # noqa: E402

_OUT = flags.DEFINE_string("out", None, "output folder for everything the commands write")
_VC2 = flags.DEFINE_string("vc2_ckpt", None, "VideoCrafter2 model.ckpt (convert.videocrafter)")
_IB = flags.DEFINE_string("imagebind_pth", None, "imagebind_huge.pth (convert.imagebind)")
_CIM = flags.DEFINE_string("cim_pth", None, "Maestro perceiver.pth (convert.cim)")
_BPE = flags.DEFINE_string(
    "bpe", None, "CLIP bpe_simple_vocab_16e6.txt.gz for convert.videocrafter"
)
_CMD = flags.DEFINE_multi_string("command", [], "NAME=SHELLCMD, timed after the converters")
_PY = flags.DEFINE_string("python", sys.executable, "interpreter for the convert commands")
_CWD = flags.DEFINE_string("repo", str(REPO), "folder the commands run in (a checkout)")
_MAX = flags.DEFINE_float("max_rss_gb", None, "stop a command whose RSS passes this many GB")
_JSON = flags.DEFINE_string("json", None, "also write the results to this JSON file")
_GENERATE = flags.DEFINE_bool("generate", False, "add the README's generation rows")
_AUDIO = flags.DEFINE_multi_string("audio", [], "the Maestro rows' sources (two files)")
_STEPS = flags.DEFINE_integer("generate_steps", 2, "DDIM steps of the generation rows")
_GEN_FLAGS = flags.DEFINE_string("generate_flags", "", "appended to every generation row")


def generate_rows(audio: list[str], steps: int, extra: str) -> list[str]:
    """NAME=SHELLCMD items of the generation rows (see the module docstring)."""
    if len(audio) != 2:
        raise app.UsageError("--generate wants two --audio files")
    common = (
        "--config.checkpoint={out}/vc2 --config.imagebind_checkpoint={out}/imagebind "
        f"--config.cim_checkpoint={{out}}/cim --config.steps={steps} --config.n_d=1 "
        f"--config.compilation_cache= {extra}"
    ).strip()
    stems = " ".join(f"--audio {shlex.quote(a)}" for a in audio) + " --boxes LR"
    gen = "{python} -m maestro_jax.generate"
    return [
        f"maestro_192x320={gen} --config=configs/generate.py {common} --config.height=192 "
        f"--config.width=320 {stems} --outdir {{out}}/generated/maestro_192x320",
        f"maestro_320x512={gen} --config=configs/generate.py {common} {stems} "
        "--outdir {out}/generated/maestro_320x512",
        f"t2v_320x512={gen} --config=configs/t2v.py {common} --prompt 'a dog barking' "
        "--outdir {out}/generated/t2v_320x512",
    ]


def commands(
    out: Path,
    python: str,
    vc2: str | None,
    imagebind: str | None,
    cim: str | None,
    bpe: str | None,
    extra: list[str],
) -> list[tuple[str, list[str] | str]]:
    """(name, argv or shell string) for every row, in run order."""
    rows: list[tuple[str, list[str] | str]] = []
    if vc2:
        argv = [python, "-m", "convert.videocrafter", vc2, str(out / "vc2")]
        rows.append(("convert.videocrafter", argv + (["--bpe", bpe] if bpe else [])))
    if imagebind:
        rows.append(("convert.imagebind", [python, "-m", "convert.imagebind", imagebind,
                                           str(out / "imagebind"),
                                           "--modalities", "audio,vision,text"]))  # fmt: skip
    if cim:
        rows.append(("convert.cim", [python, "-m", "convert.cim", cim, str(out / "cim")]))
    for item in extra:
        name, sep, cmd = item.partition("=")
        if not sep or not name or not cmd:
            raise app.UsageError(f"--command wants NAME=SHELLCMD, got {item!r}")
        rows.append((name, cmd.replace("{out}", str(out)).replace("{python}", shlex.quote(python))))
    return rows


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _OUT.value:
        raise app.UsageError("--out is required")
    out = Path(_OUT.value).absolute()
    extra = list(_CMD.value)
    if _GENERATE.value:
        extra = generate_rows(_AUDIO.value, _STEPS.value, _GEN_FLAGS.value) + extra
    rows = commands(out, _PY.value, _VC2.value, _IB.value, _CIM.value, _BPE.value, extra)
    if not rows:
        raise app.UsageError(
            "nothing to run: give --vc2_ckpt, --imagebind_pth, --cim_pth, --generate or --command"
        )
    (out / ".logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    limit = int(_MAX.value * GB) if _MAX.value else None
    results = []
    for name, cmd in rows:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        r = run_measured(name, cmd, cwd=_CWD.value, env=env, watch_dir=out,
                         log_path=out / ".logs" / f"{name}.log", max_rss_bytes=limit)  # fmt: skip
        print(f"  {r.status}, {r.peak_rss_bytes / GB:.2f} GB, {r.wall_s:.0f} s", file=sys.stderr)
        results.append(r)
    print(format_table(results))
    if _JSON.value:
        rows_json = [dict(vars(r), status=r.status) for r in results]
        Path(_JSON.value).write_text(json.dumps(rows_json, indent=1))
    return 0 if all(r.returncode == 0 for r in results) else 1


if __name__ == "__main__":
    app.run(main)
