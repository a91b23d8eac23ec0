"""Training curves of the Mini stages (from each stage's log.jsonl) as PNGs for the model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_curve(path: Path) -> list[dict]:
    """The curve of the latest run: a resumed run appends, so keep the last entry of every step."""
    by_step = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            by_step[entry["step"]] = entry
    return [by_step[k] for k in sorted(by_step)]


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_curves(work: str, out_dir: str, stages: tuple[str, ...], suffix: str = "") -> list[Path]:
    """curve_<stage><suffix>.png per stage whose log is in `work` (a suffix keeps a later stage's curve apart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for stage in stages:
        path = Path(work) / f"{stage}.log.jsonl"
        if not path.exists():
            continue
        curve = read_curve(path)
        metrics = [k for k in curve[0] if k not in ("step", "seconds")]
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 2.6), squeeze=False)
        steps = np.array([c["step"] for c in curve])
        for ax, name in zip(axes[0], metrics, strict=True):
            values = np.array([c[name] for c in curve], np.float64)
            window = max(1, len(values) // 50)
            ax.plot(steps, values, alpha=0.25, lw=0.6)
            ax.plot(steps[window - 1:], _smooth(values, window), lw=1.4)
            ax.set_title(f"{stage}: {name}", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
        fig.tight_layout()
        target = Path(out_dir) / f"curve_{stage}{suffix}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, dpi=90)
        plt.close(fig)
        written.append(target)
    return written
