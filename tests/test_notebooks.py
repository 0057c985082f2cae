"""Papermill runs of every notebook with smoke parameters; assertions on what they wrote.

Each test runs its notebook through the session's ``smoke_run`` (conftest.py), which first runs
whatever earlier stage has not run yet: any one of these tests can run alone."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from wildlib import modeling, synth
from .conftest import SMOKE

pytestmark = pytest.mark.notebooks


def test_00_explore(smoke_run, smoke_data):
    run_dir = smoke_run("00")
    stage = run_dir / "00_explore"
    m = json.loads((stage / "metrics.json").read_text())
    assert m["instances_total"] == sum(synth.SynthConfig(scale=0.08).counts().values())
    assert m["split_overlap"] == 0 and m["classes_missing_in_valid"] == []
    assert m["classes"] == list(synth.CLASSES) and "paper" in m["per_class"]["zebra"]
    # 8 held-out scenes cannot hold all 13 classes: the check says which AP cannot be measured there
    expected = ("objects_below_smallest_anchor", "classes_missing_in_test")
    assert not [w for w in m["warnings"] if w["check"] not in expected]
    assert m["images"]["test"] == 8 and m["instances"]["test"] > 0
    assert m["images"]["train"] > m["images"]["valid"] > 0
    assert abs(sum(m["box_size_mix"].values()) - 1) < 1e-6
    for fig in ("class_counts.png", "box_statistics.png", "samples.png"):
        assert (stage / fig).stat().st_size > 5000, fig
    assert (run_dir / "notebooks" / "00_explore_data.ipynb").exists()


def test_01_baseline(smoke_run, smoke_data):
    run_dir = smoke_run("01")
    stage = run_dir / "01_baseline"
    m = json.loads((stage / "metrics.json").read_text())
    # stage 01 picked up the data that stage 00 explored
    assert str(smoke_data) in (stage / "coco" / "valid.json").read_text()
    for k in ("AP", "AP50", "AP75"):
        assert math.isfinite(m["bbox"][k]) and 0 <= m["bbox"][k] <= 100
    assert sum(k.startswith("AP-") for k in m["bbox"]) == 13
    assert m["bbox"]["num_detections"] > 0
    n, every = SMOKE["01"]["MAX_ITER"], SMOKE["01"]["EVAL_PERIOD"]
    assert m["train"]["iterations"] == n and len(m["losses"]) == n
    assert all(math.isfinite(r["total_loss"]) for r in m["losses"])
    assert [e["iter"] for e in m["evals"]] == [100, 200] == list(range(every, n + 1, every))  # done at each evaluation
    # the smoke model detects (its pickers downstream choose between real differences)
    assert m["evals"][-1]["AP50"] > 10 and m["bbox"]["AP50"] > 10
    # the learning curve (on valid) and how much the last quarter of the schedule still gained
    curve = m["learning_curve"]
    assert [p["iter"] for p in curve] == [100, 200]
    # its last point is what pycocotools makes of the detections that evaluation wrote (not the library's reading)
    in_training = _pycocotools_ap50(stage / "coco" / "valid.json", stage / "train" / "eval" / "coco_instances_results.json")
    assert curve[-1]["AP50"] == pytest.approx(in_training, abs=1e-6)
    at_75 = curve[0]["AP50"] + (150 - 100) / (200 - 100) * (curve[1]["AP50"] - curve[0]["AP50"])
    assert m["plateau_gain_ap50"] == pytest.approx(curve[1]["AP50"] - at_75)
    assert m["train"]["lr_steps"] == [0.75]
    # where the time goes: every part of the detector, inference and training step
    prof = m["profile"]
    assert {"backbone", "fpn", "rpn", "roi_pooler", "box_head", "optimizer_step", "data_loading"} <= set(prof)
    assert sum(r["infer_share"] for r in prof.values()) == pytest.approx(1.0)
    assert prof["backbone"]["infer_gflops"] > 0 and prof["backbone"]["train_ms"] > 0
    assert m["size"]["weights_bytes"] == (stage / "model_final.pth").stat().st_size
    assert m["reload"]["max_score_diff"] == 0 and m["reload"]["same_box_count"]

    # weights only, and reloading the file in this process reproduces the saved predictions
    assert set(torch.load(stage / "model_final.pth", weights_only=True)) == {"model"}
    from wildlib import data, evaluate

    cfg, model = modeling.load_trained(stage)
    saved = json.loads((stage / "predictions_sample.json").read_text())["predictions"]
    records = data.load_split(smoke_data, "valid")[: len(saved)]
    preds = evaluate.predict(model, evaluate.load_inputs(cfg, records))
    assert sum(len(p["scores"]) for p in preds) > 0
    for p, s in zip(preds, saved):
        assert np.allclose(p["scores"], s["scores"], atol=1e-5)
        assert np.allclose(p["boxes"], np.reshape(s["boxes"], (-1, 4)), atol=1e-3)
    for fig in ("loss_curves.png", "predictions.png", "learning_curve.png", "costs.png"):
        assert (stage / fig).exists(), fig
    assert m["config_name"] == "mobilenet_fpn_cpu"


def test_02_prune(smoke_run):
    run_dir = smoke_run("02")
    stage = run_dir / "02_prune"
    m = json.loads((stage / "metrics.json").read_text())
    for fig in ['ranking_sparsity.png', 'fc1_weights.png']:  # the teaching figures (issue 35), each the static form of a slider or a plot
        assert (stage / fig).stat().st_size > 5000, fig
    assert [(r["scope"], r["ratio"]) for r in m["one_shot"]] == [("all", 0.3), ("all", 0.6)]
    for r in m["one_shot"]:
        assert r["sparsity_all"] == pytest.approx(r["ratio"], abs=1e-3)
        assert math.isfinite(r["AP50"])
    assert {r["group"] for r in m["sensitivity"]} >= {"fpn", "rpn", "box_head", "backbone.m5"}

    # the sparsity the notebook reports is the fraction of zeros actually in the saved weights
    from wildlib import prune

    _, model = modeling.load_trained(run_dir / "01_baseline")
    saved = torch.load(stage / "model_pruned.pth", weights_only=True)["model"]
    assert prune.state_sparsity(saved, model) == pytest.approx(m["gradual"]["sparsity"], abs=1e-9)
    assert m["gradual"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    sparse = prune.load_sparse(stage / "model_pruned.sparse.npz")
    assert all(torch.equal(sparse[k], v) for k, v in saved.items())

    sizes = m["sizes"]
    assert sizes["pruned_sparse_bytes"] == (stage / "model_pruned.sparse.npz").stat().st_size
    assert sizes["pruned_sparse_bytes"] < sizes["pruned_dense_bytes"] < sizes["pruned_with_masks_bytes"]
    assert 0 <= m["max_sparsity_within_1ap50"] < 1
    # the dense control: the same fine-tuning without pruning, and the reference it sets
    dc = m["dense_control"]
    assert dc["iterations"] == m["gradual"]["iterations"] == 10 and math.isfinite(dc["AP50"])
    # five evaluations along each fine-tuning: the curves can show a dip (issue 35)
    assert [e["iter"] for e in dc["evals"]] == [e["iter"] for e in m["gradual"]["evals"]] == [2, 4, 6, 8, 10]
    # the pruning run distilled from the dense control (its saved weights), every step, with the smoke weights
    d = m["gradual"]["distillation"]
    assert d["steps"] == 10 and d["weights"] == {"cls": 1.0, "rpn": 0.5, "fpn": 0.0} and d["teacher_s_per_step"] > 0
    assert d["teacher_weights"] == str(stage / "model_dense_control.pth")
    losses = json.loads((stage / "gradual" / "train" / "history.json").read_text())["losses"]
    assert all(r["loss_distill_cls"] >= 0 and "loss_distill_rpn" in r and "loss_distill_fpn" not in r for r in losses)
    # reported on test; the reference is the dense control, whatever either scored on valid
    assert m["evaluation_split"] == "test" and m["reference"] == "dense control"
    assert m["reference_ap50_valid"] == dc["valid_AP50"]
    # the baseline was not evaluated again: 01's final evaluation on valid and its test detections
    b = json.loads((run_dir / "01_baseline" / "metrics.json").read_text())
    assert b["evals"][-1]["iter"] == SMOKE["01"]["MAX_ITER"]  # the evaluation after the last iteration
    assert m["baseline_valid_AP50"] == b["evals"][-1]["AP50"] and m["baseline"]["AP50"] == b["bbox"]["AP50"]
    assert (stage / "detections" / "baseline.json").read_bytes() == \
        (run_dir / "01_baseline" / "detections" / "baseline.json").read_bytes()
    assert dc["valid_AP50"] == dc["evals"][-1]["AP50"]  # the control's too: its last evaluation in training
    assert m["reference_ap50"] == dc["AP50"]
    # beside the verdicts, the baseline's paired difference (the baseline itself: against the control)
    assert m["baseline_against_reference"]["AP50"] == m["baseline"]["AP50"]
    assert all(len(v["baseline_delta_ap50_ci95"]) == 2 for v in m["variants"] + [m["gradual"]])
    lo, hi = m["reference_ap50_ci95"]
    assert lo <= m["reference_ap50"] <= hi
    g = m["gradual"]
    assert g["split"] == "test" and len(g["delta_ap50_ci95"]) == 2
    # the drop, from the detection files by pycocotools itself (not the library's matching)
    ap50 = {f: _pycocotools_ap50(stage / "coco" / "test.json", stage / "detections" / f)
            for f in ("gradual.json", "dense_control.json", "baseline.json")}
    assert g["delta_ap50"] == pytest.approx(ap50["gradual.json"] - ap50["dense_control.json"], abs=1e-6)
    assert g["baseline_delta_ap50"] == pytest.approx(ap50["gradual.json"] - ap50["baseline.json"], abs=1e-6)
    for v in m["variants"]:
        assert v["within_1ap50"] == (v["delta_ap50"] >= -1.0) and v["non_inferior"] == (v["delta_ap50_ci95"][0] >= -1.0)
    # the record names its pick, and the pick passes the rule (which row wins: tests/test_pickers.py)
    best = m["best_variant"]
    assert best is None or (best["within_1ap50"] and best["sparsity_all"] == m["max_sparsity_within_1ap50"])
    # the paired interval is reproducible from the detection files the stage wrote
    from wildlib import evaluate, intervals

    gt = evaluate.ground_truth(stage / "coco" / "test.json")
    pair = [intervals.match(gt, json.loads((stage / "detections" / f).read_text()))
            for f in ("gradual.json", "dense_control.json")]
    assert intervals.paired(*pair, samples=g["delta_ap50_samples"])["ci95"] == g["delta_ap50_ci95"]
    assert (stage / "model_dense_control.pth").exists()
    for fig in ("one_shot_sweep.png", "sensitivity.png", "gradual_schedule.png"):
        assert (stage / fig).exists(), fig


def _pycocotools_ap50(gt_file, detections_file) -> float:
    """AP50 of a detections file by pycocotools' COCOeval (100 detections per image), or NaN."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dets = json.loads(detections_file.read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        if not dets:
            return float("nan")
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return 100 * ev.stats[1]


