"""Does bf16 training hold the baseline's accuracy?  Issue 32's bf16 lever, judged on `valid`.

    python tools/precision_check.py runs/FP32 runs/BF16 [--out FILE]

The two runs are one commit's ``make run`` on one machine with one difference: stage 01's
``CFG_OVERRIDES = {"SOLVER.PRECISION": "bf16"}`` in the second (every later fine-tuning starts from
the baseline's config, so it trains in bf16 too).  Both runs' stage-01 baselines are scored on
`valid` and on the report split; the paired difference BF16 - FP32 (same images resampled) comes
with its 95% interval.  **The rule, written before the bf16 run was made:** bf16 holds when the
upper end of that interval on `valid` is >= 0 (it may be as good as fp32; the rule issue 33 uses
for the dense control).  `test` is shown and never chosen on.  Beside it: each run's training
step (Detectron2's own mean, the probe after it) and stage minutes, from the runs' records.
Writes ``--out`` (default ``docs/precision-check.json``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wildlib import config, data, evaluate, io, layout, stages, train
from wildlib.modeling import D2_CONFIG_FILE, load_trained

HISTORY = Path("train") / train.HISTORY_FILE  # where stage 01's training left its history


def precision_of(run: Path) -> str:
    return str(config.get_config(str(run / layout.BASELINE / D2_CONFIG_FILE)).SOLVER.PRECISION)


def _run_facts(run: Path) -> dict:
    h = io.read_json(run / layout.BASELINE / HISTORY)
    return {"run": run.name, "precision": precision_of(run),
            "train_minutes": h["train_seconds"] / 60, "step_s": h["step_s"], "probe_step_s": h["probe_step_s"],
            "stage_minutes": {k: v / 60 for k, v in io.read_json(run / "run_times.json").items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fp32_run")
    ap.add_argument("bf16_run")
    ap.add_argument("--out", default="docs/precision-check.json")
    a = ap.parse_args(argv)
    runs = [io.resolve(a.fp32_run), io.resolve(a.bf16_run)]
    if [precision_of(r) for r in runs] != ["fp32", "bf16"]:
        raise SystemExit(f"{runs[0]} and {runs[1]} trained their baselines in {[precision_of(r) for r in runs]}, "
                         "not fp32 then bf16")
    data_dir = stages.data_dir_for(runs[0])
    classes, aliases = stages.classes_for(runs[0])
    datasets = data.register(data_dir, classes, aliases=aliases, coco_dir=runs[1] / "precision_check" / "coco")
    split = data.report_split(datasets)
    scored = {}
    for run in runs:
        cfg, model = load_trained(run / layout.BASELINE)
        scored[run.name] = {s: evaluate.scored(model, cfg, datasets, s) for s in ("valid", split)}
    fp32, bf16 = (scored[r.name] for r in runs)
    result = {"runs": [_run_facts(r) for r in runs], "cpu": io.cpu_model(), "rule": "valid: upper end of the paired "
              "95% interval of BF16 - FP32 >= 0"}
    for s in ("valid", split):
        d = evaluate.beside_baseline(bf16[s], fp32[s])  # a paired difference, no verdict of its own
        result[s] = {"images": fp32[s].matched.num_images,
                     "fp32_AP50": fp32[s].ap50, "bf16_AP50": bf16[s].ap50, "delta_ap50": d["baseline_delta_ap50"],
                     "delta_ap50_ci95": d["baseline_delta_ap50_ci95"]}
    result["holds"] = result["valid"]["delta_ap50_ci95"][1] >= 0
    io.write_json(a.out, result)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
