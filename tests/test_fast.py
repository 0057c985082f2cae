"""ONNX Runtime inference (wildlib.fast): exported graphs compute what the PyTorch modules compute,
int8 graphs are real int8, a deployable folder reloads to the same predictions, and damaged files
are refused with their name."""
import copy
import json
import shutil
import types

import pandas as pd
import pytest
import torch

from wildlib import channels, config, evaluate, fast, modeling, speed
from wildlib.modeling import WeightsError

from .test_channels import _randomised


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = config.get_config("mobilenet_fpn_cpu", {"MODEL.MOBILENET.PRETRAINED": "none"})
    torch.manual_seed(0)
    model = channels.prune(_randomised(modeling.build_model(cfg)), {"m5": 0.5, "box_head": 0.5})
    cfg = channels.config_for(cfg, model)
    g = torch.Generator().manual_seed(1)
    images = [{"image": torch.randint(0, 255, (3, 120, 160), generator=g, dtype=torch.uint8).float(),
               "height": 120, "width": 160} for _ in range(3)]
    out = tmp_path_factory.mktemp("fast")
    fp32 = fast.export(model, images[0], out / "fp32")
    int8 = fast.quantize(fp32, fast.calibration_data(model, images), out / "int8")
    fast.save(out / "deploy", fast.with_test_time(cfg, 100, 50, 20), model, int8, threads=1)
    return cfg, model, images, fp32, int8, out


def test_fp32_graphs_compute_what_the_modules_compute(setup):
    cfg, model, images, fp32, _, _ = setup
    ort_model = fast.attach(model, fp32, threads=1)
    x = model.preprocess_image([images[1]]).tensor
    with torch.no_grad():
        want = model.backbone(x)
        got = ort_model.backbone(x)
        assert set(got) == set(want)
        for k in want:
            assert torch.allclose(got[k], want[k], atol=1e-3, rtol=1e-3), k
        levels = model.proposal_generator.in_features
        # the RPN head runs inside the backbone's graph and is handed over for those features
        ref = model.proposal_generator.rpn_head([want[f] for f in levels])
        for a, b in zip(ref, ort_model.proposal_generator.rpn_head([got[f] for f in levels])):
            for u, v in zip(a, b):
                assert torch.allclose(u, v, atol=1e-3, rtol=1e-3)
        with pytest.raises(RuntimeError, match="inside the backbone's graph"):
            ort_model.proposal_generator.rpn_head([want[f] for f in levels])
        pooled = torch.randn(5, 64, 7, 7)
        assert torch.allclose(model.roi_heads.box_head(pooled), ort_model.roi_heads.box_head(pooled), atol=1e-3)
        assert ort_model.roi_heads.box_head(pooled[:0]).shape == (0, 256)  # no proposals: no ORT call
        out = ort_model([images[1]])[0]["instances"]  # the whole detector runs through it
    assert out.pred_boxes.tensor.shape[1] == 4


def test_int8_graphs_hold_int8_weights_and_stay_close(setup):
    import onnx  # heavy optional dependency (ONNX Runtime's), loaded where used as in wildlib.fast

    _, model, images, fp32, int8, _ = setup
    for name in fast.GRAPHS:
        proto = onnx.load(str(int8[name]))
        ops = {n.op_type for n in proto.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, name
        assert any(t.data_type == onnx.TensorProto.INT8 for t in proto.graph.initializer), name
        assert int8[name].stat().st_size < 0.5 * fp32[name].stat().st_size, name
    q = fast.attach(model, int8, threads=1)
    x = model.preprocess_image([images[2]]).tensor
    with torch.no_grad():
        want, got = model.backbone(x), q.backbone(x)
    for k in want:  # quantization error, not garbage: strongly correlated with fp32
        c = torch.corrcoef(torch.stack([want[k].flatten(), got[k].flatten()]))[0, 1]
        assert c > 0.95, (k, float(c))


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_every_calibration_method_takes_rows_of_different_shapes(method, tmp_path):
    # a box head sees as many proposals as each image kept: ONNX Runtime's histogram calibrators
    # stack the rows' tensors and failed on that ("inhomogeneous shape") before quantize_file
    # collected them one row at a time
    import onnx  # heavy optional dependency (ONNX Runtime's), loaded where used as in wildlib.fast

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)).eval()
    src = tmp_path / "net.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 8, 8), str(src), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
    g = torch.Generator().manual_seed(0)
    rows = [{"x": torch.randn(n, 3, 8, 8, generator=g).numpy()} for n in (1, 3, 2, 5)]
    out = fast.graphs.quantize_file(src, tmp_path / f"{method}.onnx", rows, method=method)
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node)


