"""The whole detector in one ONNX graph (wildlib.fast.one_graph): it gives the PyTorch model's boxes,
its int8 twin holds int8 kernels, its deployable folder reloads to the same predictions and
refuses damaged files by name; the runtime benchmark and the per-part profile of the graph."""
import json
import shutil

import numpy as np
import pytest
import torch

from wildlib import channels, config, evaluate, fast, modeling, speed
from wildlib.modeling import WeightsError

from .test_channels import _randomised
from .test_stored_detections import NoisyOracle, seals_and_rocks

CANVAS = (128, 160)
BOX_TOL = 1e-3   # pixels: the fp32 graph against the PyTorch model
SCORE_TOL = 1e-5


def _images(n, size=CANVAS, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 255, (3, *size), generator=g, dtype=torch.uint8).float(),
             "height": size[0] * 2, "width": size[1] * 2} for _ in range(n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = config.get_config("mobilenet_fpn_cpu", {"MODEL.MOBILENET.PRETRAINED": "none"})
    torch.manual_seed(0)
    model = channels.prune(_randomised(modeling.build_model(cfg)), {"m5": 0.5, "fpn": 0.5, "box_head": 0.5})
    model = fast.test_time(model.eval(), 200, 60, 30)
    cfg = fast.with_test_time(channels.config_for(cfg, model), 200, 60, 30)
    out = tmp_path_factory.mktemp("one_graph")
    fp32 = fast.export_graph(model, CANVAS, out / "fp32.onnx")
    int8 = fast.quantize_graph(fp32, fast.graph_inputs(_images(3, seed=5), CANVAS, model.pixel_mean), out / "int8.onnx")
    settings = fast.RuntimeSettings(threads=1)
    deploy = fast.save_graph(out / "deploy", cfg, int8, CANVAS, settings)
    return cfg, model, fp32, int8, deploy, settings


def _same(a, b):
    """Two detectors' Instances: same count, boxes within BOX_TOL px, scores within SCORE_TOL, same classes."""
    assert len(a) == len(b) > 0
    assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=BOX_TOL, rtol=0)
    assert torch.allclose(a.scores, b.scores, atol=SCORE_TOL, rtol=0)
    assert torch.equal(a.pred_classes, b.pred_classes)


def test_one_graph_gives_the_pytorch_models_boxes(setup):
    _, model, fp32, _, _, settings = setup
    one = fast.OneGraphDetector.from_file(fp32, CANVAS, model.pixel_mean, settings=settings)
    with torch.no_grad():
        for im in _images(3):
            want, got = model([im])[0]["instances"], one([im])[0]["instances"]
            _same(want, got)
            assert got.image_size == (im["height"], im["width"])  # rescaled to the original, as Detectron2 does


