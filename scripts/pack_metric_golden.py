"""Pack the metric reference cases (label/prediction pairs and the official scores) into
tests/data/metric_golden.npz and tests/data/metric_golden.json for the test suite."""
import csv
import json
import sys
from pathlib import Path

import numpy as np
import tifffile

src = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/metric-golden")
out = Path(__file__).parents[1] / "tests" / "data"
expected = json.loads((src / "expected.json").read_text())["cases"]
arrays, cases = {}, {}
for row in csv.DictReader(open(src / "cases.csv")):
    label_key = Path(row["label"]).stem
    arrays.setdefault(f"label_{label_key}", tifffile.imread(src / row["label"]))
    pred = tifffile.imread(src / row["prediction"])
    # predictions are binary: stored as packed bits plus their foreground value
    arrays[f"pred_{row['case']}"] = np.packbits(pred != 0)
    arrays[f"predinfo_{row['case']}"] = np.array(list(pred.shape) + [int(pred.max())])
    e = expected[row["case"]]
    cases[row["case"]] = {"label": label_key, **{k: e[k] for k in ("leaderboard", "topo", "surface_dice", "voi_score", "voi_total", "topo_counts_mpg_by_dim")}}
np.savez_compressed(out / "metric_golden.npz", **arrays)
(out / "metric_golden.json").write_text(json.dumps(cases, indent=1))