def test_03_weight_sharing(smoke_run):
    run_dir = smoke_run("03")
    stage = run_dir / "03_share"
    m = json.loads((stage / "metrics.json").read_text())
    # centroid fine-tuning distils from the dense control with stage 02's terms, every step (issue 33)
    d = m["shared"]["distillation"]
    assert d["steps"] == SMOKE["03"]["FT_ITER"] and d["weights"] == {"cls": 1.0, "rpn": 0.5, "fpn": 0.0}
    assert d["teacher_weights"].endswith("model_dense_control.pth") and d["teacher_s_per_step"] > 0
    for fig in ['bits_histogram.png', 'size_waterfall.png']:  # the teaching figures (issue 35), each the static form of a slider or a plot
        assert (stage / fig).stat().st_size > 5000, fig
    s = m["shared"]
    assert s["bit_exact"] is True
    assert m["reference_ap50"] == json.loads((run_dir / "02_prune" / "metrics.json").read_text())["reference_ap50"]
    assert s["extra_iterations_beyond_dense_control"] == 4
    # the files' numbers are reported on test, paired with stage 02's reference
    assert m["evaluation_split"] == "test"
    for key in ("shared", "int8"):
        r = m["reported"][key]
        assert r["split"] == "test" and len(r["delta_ap50_ci95"]) == 2
        assert r["delta_ap50"] == pytest.approx(r["AP50"] - m["reference_ap50"])
    # the model decoded from the file measures exactly like the one in memory
    assert s["from_file"]["AP50"] == s["after_finetune"]["AP50"]
    assert {r["init"] for r in m["inits"]} == {"linear", "density", "random"}
    assert {(r["layer_type"], r["bits"]) for r in m["bits_sweep"]} == {("conv", 3), ("conv", 8), ("fc", 3), ("fc", 8)}

    from wildlib import codec

    state = codec.load(stage / "model_shared.wlc")
    for v in m["variants"]:
        path = run_dir / v["file"]
        assert v["file_bytes"] == path.stat().st_size
        assert v["ratio"] == pytest.approx(v["dense_fp32_bytes"] / v["file_bytes"])
    shared = next(v for v in m["variants"] if v["file"] == "03_share/model_shared.wlc")
    assert shared["ratio"] > 5  # 50% sparse + 4-5 bit codes + entropy coding
    # at most 2^bits distinct nonzero values per shared layer
    w = state["backbone.bottom_up.m5.0.conv.0.0.weight"]  # a 1x1 (not depthwise) conv
    assert torch.unique(w[w != 0]).numel() <= 32