def test_the_graph_holds_roialign_and_nms_and_nothing_else_runs_in_pytorch(setup):
    import onnx

    _, _, fp32, int8, _, _ = setup
    ops = {n.op_type for n in onnx.load(str(fp32)).graph.node}
    assert {"RoiAlign", "NonMaxSuppression", "TopK", "Conv", "Gemm", "Softmax"} <= ops
    proto = onnx.load(str(int8))
    assert any(t.data_type == onnx.TensorProto.INT8 for t in proto.graph.initializer)
    quantized = {n.name for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    assert quantized and not any("/detections/" in n or "/rpn_select/" in n or "/pooler/" in n for n in quantized)
    # every node belongs to a part of the detector, NMS and ROIAlign included
    parts = {n.name: fast.graph_part_of(n.name) for n in onnx.load(str(fp32)).graph.node}
    assert {parts[n.name] for n in onnx.load(str(fp32)).graph.node if n.op_type == "RoiAlign"} == {"roi_pooler"}
    assert {parts[n.name] for n in onnx.load(str(fp32)).graph.node if n.op_type == "NonMaxSuppression"} == {
        "rpn", "roi_other"}


def test_int8_graph_stays_close_to_fp32(setup):
    _, model, fp32, int8, _, settings = setup
    a = fast.OneGraphDetector.from_file(fp32, CANVAS, model.pixel_mean, settings=settings)
    b = fast.OneGraphDetector.from_file(int8, CANVAS, model.pixel_mean, settings=settings)
    im = _images(1, seed=9)
    fa, fb = a.graph.session.run(None, a.feed(im[0])), b.graph.session.run(None, b.feed(im[0]))
    assert len(fb[0]) > 0 and fb[0].shape[1] == 4 and fb[2].dtype == np.int64
    # quantization error, not garbage: the best detection's box overlaps the fp32 one
    from torchvision.ops import box_iou
    assert float(box_iou(torch.from_numpy(fa[0][:1]), torch.from_numpy(fb[0]))[0].max()) > 0.5


def test_small_images_are_padded_large_ones_refused_and_no_detection_is_fine(setup, tmp_path):
    _, model, fp32, _, _, settings = setup
    one = fast.OneGraphDetector.from_file(fp32, CANVAS, model.pixel_mean, settings=settings)
    out = one(_images(1, size=(96, 128)))[0]["instances"]
    assert out.image_size == (192, 256) and (out.pred_boxes.tensor[:, 2] <= 256 + 1e-3).all()
    with pytest.raises(ValueError, match=r"160x160 does not fit this graph's canvas 128x160"):
        one(_images(1, size=(160, 160)))
    strict = fast.test_time(modeling.build_model(config.get_config(
        "mobilenet_fpn_cpu", {"MODEL.MOBILENET.PRETRAINED": "none", "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.999})).eval(),
        50, 10, 5)
    path = fast.export_graph(strict, CANVAS, tmp_path / "strict.onnx")
    none = fast.OneGraphDetector.from_file(path, CANVAS, strict.pixel_mean, settings=settings)(_images(1))[0]
    assert len(none["instances"]) == 0


def test_canvas_must_fit_the_backbone():
    cfg = config.get_config("mobilenet_fpn_cpu", {"MODEL.MOBILENET.PRETRAINED": "none"})
    assert fast.canvas_of(fast.with_test_time(cfg, 100, 50, 20, min_size=208)) == (224, 288)
    with pytest.raises(ValueError, match="multiple of the backbone's size divisibility 32"):
        fast.WholeDetector(modeling.build_model(cfg), (100, 160))


def test_one_graph_deployable_reloads_to_the_same_predictions(setup):
    cfg, model, _, int8, deploy, settings = setup
    mem = fast.OneGraphDetector.from_file(int8, CANVAS, model.pixel_mean, settings=settings)
    loaded_cfg, loaded = fast.load(deploy)
    assert isinstance(loaded, fast.OneGraphDetector) and loaded.canvas == CANVAS
    assert loaded.graph.settings == settings and loaded_cfg.MODEL.RPN.POST_NMS_TOPK_TEST == 60
    for im in _images(2):
        a, b = mem([im])[0]["instances"], loaded([im])[0]["instances"]
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)
    manifest = json.loads((deploy / fast.MANIFEST).read_text())
    assert manifest["kind"] == "one-graph" and fast.deploy_bytes(deploy) == sum(
        f["bytes"] for f in manifest["files"].values()) + (deploy / fast.MANIFEST).stat().st_size


def _fix(folder, **extra):
    manifest = json.loads((folder / fast.MANIFEST).read_text())
    f = folder / fast.GRAPH_FILE
    manifest["files"][fast.GRAPH_FILE] = {"bytes": f.stat().st_size, "sha256": modeling.sha256_file(f)}
    manifest.update(extra)
    (folder / fast.MANIFEST).write_text(json.dumps(manifest))


def test_truncated_or_damaged_graph_is_refused_naming_it(setup, tmp_path):
    *_, deploy, _ = setup
    folder = shutil.copytree(deploy, tmp_path / "copy")
    path = folder / fast.GRAPH_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match=r"detector\.onnx: \d+ bytes, the manifest says"):
        fast.load(folder)
    _fix(folder)  # a manifest that agrees does not make the file whole
    with pytest.raises(WeightsError, match=r"detector\.onnx: not a valid ONNX model"):
        fast.load(folder)
    shutil.copy(deploy / fast.MANIFEST, folder / fast.MANIFEST)
    path.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])  # same size, one byte flipped
    with pytest.raises(WeightsError, match=r"detector\.onnx: its SHA-256 does not match"):
        fast.load(folder)
    path.unlink()
    with pytest.raises(WeightsError, match=r"detector\.onnx: missing"):
        fast.load(folder)


