"""The run report: one self-contained report.html (images inlined as base64, no
external URL, a few lines of inline script that make the tables sortable).

It shows the end-of-run summary with the commands to resume and to predict, the
progress curves, every validation, the latest one per volume, the slice pictures,
the metric's error maps of the latest validation masks, and the resolved config.
"""
from __future__ import annotations

import base64
import html
import json
import shlex
from pathlib import Path

import numpy as np

from ..checkpoint import RunDir
from ..data.cache import CachedVolume
from ..data.io import read_volume
from ..engine.log import read_records
from ..engine.summary import best_validation
from ..errors import ScrollsegError
from ..metrics.explain import explain_volume
from ..progress import format_duration
from .live import pictures_dir
from .plots import png_bytes, progress_figure
from .slices import error_figure

VALIDATION_PARTS = (("val/leaderboard", "leaderboard"), ("val/topo", "TopoScore"), ("val/surface_dice", "surface Dice"), ("val/voi_score", "VOI score"))
CASE_COLUMNS = (("leaderboard", "leaderboard"), ("topo", "TopoScore"), ("surface_dice", "surface Dice"), ("voi_score", "VOI score"),
                ("voi_split", "VOI split"), ("voi_merge", "VOI merge"))

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1250px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child, #summary td { text-align: left; }
table.sortable th { cursor: pointer; background: #f3f3f3; user-select: none; }
table.sortable th[data-dir="asc"]::after { content: " \\25B2"; } table.sortable th[data-dir="desc"]::after { content: " \\25BC"; }
pre { background: #f6f6f6; padding: .7em; overflow-x: auto; font-size: .85em; }
img { max-width: 100%; border: 1px solid #eee; }
.figure { margin: 1em 0; } .muted { color: #777; }
"""

# Click a header to sort by that column; a table may name an initial order in data-sort-col / data-sort-dir.
SCRIPT = """
function sortTable(table, col, dir) {
  const body = table.tBodies[0];
  const key = (row) => { const cell = row.cells[col]; const v = cell.dataset.value;
    return v !== undefined && v !== "" ? parseFloat(v) : cell.textContent.trim(); };
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b);
    const order = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y), undefined, {numeric: true});
    return dir === "asc" ? order : -order; });
  rows.forEach((row) => body.appendChild(row));
  table.querySelectorAll("th").forEach((th, i) => { if (i === col) th.dataset.dir = dir; else delete th.dataset.dir; });
}
document.querySelectorAll("table.sortable").forEach((table) => {
  table.querySelectorAll("th").forEach((th, i) => th.addEventListener("click", () =>
    sortTable(table, i, th.dataset.dir === "asc" ? "desc" : "asc")));
  if (table.dataset.sortCol !== undefined) sortTable(table, parseInt(table.dataset.sortCol), table.dataset.sortDir || "asc");
  table.dataset.ready = "1";
});
"""


def _e(value) -> str:
    return html.escape(str(value))


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _number(value, digits: int = 4) -> str:
    if value is None:
        return '<td data-value="">-</td>'
    return f'<td data-value="{float(value)!r}">{float(value):.{digits}f}</td>'


def _table(header: list[str], rows: list[list[str]], table_id: str, sort: tuple[int, str] | None = None) -> str:
    attrs = f' data-sort-col="{sort[0]}" data-sort-dir="{sort[1]}"' if sort else ""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f'<table class="sortable" id="{table_id}"{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _summary_section(run: Path, records: list[dict], summary: dict | None) -> str:
    if summary is None:  # the run is still going, or ended without its summary
        logged = [r for r in records if "loss" in r]
        score, at = best_validation(records)
        step = logged[-1]["step"] if logged else 0
        rows = [("state", "running or interrupted (no summary.json yet)"), ("step", step),
                ("best validation", f"{score:.4f} at step {at}" if score is not None else "none yet")]
        commands = {"resume": f"scrollseg train DATA {shlex.quote(str(run))}",
                    "predict": f"scrollseg predict {shlex.quote(str(run))} DATA --out submission.zip"}
        return _key_values(rows) + _commands(commands) + '<p class="muted">DATA: the dataset folder the run trains on.</p>'
    s = summary
    rows = [("state", "finished" if s["finished"] else f"stopped ({s['stop_reason'] or 'not finished'})"),
            ("step", f"{s['step']} of {s['total_steps']}"),
            ("best validation", f"{s['best_score']:.4f} at step {s['best_step']}" if s["best_score"] is not None else "none"),
            ("last session", format_duration(s["session_seconds"])),
            ("throughput", f"{s['samples_per_s']:.1f} samples/s" if s["samples_per_s"] is not None else "-"),
            ("data-wait", f"{s['data_wait']:.0%}" if s["data_wait"] is not None else "-")]
    rows += [(k, f"{v:.3g}") for k, v in s.items() if k.startswith("gpu")]
    rows += [(f"checkpoint {name}", path) for name, path in s["checkpoints"].items()]
    return _key_values(rows) + _commands(s["commands"])


def _key_values(rows) -> str:
    return '<table id="summary">' + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"


def _commands(commands: dict) -> str:
    return "".join(f"<p>{_e(name)}:</p><pre>{_e(cmd)}</pre>" for name, cmd in commands.items())


def _validation_sections(records: list[dict]) -> str:
    validations = [r for r in records if "val/leaderboard" in r]
    if not validations:
        return "<h2>Validation</h2><p class='muted'>No validation yet.</p>"
    rows = [[f'<td data-value="{r["step"]}">{r["step"]}</td>'] + [_number(r.get(k)) for k, _ in VALIDATION_PARTS] for r in validations]
    out = "<h2>Validation</h2>" + _table(["step"] + [name for _, name in VALIDATION_PARTS], rows, "validations", (0, "asc"))
    latest = validations[-1]
    cases = latest.get("val/cases") or {}
    if cases:
        rows = [[f"<td>{_e(vid)}</td>"] + [_number(c.get(k)) for k, _ in CASE_COLUMNS] for vid, c in cases.items()]
        out += (f"<h2>Validation volumes at step {latest['step']}</h2><p class='muted'>Worst first; click a header to sort.</p>"
                + _table(["volume"] + [name for _, name in CASE_COLUMNS], rows, "volumes", (1, "asc")))
    return out


def _pictures_section(run: Path) -> str:
    newest: dict[str, tuple[int, Path]] = {}
    for path in sorted(pictures_dir(run).glob("step-*-*.png")):
        step_text, vid = path.stem[len("step-"):].split("-", 1)
        if vid not in newest or int(step_text) > newest[vid][0]:
            newest[vid] = (int(step_text), path)
    if not newest:
        return "<h2>Slices</h2><p class='muted'>No pictures yet (drawn at each validation).</p>"
    figures = "".join(f'<div class="figure"><p>{_e(vid)}, step {step}</p>{_img(path.read_bytes(), f"slices of {vid}")}</div>'
                      for vid, (step, path) in sorted(newest.items()))
    return "<h2>Slices</h2>" + figures


def _error_section(run: Path) -> str:
    latest_path = pictures_dir(run) / "latest.json"
    if not latest_path.is_file():
        return ""
    latest = json.loads(latest_path.read_text())
    parts, rows = [], []
    for item in latest["volumes"]:
        entry, mask_path = item.get("cache_entry"), pictures_dir(run) / item["mask"]
        if not entry or not (Path(entry) / "meta.json").is_file() or not mask_path.is_file():
            parts.append(f"<p class='muted'>{_e(item['id'])}: its cache entry or mask is gone; no error maps.</p>")
            continue
        volume = CachedVolume.open(Path(entry))
        mask = read_volume(mask_path)
        explanation = explain_volume(np.asarray(volume.label), mask)
        counts = explanation.counts()
        sd, voi = counts["surface_dice"], counts["voi"]
        rows.append([f"<td>{_e(item['id'])}</td>", _number(counts["scores"]["leaderboard"]), _number(explanation.surface.value),
                     _number(sd["missed_label_area"] + sd["extra_pred_area"], 1), _number(voi["split_bits"]), _number(voi["merge_bits"]),
                     _number(voi["split_label_components"], 0), _number(voi["merged_pred_components"], 0)]
                    + [_number(u, 0) for u in explanation.betti.unmatched])
        picture = png_bytes(error_figure(volume.image, explanation, item["id"]))
        parts.append(f'<div class="figure">{_img(picture, "error maps of " + item["id"])}</div>')
    header = ["volume", "leaderboard", "surface Dice", "surface area out of tolerance", "VOI split bits", "VOI merge bits",
              "split label components", "merged predicted components", "unmatched Betti 0", "unmatched Betti 1", "unmatched Betti 2"]
    table = _table(header, rows, "errors") if rows else ""
    return (f"<h2>Where the metric loses points (step {latest['step']})</h2>"
            "<p class='muted'>Surface Dice: label surface missed (blue) and predicted surface beyond the tolerance (red). "
            "VOI: label components split among predicted ones (orange) and predicted components merging label ones (magenta). "
            "Betti: unmatched features per octant, dimensions 0/1/2.</p>" + table + "".join(parts))


def render_report(run: Path | str) -> str:
    run = Path(run)
    rundir = RunDir(run)
    if not rundir.config_path.is_file() and not rundir.metrics_path.is_file():
        raise ScrollsegError(f"{run}: not a run folder (no config.yaml or metrics.jsonl); give the RUN folder of `scrollseg train`")
    records = read_records(rundir.metrics_path)
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    config = rundir.config_path.read_text() if rundir.config_path.is_file() else "(no config.yaml)"
    curves = _img(png_bytes(progress_figure(records)), "progress curves")
    body = (f"<h1>scrollseg run {_e(run)}</h1><h2>Summary</h2>{_summary_section(run, records, summary)}"
            f"<h2>Progress</h2>{curves}{_validation_sections(records)}{_pictures_section(run)}{_error_section(run)}"
            f"<h2>Config</h2><pre>{_e(config)}</pre>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>scrollseg run {_e(run.name)}</title>'
            f"<style>{STYLE}</style></head><body>{body}<script>{SCRIPT}</script></body></html>")


def write_report(run: Path | str, out: Path | str | None = None) -> Path:
    """Write the run report (default ``RUN/report.html``) and return its path."""
    out = Path(out) if out else Path(run) / "report.html"
    text = render_report(run)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