def test_04_prune_channels(smoke_run):
    run_dir = smoke_run("04")
    stage = run_dir / "04_prune_channels"
    m = json.loads((stage / "metrics.json").read_text())
    for fig in ['time_stack.png', 'latency_strips.png']:  # the teaching figures (issue 35), each the static form of a slider or a plot
        assert (stage / fig).stat().st_size > 5000, fig
    keys = {"name", "AP50", "AP", "latency_median_ms", "latency_p90_ms", "speedup", "macs", "params", "file_bytes"}
    keys |= {"speedup_cold", "delta_ap50", "delta_ap50_ci95", "non_inferior"}  # every row paired with the reference on valid
    assert all(keys <= set(v) for v in m["variants"]) and len(m["variants"]) == 14  # 13 + the QAT graph
    # the channel-pruned model learned from the dense control with 02's terms (the smoke 02 distils)
    taught = m["fine_tuning"]["distillation"]
    assert taught["weights"] == {"cls": SMOKE["02"]["DISTILL_CLS"], "rpn": SMOKE["02"]["DISTILL_RPN"], "fpn": 0.0}
    assert taught["steps"] == SMOKE["04"]["FT_ITER"] and taught["teacher_weights"].endswith("model_dense_control.pth")
    rows = {v["name"]: v for v in m["variants"]}
    for v in m["variants"]:
        assert v["latency_p90_ms"] >= v["latency_median_ms"] > 0 and v["macs"] > 0 and v["file_bytes"] > 0
    # the baseline timed side by side with itself: a fair protocol finds no speedup (a generous band
    # for 3 smoke turns; a protocol that timed the two models' passes differently lands outside it)
    assert 0.5 < rows["baseline (fp32, PyTorch)"]["speedup"] < 2.0
    assert m["baseline_latency_ms_median"] == m["variants"][0]["baseline_ms_median"]
    # the timing noise: the largest of the baseline's speedups against itself (warm, cold), and 1
    # quantization-aware fine-tuning: its weights on ONNX Runtime's int8 grid, paired with PTQ on valid (issue 33)
    q = m["qat"]
    assert q["iterations"] == SMOKE["04"]["QAT_ITER"] and q["on_grid"] is True and q["layers"] > 10
    assert q["against_post_training"]["split"] == "valid" and len(q["against_post_training"]["delta_ap50_ci95"]) == 2
    assert q["distillation"]["steps"] == SMOKE["04"]["QAT_ITER"] and "combined + QAT, one graph (int8, ONNX Runtime)" in rows
    me = rows["baseline (fp32, PyTorch)"]
    assert len(me["latency_runs_ms"]) == len(me["baseline_runs_ms"]) == SMOKE["04"]["LATENCY_RUNS"]
    assert min(me["latency_runs_ms"]) <= me["latency_median_ms"] <= max(me["latency_runs_ms"])
    assert m["speed_noise"] == pytest.approx(max(1.0, me["speedup"], 1 / me["speedup"], me["speedup_cold"],
                                                 1 / me["speedup_cold"]))
    passing = [r for r in rows.values() if r["AP50"] >= m["reference_ap50"] - 1.0 and r["speedup"] > m["speed_noise"]]
    if m["best_variant"] == "none":  # nothing beats the noise within 1 AP50
        assert not passing and m["best_speedup_within_1ap50_valid"] == 0.0
    else:  # the record names its pick, which carries the number, passes the rule and beats the noise
        best = rows[m["best_variant"]]
        assert best["speedup"] == m["best_speedup_within_1ap50_valid"] == max(r["speedup"] for r in passing)
    # each family pruned at the largest scanned ratio costing at most SCAN_DROP AP50 against the
    # baseline on valid, else kept whole: read from the scan's own table, not the library's picker
    scan = pd.read_csv(stage / "channel_scan.csv")
    base = rows["baseline (fp32, PyTorch)"]["AP50"]
    assert sorted(scan["family"]) == sorted(SMOKE["04"]["SCAN_FAMILIES"]) and base > 10  # a model that detects
    for family, g in scan.groupby("family"):
        ok = g[g["AP50"] >= base - SMOKE["04"]["SCAN_DROP"]]
        assert m["channel_ratios"][family] == (ok["ratio"].max() if len(ok) else 0.0), family
    assert m["widths"]["MODEL.FPN.OUT_CHANNELS"] == (32 if m["channel_ratios"]["fpn"] == 0.5 else 64)
    pruned = rows["channel-pruned + FT (fp32, PyTorch)"]
    assert pruned["params"] < rows["baseline (fp32, PyTorch)"]["params"] and pruned["macs"] < rows["baseline (fp32, PyTorch)"]["macs"]
    assert pruned["file_bytes"] == (stage / "model_final.pth").stat().st_size
    # the pruned model rebuilds from its own config + weights; the deployable reloads in a fresh process
    from wildlib import fast

    _, model = modeling.load_trained(stage)
    assert sum(p.numel() for p in model.parameters()) == pruned["params"]
    combined = rows["combined, one graph (int8, ONNX Runtime)"]
    assert m["variants"][-2] == combined  # the deployable: the one int8 graph, reloaded in a fresh process
    assert m["variants"][-1]["name"] == "combined + QAT, one graph (int8, ONNX Runtime)"  # then its QAT twin
    reloaded = m["reloaded"]
    assert reloaded["AP50"] == pytest.approx(combined["AP50"], abs=1e-6) and reloaded["file_bytes"] == combined["file_bytes"]
    assert reloaded["pid"] != m["variants"][0].get("pid")
    assert combined["file_bytes"] == fast.deploy_bytes(run_dir / m["deploy_dir"]) < pruned["file_bytes"]
    assert (run_dir / m["deploy_dir"] / fast.GRAPH_FILE).is_file()
    # the one graph is the combined model's architecture (its MACs counted on the same PyTorch twin);
    # that it computes the same boxes is tests/test_one_graph.py's (against detector_postprocess)
    two = rows["combined: channel-pruned + int8 + test-time (two graphs)"]
    assert rows["combined, one graph (fp32, ONNX Runtime)"]["macs"] == two["macs"] < rows["baseline (fp32, PyTorch)"]["macs"]
    # ONNX Runtime's settings were chosen on this machine, named with its CPU
    runtime = pd.read_csv(stage / "runtime_choice.csv")
    assert len(runtime) == 8 and m["runtime"]["cpu_model"] == runtime["cpu_model"][0]
    assert m["runtime"]["int8_format"] in ("qdq", "qoperator") and m["runtime"]["median_ms"] == runtime["median_ms"].min()
    # the goal's rule: the fastest row non-inferior on valid, scored on test, reloaded where it is one graph
    ni = [v for v in m["variants"] if v["non_inferior"]]
    assert all(v["non_inferior"] == (v["delta_ap50_ci95"][0] >= -1.0) for v in m["variants"])
    if not ni:
        assert m["best_non_inferior_variant"] == "none"
    else:  # the record names a pick that passed the rule
        assert rows[m["best_non_inferior_variant"]]["non_inferior"] is True
    if ni:
        assert m["best_on_test"]["split"] == m["evaluation_split"] and "delta_ap50_ci95" in m["best_on_test"]
        # the goal's number is the pick's speedup exactly when its test verdict is non-inferior
        expected = rows[m["best_non_inferior_variant"]]["speedup"] if m["best_on_test"]["non_inferior"] else 0.0
        assert m["best_speedup_non_inferior"] == expected
    if "one graph" in m["best_non_inferior_variant"]:  # reloaded in a fresh process and measured again
        assert m["best_reloaded"]["AP50"] == pytest.approx(rows[m["best_non_inferior_variant"]]["AP50"], abs=1e-6)
    # the reference's own grid: cfg's setting first, every row paired with the reference on valid
    grid = pd.read_csv(stage / "non_inferior_sweep.csv")
    assert (grid.iloc[0][["pre_nms", "post_nms", "min_size"]].tolist() == [500, 300, 240] and len(grid) == 2
            and {"delta_ap50", "non_inferior"} <= set(grid.columns))
    assert any(n.endswith("+ test-time, one graph (int8, ONNX Runtime)") and n != "dense + test-time, one graph "
               "(int8, ONNX Runtime)" for n in rows)
    dense_graph = rows["dense + test-time, one graph (int8, ONNX Runtime)"]
    assert dense_graph["params"] == rows["baseline (fp32, PyTorch)"]["params"]
    assert {"backbone", "roi_pooler", "Python around the session"} <= set(m["graph_profile_ms"])
    # section 2's test-time setting: per knob the cheapest swept value costing at most KNOB_DROP (0.5)
    # AP50 against the config's own setting (the sweep's first row), else the config's own value
    knobs = pd.read_csv(stage / "test_time_sweep.csv")
    own = knobs.iloc[0]
    assert own[["pre_nms", "post_nms", "detections", "min_size"]].tolist() == [500, 300, 100, 240]
    for knob, key in (("proposals", "post_nms"), ("detections", "detections"), ("input size", "min_size")):
        within = knobs[(knobs["knob"] == knob) & (knobs["AP50"] >= own["AP50"] - 0.5)]
        assert m["test_time"][key] == min([own[key], *within[key]]), knob
    swept = pd.read_csv(stage / "combined_sweep.csv")  # the config's size (240) and section 2's, 2 settings each
    sizes = sorted({240, m["test_time"]["min_size"]})
    assert sorted(set(swept["min_size"])) == sizes and len(swept) == 2 * len(sizes)
    assert m["combined_test_time"] in swept[["pre_nms", "post_nms", "detections", "min_size"]].to_dict("records")
    assert m["widths"]["MODEL.ROI_BOX_HEAD.FC_DIM"] == (256 if m["channel_ratios"]["box_head"] == 0.5 else 512)
    for f in ("variants.csv", "test_time_sweep.csv", "channel_scan.csv", "combined_sweep.csv", "speed_vs_ap50.png", "channel_scan.png",
              "graph_profile.csv",
              "test_time_sweep.png", "profile_baseline.png", "detectron2.yaml"):
        assert (stage / f).exists(), f