def test_one_graph_manifest_is_checked(setup, tmp_path):
    *_, deploy, _ = setup
    folder = shutil.copytree(deploy, tmp_path / "copy")
    _fix(folder, canvas=[10**6, 160])
    with pytest.raises(WeightsError, match=r"manifest\.json: canvas must be"):
        fast.load(folder)
    _fix(folder, canvas=list(CANVAS), runtime={"threads": 1, "optimization": "reckless"})
    with pytest.raises(WeightsError, match=r"manifest\.json: not valid ONNX Runtime settings"):
        fast.load(folder)
    _fix(folder, canvas=list(CANVAS), runtime={"threads": 1, "optimization": "all", "execution": "sequential",
                                                 "inter_threads": 1, "command": "rm -rf /"})
    with pytest.raises(WeightsError, match=r"manifest\.json: not valid ONNX Runtime settings"):
        fast.load(folder)


def test_a_graph_of_another_kind_is_refused(setup, tmp_path):
    from wildlib.fast import graphs

    _, model, _, _, _, _ = setup
    files = graphs.export(model, _images(1)[0], tmp_path / "two")
    with pytest.raises(WeightsError, match=r"box_head\.onnx: takes \['pooled'\]"):
        fast.OneGraphDetector.from_file(files["box_head"], CANVAS, model.pixel_mean)


def test_runtime_choice_and_graph_profile(setup):
    _, model, fp32, int8, _, _ = setup
    images = _images(2)
    table, best = speed.choose_runtime({"fp32": fp32, "int8": int8}, CANVAS, model.pixel_mean, images,
                                       speed.runtime_candidates(1)[:2], runs=2, warmup=1)
    assert len(table) == 4 and best["median_ms"] == table["median_ms"].min() and best["cpu_model"]
    assert set(table["graph"]) == {"fp32", "int8"} and set(table["optimization"]) == {"basic", "extended"}
    one = fast.OneGraphDetector.from_file(int8, CANVAS, model.pixel_mean, settings=fast.RuntimeSettings(threads=1))
    prof = speed.graph_profile(one, images, runs=3, warmup=1)
    assert {"backbone", "fpn", "rpn", "roi_pooler", "box_head", "roi_other", "Python around the session"} <= set(prof.index)
    assert (prof["ms"] >= 0).all() and prof.loc["backbone", "int8_ms"] > 0 and prof.loc["roi_pooler", "int8_ms"] == 0
    with pytest.raises(ValueError, match="unknown ONNX Runtime settings"):
        fast.RuntimeSettings(optimization="reckless")


@pytest.fixture(scope="module")
def oracle_split(tmp_path_factory):
    """A registered 12-image split and two stand-in detectors with known, different boxes on it."""
    cfg, names, records = seals_and_rocks(tmp_path_factory.mktemp("best"), "onegraph_best")
    return cfg, names, NoisyOracle(records, seed=0), NoisyOracle(records, seed=1)


def test_best_on_split_scores_the_chosen_rows_own_model_unless_its_verdict_is_known(oracle_split, tmp_path):
    cfg, datasets, a, b = oracle_split
    reference = evaluate.scored(a, cfg, datasets, "test")
    models = {"a": (a, cfg), "b": (b, cfg)}
    # the row of the reference's own model: the same detections, no difference on any draw
    same = speed.best_on_split({"name": "a"}, models, datasets, "test", reference, None)
    assert same["delta_ap50"] == 0.0 and same["delta_ap50_ci95"] == [0.0, 0.0] and same["non_inferior"]
    assert same["AP50"] == same["reference_ap50"] == reference.ap50
    # the row of b: b's detections, written where asked, scored as they are
    other = speed.best_on_split({"name": "b"}, models, datasets, "test", reference, None,
                                detections_file=tmp_path / "b.json")
    dets = json.loads((tmp_path / "b.json").read_text())
    assert dets == evaluate.score(b, cfg, datasets["test"], quiet=True)[1]
    assert other["AP50"] == pytest.approx(evaluate.coco_metrics(datasets["test"], dets)["AP50"], abs=1e-9)
    assert other["AP50"] != reference.ap50 and other["delta_ap50"] == pytest.approx(other["AP50"] - reference.ap50)
    assert other["delta_ap50_ci95"][0] < other["delta_ap50"] < other["delta_ap50_ci95"][1]
    # a verdict already made is taken as it is, model or not; a row without a model has none
    verdict = {"split": "test", "non_inferior": True}
    known = {"b": verdict}
    assert speed.best_on_split({"name": "b"}, models, datasets, "test", reference, None, known=known) is verdict
    assert speed.best_on_split({"name": "c"}, models, datasets, "test", reference, None, known=known) is None


