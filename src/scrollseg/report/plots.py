"""The progress plot of a run: loss, validation score and its parts, LR, throughput."""
from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PARTS = (("val/leaderboard", "leaderboard"), ("val/topo", "TopoScore"), ("val/surface_dice", "surface Dice"), ("val/voi_score", "VOI score"))


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and "event" not in r]
    return [s for s, _ in points], [v for _, v in points]


def progress_figure(records: list[dict]) -> Figure:
    fig = Figure(figsize=(11, 7), dpi=100)
    FigureCanvasAgg(fig)
    loss_ax, val_ax, lr_ax, speed_ax = fig.subplots(2, 2).ravel()
    fig.subplots_adjust(left=0.07, right=0.95, bottom=0.08, top=0.95, wspace=0.22, hspace=0.32)  # fixed: a layout engine is slow
    steps, loss = _series(records, "loss")
    loss_ax.plot(steps, loss, color="tab:blue", lw=1.2)
    loss_ax.set_title("training loss")
    if loss and min(loss) > 0 and max(loss) / min(loss) > 20:
        loss_ax.set_yscale("log")
    for key, name in PARTS:
        s, v = _series(records, key)
        if s:
            val_ax.plot(s, v, marker="o", ms=3, lw=2.0 if key == "val/leaderboard" else 1.0, label=name)
    val_ax.set_title("validation")
    val_ax.set_ylim(0, 1)
    if val_ax.lines:
        val_ax.legend(loc="lower right", fontsize=8)
    else:
        val_ax.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=val_ax.transAxes, color="gray")
    lr_ax.plot(*_series(records, "lr"), color="tab:green", lw=1.2)
    lr_ax.set_title("learning rate")
    speed_ax.plot(*_series(records, "samples_per_s"), color="tab:purple", lw=1.2)
    speed_ax.set_title("samples/s (line), data-wait share (shaded)")
    wait_ax = speed_ax.twinx()
    s, w = _series(records, "data_wait")
    wait_ax.fill_between(s, w, color="tab:orange", alpha=0.25, lw=0)
    wait_ax.set_ylim(0, 1)
    for ax in (loss_ax, val_ax, lr_ax, speed_ax):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return fig


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_figure(fig: Figure, path: Path | str) -> Path:
    """Write ``fig`` as a PNG, atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path
