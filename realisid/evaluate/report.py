"""Reports of evaluation rows: results.csv, summary.md (variant x persons x face size), identity_vs_size.png."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

# (column in the summary, row key, how to average: "found" = over detected faces, "all" = over requested faces)
SUMMARY_COLUMNS = (
    ("faces", None, None),
    ("found", "found", "all"),
    ("identity", "identity_cos", "found"),
    ("IoU", "iou", "all"),
    ("pose L1 (deg)", "pose_l1_deg", "found"),
    ("pose L1 /180", "pose_l1_norm", "found"),
    ("expression", "expression_error", "found"),
    ("copy-paste", "copy_paste", "found"),
    ("CLIP-I", "clip_i", "found"),
    ("CLIP-T", "clip_t", "all"),
)


def write_all(rows: Sequence[dict], out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    paths = {"csv": out / "results.csv", "summary": out / "summary.md", "plot": out / "identity_vs_size.png"}
    write_csv(rows, paths["csv"])
    paths["summary"].write_text(summary_markdown(rows))
    plot_identity_vs_size(rows, paths["plot"])
    return paths


def write_csv(rows: Sequence[dict], path: str | Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k, "")) for k in columns})


def _fmt(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def summarise(rows: Sequence[dict]) -> list[dict]:
    """One dict per (variant, persons, size): the SUMMARY_COLUMNS means (NaN where nothing to average)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["variant"], row["persons"], row["size"])].append(row)
    out = []
    for (variant, persons, size), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2])):
        found = [r for r in members if r["found"]]
        summary = {"variant": variant, "persons": persons, "size": size, "size_label": members[0]["size_label"],
                   "faces": len(members)}
        for column, key, over in SUMMARY_COLUMNS[1:]:
            summary[column] = _mean([r.get(key, math.nan) for r in (found if over == "found" else members)])
        out.append(summary)
    return out


def _mean(values) -> float:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else math.nan


def summary_markdown(rows: Sequence[dict]) -> str:
    spaces = sorted({r["identity_space"] for r in rows if r.get("identity_space")})
    clip_spaces = sorted({r["clip_space"] for r in rows if r.get("clip_space")})
    lines = [
        "# RealisID evaluation summary",
        "",
        f"Identity: cosine in `{', '.join(spaces) or 'n/a'}` (not comparable across spaces or with the paper's FaceNet).",
        f"CLIP: `{', '.join(clip_spaces) or 'not computed'}`. Identity, pose, expression, copy-paste and CLIP-I "
        "average over detected faces; found, IoU (missing = 0) and CLIP-T over requested faces.",
        "",
        "| variant | persons | face size | " + " | ".join(c for c, _, _ in SUMMARY_COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(SUMMARY_COLUMNS),
    ]
    for s in summarise(rows):
        cells = [str(s["faces"])] + [_cell(s[c]) for c, _, _ in SUMMARY_COLUMNS[1:]]
        lines.append(f"| {s['variant']} | {s['persons']} | {s['size_label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.4f}"


def plot_identity_vs_size(rows: Sequence[dict], path: str | Path) -> None:
    """Mean identity cosine against face size, one line per (variant, persons); x from large to small faces."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    try:
        lines: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
        for s in summarise(rows):
            lines[(s["variant"], s["persons"])].append((s["size"], s["identity"]))
        for (variant, persons), points in sorted(lines.items()):
            points.sort(reverse=True)
            ax.plot([1 / p[0] for p in points], [p[1] for p in points], marker="o",
                    label=f"{variant}, {persons} person{'s' if persons > 1 else ''}")
        spaces = sorted({r["identity_space"] for r in rows if r.get("identity_space")})
        ax.set_xlabel("face size: 1 / (fraction of the image side)")
        ax.set_ylabel(f"identity cosine ({', '.join(spaces) or 'n/a'})")
        ax.set_title("Identity vs face size")
        ax.grid(True, alpha=0.3)
        if lines:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
