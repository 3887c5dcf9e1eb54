"""Evaluation reports: the JSON of every score and a Markdown table in the layout of the paper's
Table 3 (rows = methods; FVD / IA / AV-Align, plus AV-Align under the 2023 rule and placement
accuracy when known, and the number of videos). Written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maestro_jax.evaluation.videos import EvalError
from maestro_jax.files import write_json, write_text
from maestro_jax.metrics.av_align import AV_2023_NOTE, AV_2025_NOTE


# ----------------------------------------------------------------------------- reports
def _cell(block: dict | None, key: str = "value", digits: int = 3) -> str:
    if not block or block.get(key) is None or not np.isfinite(block[key]):
        return "–"
    return f"{round(block[key], digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.0"


def markdown_table(
    results: Sequence[dict],
    label_header: str = "Method",
    columns: Sequence[tuple[str, str, str, int]] = (),
) -> str:
    """Table 3 layout: rows = methods (folders or sweep values), columns FVD / IA / AV-Align,
    then AV-Align (2023 rule), placement accuracy when any row has it, the extra `columns`
    ((header, block, key, digits): the cell is `row[block][key]`, e.g. a training ablation's
    nearest-label accuracy) and the video count."""
    has_place = any("placement" in r for r in results)
    head = [label_header, "FVD ↓", "IA ↑", "AV-Align ↑", "AV-Align 2023"]
    head += ["Placement ↑"] if has_place else []
    head += [c[0] for c in columns]
    head += ["Videos"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        row = [str(r["name"]), _cell(r.get("fvd"), digits=1), _cell(r.get("ia")),
               _cell(r.get("av_align")), _cell(r.get("av_align_2023"))]  # fmt: skip
        if has_place:
            row.append(_cell(r.get("placement"), "accuracy"))
        row += [_cell(r.get(block), key, digits) for _, block, key, digits in columns]
        row.append(str(r.get("n_videos", 0)))
        lines.append("| " + " | ".join(row) + " |")
    ia0 = next((r["ia"] for r in results if r.get("ia")), None)
    notes = [
        "",
        (
            f"- IA: ImageBind frame–audio cosine, audio = {ia0['audio']}, embedding = "
            f"{ia0['embedding']}; mean over frames, then over videos."
            if ia0
            else "- IA: – (off: config.imagebind_metrics is False)."
        ),
        f"- AV-Align: {AV_2025_NOTE}. AV-Align 2023: {AV_2023_NOTE}.",
    ]
    fv = [r["fvd"] for r in results if "fvd" in r]
    if fv:
        notes.append(
            f"- FVD: I3D logits, first {fv[0]['frames']} frames at {fv[0]['size']}², "
            f"{fv[0]['convention']} covariance, {fv[0]['n_real']} reference videos "
            f"({fv[0]['reference_dir']})."
        )
    else:
        notes.append("- FVD: – (no reference set given).")
    if any((r.get("placement") or {}).get("metric") == "toy_colour" for r in results):
        notes.append(
            "- Placement (toy world): fraction of (box, frame) pairs whose box shows its own "
            "source's class by colour (maestro_jax.metrics.placement.colour_placement)."
        )
    elif has_place:
        notes.append(
            "- Placement: fraction of boxes whose crop is closer (ImageBind) to its own stem "
            "than to every other stem (chance 1 / number of sources)."
        )
    errors = [f"{r['name']}: {r['error']}" for r in results if r.get("error")]
    if errors:
        notes.append("- Not evaluated: " + "; ".join(errors))
    skipped = [f"{r['name']}/{v}" for r in results for v in r.get("failed", {})]
    if skipped:
        notes.append(f"- Could not be scored (skipped): {', '.join(skipped)}")
    if any(r.get("weights", {}).get("random") for r in results):
        notes.append("- RANDOM tiny weights (a :runlocal config): numbers test the plumbing only.")
    return "\n".join(lines + notes) + "\n"


def write_report(out: str | os.PathLike, results: Sequence[dict], cfg, extra: dict | None = None):
    """FILE.json (one folder: its result at the top level; several: under 'methods') and the
    Markdown table FILE.md next to it; both atomic. Returns (json path, md path)."""
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise EvalError(f"--out must be a .json file, got {out}")
    body = dict(results[0]) if len(results) == 1 else {"methods": list(results)}
    body["config"] = json.loads(cfg.to_json_best_effort())
    body.update(extra or {})
    md = out.with_suffix(".md")
    table = markdown_table(results)
    write_json(out, body)
    write_text(md, table)
    return out, md
