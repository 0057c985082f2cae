"""The test split's size, checked against the per-image paired variance on `valid`.

    python tools/power_check.py runs/RUN [--half-width 0.5]

Scores stage 02's gradually pruned model and its dense control on `valid` (the 80%-sparse model by
default), draws the paired bootstrap of their AP50 difference, and says how many images of the same
kind a paired 95% interval of half-width ``--half-width`` needs: the bootstrap resamples images, so
a half-width shrinks as 1/sqrt(n), and n = n_valid * (h_valid / h)^2.  With the run's `test`, it
prints the half-width reached there too (the check, not a choice: the size was fixed before).
Writes ``RUN/02_prune/power_check.json``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from wildlib import data, evaluate, intervals, io, modeling, stages


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--half-width", type=float, default=0.5)
    a = ap.parse_args(argv)
    run = io.resolve(a.run_dir)
    prune_dir = run / stages.PRUNE
    names, aliases = stages.classes_for(run)
    datasets = data.register(stages.data_dir_for(run), names, aliases=aliases, coco_dir=prune_dir / "power_coco")
    cfg, pruned = modeling.load_trained(prune_dir, stages.PRUNED_FILE)
    _, control = modeling.load_trained(prune_dir, stages.DENSE_CONTROL_FILE)
    limit = evaluate.coco_max_dets(cfg)
    v, c = (evaluate.scored(m, cfg, datasets, "valid", max_dets_per_image=limit) for m in (pruned, control))
    d = intervals.paired(v.matched, c.matched, samples=4000)
    n_valid = v.matched.num_images
    half = (d["ci95"][1] - d["ci95"][0]) / 2
    need = math.ceil(n_valid * (half / a.half_width) ** 2)
    out = {"n_valid": n_valid, "delta_valid": d["delta"], "ci95_valid": d["ci95"], "se_valid": d["se"],
           "half_width_valid": half, "target_half_width": a.half_width, "images_needed": need,
           "sd_per_image": d["se"] * math.sqrt(n_valid), "cpu_model": io.cpu_model()}
    gradual = stages.metrics_of(run, stages.PRUNE).gradual
    if gradual.split == "test" and gradual.delta_ap50_ci95:
        lo, hi = gradual.delta_ap50_ci95
        out.update(test_images=stages.metrics_of(run, stages.EXPLORE).images.get("test"),
                   half_width_test=(hi - lo) / 2, delta_test=gradual.delta_ap50, ci95_test=[lo, hi])
    io.write_json(prune_dir / "power_check.json", out)
    print(io.read_json(prune_dir / "power_check.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