def test_reload_one_graph_saves_the_graph_with_the_settings_given_and_measures_that_folder(setup, tmp_path,
                                                                                          monkeypatch):
    cfg, model, _, int8, _, _ = setup
    one = fast.OneGraphDetector.from_file(int8, CANVAS, model.pixel_mean, settings=fast.RuntimeSettings(threads=1))
    settings = fast.RuntimeSettings(threads=1, optimization="basic")  # not the session's own
    seen = {}

    def fresh(spec, work_dir):  # stands in for the new process: what it would load and measure
        seen.update(spec=spec, work_dir=work_dir)
        return {"median_ms": 1.0}

    monkeypatch.setattr(speed, "in_fresh_process", fresh)
    folder = tmp_path / "reload"
    names = [f"class {k}" for k in range(cfg.MODEL.ROI_HEADS.NUM_CLASSES)]
    out = speed.reload_one_graph((one, cfg), folder, settings, lambda f: {"deploy": str(f)}, tmp_path / "w",
                                 classes=names)
    assert out == {"median_ms": 1.0} and seen == {"spec": {"deploy": str(folder)}, "work_dir": tmp_path / "w"}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["input"]["classes"] == names  # what wildlib.detect names its detections by
    assert manifest["runtime"] == settings.to_dict() and manifest["canvas"] == list(CANVAS)
    # the folder is a deployable of its own: the same graph, reloaded with those settings
    _, again = fast.load(folder)
    assert again.graph.settings == settings
    assert (folder / fast.deployable.GRAPH_FILE).read_bytes() == int8.read_bytes()
    want = fast.OneGraphDetector.from_file(int8, CANVAS, model.pixel_mean, settings=settings)
    with torch.no_grad():
        for im in _images(2):
            _same(want([im])[0]["instances"], again([im])[0]["instances"])
    # only a one graph is a deployable of its own: anything else is not saved nor measured
    seen.clear()
    assert speed.reload_one_graph((torch.nn.Linear(1, 1), None), tmp_path / "no", settings, None, "unused") is None
    assert not seen and not (tmp_path / "no").exists()


def test_instances_as_detector_postprocess():
    """OneGraphDetector.instances does in numpy what Detectron2's detector_postprocess does: scale
    to the original size, clip, drop empty boxes (out-of-image and zero-width boxes included)."""
    from detectron2.modeling.postprocessing import detector_postprocess
    from detectron2.structures import Boxes, Instances

    rng = np.random.default_rng(0)
    boxes = rng.uniform(-30, 350, (40, 4)).astype(np.float32)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] - 5)  # some empty, some crossing the edges
    boxes[3] = [400, 10, 420, 30]  # wholly outside: empty once clipped
    scores = rng.uniform(0, 1, 40).astype(np.float32)
    classes = rng.integers(0, 5, 40).astype(np.int64)
    x = {"image": torch.zeros(3, 240, 320, dtype=torch.uint8), "height": 480, "width": 640}
    got = fast.OneGraphDetector.instances((boxes, scores, classes), x)
    ref = Instances((240, 320), pred_boxes=Boxes(torch.from_numpy(boxes.copy())), scores=torch.from_numpy(scores),
                    pred_classes=torch.from_numpy(classes))
    want = detector_postprocess(ref, 480, 640)
    assert got.image_size == want.image_size and len(got) == len(want) < 40
    assert torch.allclose(got.pred_boxes.tensor, want.pred_boxes.tensor, atol=1e-4)
    assert torch.equal(got.scores, want.scores) and torch.equal(got.pred_classes, want.pred_classes)



def test_upsample_is_nearest_interpolation():
    """The one graph's 2x upsampling (Concat + Reshape) is the FPN's F.interpolate(nearest)."""
    x = torch.randn(1, 3, 5, 7)
    want = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
    assert torch.equal(fast.one_graph._upsample2x(x), want)
