"""Papermill runs of every notebook with smoke parameters; assertions on what they wrote."""
import json
import math

import numpy as np
import pytest
import torch

from wildlib import runner, synth


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("run")


def test_00_explore(run_dir, smoke_data):
    runner.run_all(run_dir, only=["00"], overrides={"DATA_DIR": str(smoke_data), "N_SAMPLES": 4})
    stage = run_dir / "00_explore"
    m = json.loads((stage / "metrics.json").read_text())
    assert m["instances_total"] == sum(synth.SynthConfig(scale=0.08).counts().values())
    assert m["split_overlap"] == 0 and m["classes_missing_in_valid"] == []
    assert m["images"]["train"] > m["images"]["valid"] > 0
    assert abs(sum(m["box_size_mix"].values()) - 1) < 1e-6
    for fig in ("class_counts.png", "box_statistics.png", "samples.png"):
        assert (stage / fig).stat().st_size > 5000, fig
    assert (run_dir / "notebooks" / "00_explore_data.ipynb").exists()


def test_01_baseline(run_dir, smoke_data):
    runner.run_all(run_dir, only=["01"], overrides={
        "MAX_ITER": 12, "IMS_PER_BATCH": 2, "EVAL_PERIOD": 6, "N_SHOW": 2,
        "LR": 0.0005})  # a low LR keeps some boxes above the score threshold after 12 iterations
    stage = run_dir / "01_baseline"
    m = json.loads((stage / "metrics.json").read_text())
    # stage 01 picked up the data that stage 00 explored
    assert str(smoke_data) in (stage / "coco" / "valid.json").read_text()
    for k in ("AP", "AP50", "AP75"):
        assert math.isfinite(m["bbox"][k]) and 0 <= m["bbox"][k] <= 100
    assert sum(k.startswith("AP-") for k in m["bbox"]) == 13
    assert m["bbox"]["num_detections"] > 0
    assert m["train"]["iterations"] == 12 and len(m["losses"]) == 12
    assert all(math.isfinite(r["total_loss"]) for r in m["losses"])
    assert [e["iter"] for e in m["evals"]] == [6, 12]  # iterations done at each evaluation
    assert m["size"]["weights_bytes"] == (stage / "model_final.pth").stat().st_size
    assert m["reload"]["max_score_diff"] == 0 and m["reload"]["same_box_count"]

    # weights only, and reloading the file in this process reproduces the saved predictions
    assert set(torch.load(stage / "model_final.pth", weights_only=True)) == {"model"}
    from wildlib import data, evaluate, stages

    cfg, model = stages.load_trained(stage)
    saved = json.loads((stage / "predictions_sample.json").read_text())["predictions"]
    records = data.load_split(smoke_data, "valid")[: len(saved)]
    preds = evaluate.predict(model, evaluate.load_inputs(cfg, records))
    assert sum(len(p["scores"]) for p in preds) > 0
    for p, s in zip(preds, saved):
        assert np.allclose(p["scores"], s["scores"], atol=1e-5)
        assert np.allclose(p["boxes"], np.reshape(s["boxes"], (-1, 4)), atol=1e-3)
    for fig in ("loss_curves.png", "predictions.png", "ap_over_training.png"):
        assert (stage / fig).exists(), fig
    assert m["config_name"] == "mobilenet_fpn_cpu"