def test_the_detect_command_gives_the_deployables_own_detections(smoke_run, smoke_data, tmp_path):
    """wildlib.detect (ONNX Runtime, Pillow, numpy: no Detectron2) on test photos finds exactly what
    04's deployable finds when Detectron2 reads and resizes them (the detections 05 scores)."""
    from wildlib import data, detect, evaluate, fast

    run_dir = smoke_run("04")
    m = json.loads((run_dir / "04_prune_channels" / "metrics.json").read_text())
    deploy = run_dir / m["deploy_dir"]
    manifest = json.loads((deploy / fast.MANIFEST).read_text())
    records = data.load_split(smoke_data, "test")[:8]
    assert manifest["input"]["classes"] == list(json.loads((run_dir / "00_explore" / "metrics.json").read_text())
                                                ["classes"])
    s = detect.run([r["file_name"] for r in records], deploy, tmp_path / "out", progress=False, tile="off", score=0.0)
    assert s["images"] == len(records) and s["skipped"] == []
    found = json.loads((tmp_path / "out" / "detections.json").read_text())["detections"]
    cfg, model = fast.load(deploy)
    with torch.no_grad():
        expected = model(evaluate.load_inputs(cfg, records))
    for i, out in enumerate(expected):
        inst = out["instances"]
        mine = [d for d in found if d["image_id"] == i]
        assert len(mine) == len(inst), records[i]["file_name"]
        xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in mine)]).reshape(-1, 4)
        assert np.allclose(xyxy, inst.pred_boxes.tensor.numpy(), atol=1e-3)
        assert np.allclose([d["score"] for d in mine], inst.scores.numpy(), atol=1e-5)
        assert [d["category_id"] for d in mine] == inst.pred_classes.tolist()
    # --benchmark --baseline: the graph and the PyTorch baseline side by side, in a process of their own
    photos = [r["file_name"] for r in records[:3]]
    rc = detect.main([*photos, "--model", str(deploy), "--out", str(tmp_path / "bench"), "--quiet", "--benchmark",
                      "--benchmark-runs", "3", "--baseline", str(run_dir / "01_baseline"), "--threads", "1"])
    side = json.loads((tmp_path / "bench" / "summary.json").read_text())["benchmark_vs_pytorch"]
    assert rc == 0 and "error" not in side, side
    assert side["images"] == photos and side["runs"] == 3 and side["threads"] == 1
    assert side["baseline_dir"] == str(run_dir / "01_baseline") and side["deploy"] == str(deploy)
    assert side["baseline_ms_median"] > 0 and side["variant_ms_median"] > 0 and side["speedup"] > 0