def test_deployable_folder_reloads_to_the_same_predictions(setup):
    cfg, model, images, _, int8, out = setup
    mem = fast.test_time(fast.attach(model, int8, threads=1), 100, 50, 20)
    folder = out / "deploy"
    loaded_cfg, loaded = fast.load(folder)
    assert fast.test_time_of(loaded) == {"pre_nms": 100, "post_nms": 50, "detections": 20}
    assert loaded_cfg.MODEL.ROI_BOX_HEAD.FC_DIM == 256
    with torch.no_grad():
        for im in images:
            a, b = mem([im])[0]["instances"], loaded([im])[0]["instances"]
            assert len(a) == len(b) <= 20 and torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
            assert torch.equal(a.scores, b.scores)
    manifest = json.loads((folder / fast.MANIFEST).read_text())
    assert fast.deploy_bytes(folder) == sum(f["bytes"] for f in manifest["files"].values()) + (
        folder / fast.MANIFEST).stat().st_size


def _copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "copy")


def _fix_manifest(folder, name, **extra):
    manifest = json.loads((folder / fast.MANIFEST).read_text())
    manifest["files"][name] = {"bytes": (folder / name).stat().st_size, "sha256": modeling.sha256_file(folder / name)}
    manifest.update(extra)
    (folder / fast.MANIFEST).write_text(json.dumps(manifest))


def test_truncated_int8_file_is_refused_naming_it(setup, tmp_path):
    *_, out = setup
    folder = _copy(out / "deploy", tmp_path)
    path = folder / "backbone.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"backbone\.onnx: .*bytes, the manifest says"):
        fast.load(folder)
    _fix_manifest(folder, "backbone.onnx")  # a manifest that agrees does not make the file whole
    with pytest.raises(WeightsError, match=r"backbone\.onnx: not a valid ONNX model"):
        fast.load(folder)
    with pytest.raises(WeightsError, match=r"backbone\.onnx: not a valid ONNX model"):
        fast.OrtGraph(path)  # without a manifest, ONNX's own parser refuses it


def test_altered_file_and_misfit_predictor_are_refused(setup, tmp_path):
    *_, out = setup
    folder = _copy(out / "deploy", tmp_path)
    cfg_text = (folder / fast.CONFIG).read_text()
    (folder / fast.CONFIG).write_text(cfg_text.replace("FC_DIM: 256", "FC_DIM: 512"))
    with pytest.raises(WeightsError, match=r"detectron2\.yaml: .*bytes|detectron2\.yaml: its SHA-256"):
        fast.load(folder)
    # a consistent manifest does not make a misfit file fit: the predictor's shapes are checked
    _fix_manifest(folder, fast.CONFIG)
    with pytest.raises(WeightsError, match=r"predictor\.pth: the box predictor's weights do not fit"):
        fast.load(folder)


def test_deploy_config_and_manifest_are_checked(setup, tmp_path):
    *_, out = setup
    folder = _copy(out / "deploy", tmp_path)
    text = (folder / fast.CONFIG).read_text()
    (folder / fast.CONFIG).write_text("_BASE_: https://example.com/other.yaml\n" + text)
    _fix_manifest(folder, fast.CONFIG)
    with pytest.raises(config.ConfigError, match=r"detectron2\.yaml: .*no _BASE_"):
        fast.load(folder)
    (folder / fast.CONFIG).write_text(text.replace("DEVICE: cpu", "DEVICE: cuda"))
    _fix_manifest(folder, fast.CONFIG, threads=10**6)
    with pytest.raises(WeightsError, match=r"manifest\.json: threads must be an integer"):
        fast.load(folder)
    _fix_manifest(folder, fast.CONFIG, threads=1)
    cfg, model = fast.load(folder)  # a GPU config still runs where ONNX Runtime runs: the CPU
    assert cfg.MODEL.DEVICE == "cpu" and next(model.parameters()).device.type == "cpu"


def test_onnx_file_of_another_model_is_refused(setup, tmp_path):
    cfg, model, images, fp32, _, _ = setup
    other = channels.prune(model, {"box_head": 0.5})  # box features 128, not 256
    files = fast.export(other, images[0], tmp_path / "other")
    with pytest.raises(WeightsError, match=r"other/box_head\.onnx: takes \['pooled'\] and gives \[\('box_features', 128\)\]"):
        fast.attach(model, {"backbone": fp32["backbone"], "box_head": files["box_head"]})


