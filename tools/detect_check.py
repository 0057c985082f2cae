"""Does the deployable command give 05's number?  Issue 34's check after a full ``make run``:
``python -m wildlib.detect`` (ONNX Runtime, Pillow, numpy) on the run's whole report split, its
AP50 (pycocotools, as 05 scores) beside 05's AP50 of the same deployable, and the command's
detections against the ones 05 stored, image by image.

    python tools/detect_check.py runs/RUN [--out DIR]

Writes ``OUT/detect_check.json`` (default ``RUN/detect_check/``).  The command runs in a process of
its own, as a user runs it (its own threads: the manifest's); nothing here is a timing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from wildlib import data, evaluate, io, layout, stages
from wildlib.modeling import load_trained


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    run = io.resolve(a.run)
    out = Path(a.out) if a.out else run / "detect_check"
    ev = stages.metrics_of(run, layout.EVALUATE)
    ch = stages.metrics_of(run, layout.CHANNELS)
    split = ev.evaluation_split
    data_dir = stages.data_dir_for(run)
    classes, aliases = stages.classes_for(run)
    records = data.load_split(data_dir, split, classes, aliases=aliases)
    paths = out / "images.txt"
    io.write_text(paths, "".join(f"{r['file_name']}\n" for r in records))
    cmd = [sys.executable, "-m", "wildlib.detect", str(paths), "--model", str(run / ch.deploy_dir), "--out",
           str(out / "found"), "--tile", "off", "--quiet"]
    rc = subprocess.run(cmd).returncode
    found = io.read_json(out / "found" / "detections.json")
    ids = {Path(r["file_name"]).name: r["image_id"] for r in records}
    dets = [{"image_id": ids[Path(d["file_name"]).name], "category_id": int(d["category_id"]), "bbox": d["bbox"],
             "score": d["score"]} for d in found["detections"]]
    datasets = data.register(data_dir, classes, aliases=aliases, coco_dir=out / "coco")
    cfg, _ = load_trained(run / layout.BASELINE)  # 05 caps COCO's detections per image by the baseline's config
    limit = evaluate.coco_max_dets(cfg)
    command = evaluate.coco_metrics(datasets[split], dets, limit)
    row = next(v for v in ev.variants if v.name == stages.DEPLOYED_NAME)
    stored = io.read_json(run / layout.EVALUATE / stages.DETECTIONS_DIR / f"{io.slug(stages.DEPLOYED_NAME)}.json")
    same = evaluate.same_detections(dets, stored)
    result = {"run": run.name, "split": split, "images": len(records), "command": cmd, "returncode": rc,
              "command_AP50": command["AP50"], "evaluate_AP50": row.AP50, "same_detections": same,
              "detections": len(dets), "stored_detections": len(stored), "max_dets_per_image": limit,
              "cpu": io.cpu_model()}
    io.write_json(out / "detect_check.json", result)
    print(result)
    return 0 if rc == 0 and same and abs(command["AP50"] - row.AP50) < 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