def test_05_evaluate(smoke_run, smoke_data):
    run_dir = smoke_run("05")
    stage = run_dir / "05_evaluate"
    m = json.loads((stage / "metrics.json").read_text())
    for fig in ['per_class_ap.png', 'detections_viewer.png']:  # the teaching figures (issue 35), each the static form of a slider or a plot
        assert (stage / fig).stat().st_size > 5000, fig
    rows = {r["name"]: r for r in m["variants"]}
    channel_m = json.loads((run_dir / "04_prune_channels" / "metrics.json").read_text())
    own_ni = channel_m["best_deploy_dir"] not in (None, channel_m["deploy_dir"])  # 04's goal variant, its own folder
    assert len(rows) == 7 + own_ni and {"baseline", "dense control", "int8", "channel-pruned + int8 + test-time (04)"} <= set(rows)
    # the deployable on N_SHOW test photos through wildlib.detect, drawn from the files it wrote
    found = json.loads((stage / "detect" / "summary.json").read_text())
    assert found["images"] == SMOKE["05"]["N_SHOW"] and found["skipped"] == [] and (stage / "detect.png").is_file()
    assert found["model"] == str(run_dir / channel_m["deploy_dir"]) and len(found["drawn"]) == found["images"]
    # survey mosaics of SURVEY_GRID^2 test images, detected whole and in slices by the same command
    survey = pd.read_csv(stage / "survey_slices.csv").set_index("name")
    size = json.loads((run_dir / channel_m["deploy_dir"] / "manifest.json").read_text())["input"]["min_size"]
    assert list(survey.index) == ["whole", "slices, auto", f"slices of {size} px"]
    assert (survey["images"] == SMOKE["05"]["SURVEY_IMAGES"]).all() and survey["delta_ap50"].isna().tolist() == [True, False, False]
    from wildlib import data

    grid = SMOKE["05"]["SURVEY_GRID"]
    cells = data.load_split(smoke_data, "test")[: grid * grid * SMOKE["05"]["SURVEY_IMAGES"]]
    gt = json.loads((stage / "survey" / "gt.json").read_text())
    assert len(gt["images"]) == SMOKE["05"]["SURVEY_IMAGES"] and len(gt["annotations"]) == sum(len(r["annotations"]) for r in cells)
    assert gt["images"][0]["width"] == grid * max(r["width"] for r in cells[: grid * grid])
    tiled = {name: json.loads((stage / "survey" / slug / "summary.json").read_text())["tiled_images"]
             for name, slug in (("whole", "whole"), ("sliced", f"slices-of-{size}-px"))}
    assert tiled == {"whole": 0, "sliced": SMOKE["05"]["SURVEY_IMAGES"]} and m["survey_slices"][0]["name"] == "whole"
    prune_metrics = json.loads((run_dir / "02_prune" / "metrics.json").read_text())
    assert m["reference_ap50"] == prune_metrics["reference_ap50"]
    # the headlines pick among the compressed variants: never the reference or the baseline itself
    assert {m["best_variant"], m["fastest_variant"]}.isdisjoint({"baseline", "dense control"})
    # the models 02-04 scored are taken from their detections once reloaded they reproduce them
    assert {r["scored_from"] for r in rows.values()} <= {"stored, reload checked", "evaluated"}
    assert rows["baseline"]["scored_from"] == "stored, reload checked"
    from wildlib import prune, stages

    pick = m["oneshot_pick"]
    stored = stages.stored_detections(run_dir, prune.pick_name(pick) if pick else None)
    assert set(rows) <= set(stored) and (stages.NON_INFERIOR_NAME in rows) == own_ni  # names agree
    if own_ni:  # 04 scored it on test and wrote its detections; 05 reloads it and takes them
        assert rows[stages.NON_INFERIOR_NAME]["AP50"] == pytest.approx(channel_m["best_on_test"]["AP50"], abs=1e-6)
    assert rows["baseline"]["AP50"] == pytest.approx(prune_metrics["baseline"]["AP50"], abs=1e-9)
    compressed = [r for n, r in rows.items() if n not in ("baseline", "dense control")]
    if m["best_variant"] == "none":  # a smoke model may keep no compressed variant within 1 AP50
        assert not any(r["within_1ap50"] for r in compressed) and m["best_compression_ratio_within_1ap50"] == 0.0
    else:  # the record names its picks, which carry the numbers and pass the rule
        smallest = rows[m["best_variant"]]
        assert smallest["ratio"] == m["best_compression_ratio_within_1ap50"] == max(
            r["ratio"] for r in compressed if r["within_1ap50"]) and smallest["AP50"] >= m["reference_ap50"] - 1.0
    for r in rows.values():
        assert r["latency_median_ms"] > 0 and r["latency_p90_ms"] >= r["latency_median_ms"]
        assert r["file_bytes"] > 0 and r["nonzero"] <= r["params"]
    assert 0.5 < rows["baseline"]["speedup"] < 2.0  # the baseline side by side with itself: no speedup
    me = rows["baseline"]  # the pickers pass over what timing alone gives the baseline against itself
    assert m["speed_noise"] == pytest.approx(max(1.0, me["speedup"], 1 / me["speedup"], me["speedup_cold"],
                                                 1 / me["speedup_cold"]))
    fast = [r for n, r in rows.items() if n not in ("baseline", "dense control") and r["within_1ap50"]
            and r["speedup"] > m["speed_noise"]]
    assert m["best_speedup_within_1ap50"] == (max(r["speedup"] for r in fast) if fast else 0.0)
    if fast:
        assert rows[m["fastest_variant"]]["speedup"] == m["best_speedup_within_1ap50"]
    deployed = next(v for v in channel_m["variants"] if v["name"] == "combined, one graph (int8, ONNX Runtime)")
    assert rows["channel-pruned + int8 + test-time (04)"]["file_bytes"] == deployed["file_bytes"]
    assert "# wildlib evaluation report" in (stage / "report.md").read_text()
    for f in ("variants.csv", "per_class_ap.csv", "paper_vs_ours.csv", "pareto.png", "baseline_vs_compressed.png"):
        assert (stage / f).exists(), f