def test_onnx_with_external_data_or_foreign_ops_is_refused(setup, tmp_path):
    import onnx  # heavy optional dependency (ONNX Runtime's), loaded where used as in wildlib.fast
    from onnx import helper

    _, _, _, fp32, _, _ = setup
    proto = onnx.load(str(fp32["box_head"]))
    onnx.save(proto, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    with pytest.raises(WeightsError, match=r"ext\.onnx: refers to external data"):
        fast.check_onnx(tmp_path / "ext.onnx")
    node = helper.make_node("Evil", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]),
              str(tmp_path / "foreign.onnx"))
    with pytest.raises(WeightsError, match=r"foreign\.onnx: (uses operators from \['com\.example'\]|not a valid)"):
        fast.check_onnx(tmp_path / "foreign.onnx")


def test_side_by_side_times_the_second_pass_of_each_turn_on_consecutive_images(monkeypatch):
    """A fake clock that only the fake models move: every pass costs a known time, more when it
    follows the other model (cold caches), so the medians, p90s and speedups are known in advance,
    and each model's images are recorded to check the documented protocol."""
    now = [0.0]
    monkeypatch.setattr(evaluate, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    calls = []
    # ms per pass: (after the other model, after itself); the variant's image "v2" costs 5 ms more
    cost = {"base": (30.0, 10.0), "var": (20.0, 4.0)}

    class Fake:
        def __init__(self, name):
            self.name = name

        def eval(self):
            return self

        def __call__(self, batch):
            (x,) = batch
            cold = not calls or calls[-1][0] != self.name
            calls.append((self.name, x["image"]))
            now[0] += (cost[self.name][0 if cold else 1] + (5.0 if x["image"] == "v2" else 0.0)) / 1000

    inputs = [{"image": k} for k in (0, 1, 2)]
    own = [{"image": f"v{k}"} for k in (0, 1, 2)]
    out = evaluate.side_by_side(Fake("base"), Fake("var"), inputs, variant_inputs=own, runs=4, warmup=2)
    # warm-up: one pass each in turns on image i; turn i: the baseline on images i, i+1, then the
    # variant on its own images i, i+1 (every first pass follows the other model's)
    assert calls == [("base", 0), ("var", "v0"), ("base", 1), ("var", "v1"),
                     ("base", 0), ("base", 1), ("var", "v0"), ("var", "v1"),
                     ("base", 1), ("base", 2), ("var", "v1"), ("var", "v2"),
                     ("base", 2), ("base", 0), ("var", "v2"), ("var", "v0"),
                     ("base", 0), ("base", 1), ("var", "v0"), ("var", "v1")]
    # the timed (second) passes: baseline 10 ms each; variant 4, 9 (on v2), 4, 4 ms
    assert out["baseline_ms_median"] == pytest.approx(10.0) and out["baseline_ms_p90"] == pytest.approx(10.0)
    assert out["variant_ms_median"] == pytest.approx(4.0)
    assert out["variant_ms_p90"] == pytest.approx(7.5)  # 4 + 0.7 x 5: numpy's linear p90 of [4, 4, 4, 9]
    assert out["speedup"] == pytest.approx(2.5)
    # the first passes: baseline 30 ms each; variant 20, 20, 25 (on v2), 20 ms
    assert out["baseline_cold_ms_median"] == pytest.approx(30.0)
    assert out["variant_cold_ms_median"] == pytest.approx(20.0)
    assert out["variant_cold_ms_p90"] == pytest.approx(23.5)
    assert out["speedup_cold"] == pytest.approx(1.5)
    assert (out["runs"], out["warmup"]) == (4, 2)


def test_pick_test_time_takes_the_cheapest_setting_within_the_drop():
    cfg = config.get_config("mobilenet_fpn_cpu")
    settings = speed.knob_settings(cfg, [[500, 300], [200, 100], [100, 50]], [100, 20], [240, 208])
    ap = {(500, 300): 95.0, (200, 100): 94.6, (100, 50): 94.0}
    rows = [{**s, "AP50": ap.get((s["pre_nms"], s["post_nms"]), 95.0) if s["knob"] == "proposals"
             else (94.9 if s["knob"] == "detections" else (95.0 if s["min_size"] == 240 else 90.0))} for s in settings]
    # a knob may cost 0.5 AP50 against the config's own setting (95.0), wherever the reference is
    picked = speed.pick_test_time(pd.DataFrame(rows), cfg, 0.5)
    assert picked == {"pre_nms": 200, "post_nms": 100, "detections": 20, "min_size": 240}
    with pytest.raises(ValueError, match="first row"):
        speed.pick_test_time(pd.DataFrame(rows[1:]), cfg, 0.5)


def test_lean_rpn_and_cached_anchors_give_detectron2s_proposals(setup):
    cfg, model, images, *_ = setup
    lean = fast.lean(copy.deepcopy(model))
    assert type(lean.proposal_generator).__name__ == "TopKFirstRPN"
    with torch.no_grad():
        for im in images:
            x = model.preprocess_image([im])
            feats = model.backbone(x.tensor)
            want = model.proposal_generator(x, feats)[0][0]
            got = lean.proposal_generator(x, feats)[0][0]
            assert len(want) == len(got) > 0
            assert torch.equal(want.proposal_boxes.tensor, got.proposal_boxes.tensor)
            assert torch.equal(want.objectness_logits, got.objectness_logits)
    # a config naming them builds them
    built = modeling.build_model(fast.lean_config(cfg))
    assert type(built.proposal_generator.anchor_generator).__name__ == "CachedAnchorGenerator"


def test_lean_rpn_keeps_detectron2s_choice_among_tied_scores(setup):
    """int8 logits take few values, so ties at the top-k cut are common: the same anchors must win."""
    _, model, images, *_ = setup
    lean = fast.lean(copy.deepcopy(model))
    rpn, lean_rpn = model.proposal_generator, lean.proposal_generator
    x = model.preprocess_image([images[0]])
    saved = rpn.pre_nms_topk[False]
    with torch.no_grad():
        feats = [model.backbone(x.tensor)[f] for f in rpn.in_features]
        anchors = rpn.anchor_generator(feats)
        logits, deltas = rpn.rpn_head(feats)
        logits = [(lg.permute(0, 2, 3, 1).flatten(1) * 4).round() / 4 for lg in logits]  # coarse: many ties
        deltas = [d.view(d.shape[0], -1, 4, d.shape[-2], d.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2)
                  for d in deltas]
        for pre in (50, 1000):
            rpn.pre_nms_topk[False] = lean_rpn.pre_nms_topk[False] = pre
            want = rpn.predict_proposals(anchors, logits, deltas, x.image_sizes)[0]
            got = lean_rpn.predict_proposals(anchors, logits, deltas, x.image_sizes)[0]
            assert torch.equal(want.proposal_boxes.tensor, got.proposal_boxes.tensor)
            assert torch.equal(want.objectness_logits, got.objectness_logits)
    rpn.pre_nms_topk[False] = saved  # the module-scoped model goes back as it was


def test_cached_anchors_follow_the_input_size_and_are_copies(setup):
    _, model, *_ = setup
    gen = fast.lean(copy.deepcopy(model)).proposal_generator.anchor_generator
    ref = model.proposal_generator.anchor_generator
    for h, w in ((32, 40), (16, 20), (32, 40)):
        feats = [torch.zeros(1, 8, h // 2 ** k, w // 2 ** k) for k in range(5)]
        got, want = gen(feats), ref(feats)
        assert all(torch.equal(a.tensor, b.tensor) for a, b in zip(got, want))
        got[0].tensor.zero_()  # a caller clipping in place must not change the next call's anchors
    assert torch.equal(gen(feats)[0].tensor, ref(feats)[0].tensor)


def test_grid_settings_put_the_configs_own_first_once():
    cfg = config.get_config("mobilenet_fpn_cpu")
    grid = speed.grid_settings(cfg, [[500, 300], [100, 100]], [240, 208])
    keys = [(s["pre_nms"], s["post_nms"], s["min_size"]) for s in grid]
    assert keys[0] == (500, 300, int(cfg.INPUT.MIN_SIZE_TEST)) == (500, 300, 240)
    assert sorted(keys[1:]) == [(100, 100, 208), (100, 100, 240), (500, 300, 208)]  # no duplicate of the first
    assert {s["detections"] for s in grid} == {int(cfg.TEST.DETECTIONS_PER_IMAGE)}


def test_fastest_non_inferior_takes_only_non_inferior_settings():
    sweep = pd.DataFrame([
        {"pre_nms": 500, "post_nms": 300, "detections": 100, "min_size": 240, "latency_median_ms": 40.0, "non_inferior": True},
        {"pre_nms": 100, "post_nms": 100, "detections": 100, "min_size": 240, "latency_median_ms": 30.0, "non_inferior": True},
        {"pre_nms": 100, "post_nms": 50, "detections": 100, "min_size": 208, "latency_median_ms": 20.0, "non_inferior": False},
    ])
    assert speed.fastest_non_inferior(sweep) == {"pre_nms": 100, "post_nms": 100, "detections": 100, "min_size": 240}
    assert speed.fastest_non_inferior(sweep.assign(non_inferior=False)) is None