def test_report_is_written_from_the_run(smoke_run, tmp_path):
    """The README's results section comes from the run's files: the numbers in it are the
    metrics' numbers, and it names the commit the run came from."""
    from wildlib import report

    run_dir = smoke_run("05")
    text = report.results_markdown(run_dir)
    base = json.loads((run_dir / "01_baseline" / "metrics.json").read_text())
    prune_m = json.loads((run_dir / "02_prune" / "metrics.json").read_text())
    assert f"AP50 {base['bbox']['AP50']:.2f}" in text
    assert f"AP50 {prune_m['reference_ap50']:.2f} [" in text
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["commit"] is None or info["commit"][:10] in text
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.BEGIN}\nOLD-SECTION\n{report.END}\nrest\n")
    report.update_readme(readme, text)
    new = readme.read_text()
    assert new.startswith("intro\n") and new.endswith("rest\n") and "OLD-SECTION" not in new and text in new
    # one run, one headline: every line of the README's block is a line of docs/results.md (issue 35)
    head = report.headline_markdown(run_dir).splitlines()
    body = set(report.results_markdown(run_dir).splitlines())
    assert [ln for ln in head[:-1] if ln and not ln.startswith("![") and ln not in body] == []
    assert any("make run" in ln for ln in head)
    speed = report.speed_markdown(run_dir).splitlines()  # docs/results-speed.md: the same run's 04 and 05
    assert [ln for ln in speed if ln and ln not in body] == [] and any("one graph" in ln for ln in speed)
    copies = report.copy_figures(run_dir, tmp_path / "figures")  # the README shows the run's figures
    assert sorted(p.name for p in copies.values()) == [f"{run_dir.name}-pareto.png", f"{run_dir.name}-speed_vs_ap50.png"]
    shown = report.headline_markdown(run_dir, figures={c: "x/" + p.name for c, p in copies.items()})
    assert shown.count("![") == 2 and f"(x/{run_dir.name}-pareto.png)" in shown


CHROMIUM = "/usr/bin/chromium"  # Debian's chromium package: .ci/run installs it


def _screenshot(html, png, size=(1200, 3000)) -> None:
    """``html`` drawn by headless Chromium into ``png``: the flags the machine needs (no sandbox as
    root, no GPU, no background connections to a closed network), a fresh profile."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", "--hide-scrollbars",
                        f"--screenshot={png}", html.as_uri()], check=True, capture_output=True, timeout=120)


def test_the_run_reads_without_running_it(smoke_run, tmp_path):
    """make report renders the executed notebooks to HTML; Chromium draws 02's page with its
    figures, the slider's static figure among them (issue 35: read it without running it)."""
    import os
    import shutil

    from PIL import Image

    from wildlib import report

    run_dir = smoke_run("02")
    pages = report.render_html(run_dir)
    page = run_dir / "html" / "02_prune_magnitude.html"
    assert page in pages and page.stat().st_size > 100_000
    text = page.read_text()
    assert text.count("data:image/png;base64") >= 4  # the figures, embedded
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")):
        pytest.skip(f"{CHROMIUM} is not installed (.ci/run installs Debian's chromium)")
    _screenshot(page, tmp_path / "page.png")
    with Image.open(tmp_path / "page.png") as im:
        px = np.asarray(im.convert("L"))
    assert px.shape[0] > 1000
    assert (px < 200).mean() > 0.02 and len(np.unique(px)) > 50  # text and figures drawn, not a blank page
