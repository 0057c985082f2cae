"""The stage contract (wildlib.stages): what a stage writes, how a later one reads it, and what it
takes from earlier stages instead of parameters (the data, the seed, the fine-tuning batch)."""
import math
import shutil
from pathlib import Path

import pytest

from wildlib import data, evaluate, fit, io, modeling, records, runner, speed, stages
from wildlib.config import get_config


@pytest.fixture
def baseline_stage(tmp_path, untrained_cfg, untrained_model):
    """A finished stage 01 of a run: Detectron2 config (seed 7) and weights, beside a stage 00
    record that names a data folder and two classes."""
    run = tmp_path / "run"
    data_dir = tmp_path / "voc"
    data_dir.mkdir()
    stages.save_stage(stages.stage_dir(run, stages.EXPLORE),
                      {"data_dir": str(data_dir), "classes": ["Tree", "Rock"], "aliases": {"conifer": "Tree"}},
                      records.ExploreMetrics(images={}, instances={}, classes=["Tree", "Rock"]))
    cfg = untrained_cfg.clone()
    cfg.defrost()
    cfg.SEED = 7
    stage = stages.stage_dir(run, stages.BASELINE)
    modeling.save_weights(untrained_model, stage / stages.MODEL_FILE)
    train = records.TrainingRun(iterations=10, seconds=1.0, ims_per_batch=2)
    stages.save_stage(stage, cfg.dump(), records.BaselineMetrics(bbox={"AP50": 12.5}, train=train), cfg=cfg)
    return run


def test_load_stage_reads_what_save_stage_wrote(baseline_stage, untrained_model):
    rec = stages.load_stage(baseline_stage / stages.BASELINE, stages.MODEL_FILE)
    assert isinstance(rec.metrics, records.BaselineMetrics) and rec.metrics.bbox == {"AP50": 12.5}
    assert rec.metrics.train.iterations == 10 and rec.config["SEED"] == 7 and rec.cfg.SEED == 7
    want, got = untrained_model.state_dict(), rec.model.state_dict()
    assert set(want) == set(got) and all((want[k] == got[k]).all() for k in want)
    assert stages.load_stage(baseline_stage / stages.BASELINE).model is None  # no model asked for


def test_load_stage_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="02_prune.*metrics.json"):
        stages.load_stage(tmp_path / stages.PRUNE)


def test_finetuning_keeps_the_baselines_seed_unless_given(baseline_stage, tmp_path):
    args = dict(device="cpu", max_iter=10, ims_per_batch=2, lr=0.001, eval_period=5)
    base = baseline_stage / stages.BASELINE
    assert stages.finetune_config(base, tmp_path / "ft", **args).SEED == 7
    assert stages.finetune_config(base, tmp_path / "ft", seed=3, **args).SEED == 3


def test_baseline_config_user_keys_win_and_weights_resolve(baseline_stage, tmp_path, monkeypatch):
    monkeypatch.delenv("WILDLIB_COCO_WEIGHTS", raising=False)
    run = baseline_stage
    suggested = {"overrides": {"TEST.DETECTIONS_PER_IMAGE": 150, "INPUT.MIN_SIZE_TEST": 800}, "reasons": []}
    stages.save_stage(run / stages.EXPLORE, stages.config_of(run / stages.EXPLORE),
                      records.ExploreMetrics(images={}, instances={}, classes=["Tree", "Rock"],
                                             suggested_settings=suggested))
    weights = run / stages.BASELINE / stages.MODEL_FILE
    schedule = dict(device="cpu", max_iter=100, ims_per_batch=2, lr=0.01, eval_period=0, seed=1)
    user = {"INPUT.MIN_SIZE_TEST": 480, "MODEL.WEIGHTS": str(weights), "MODEL.MOBILENET.PRETRAINED": "none"}
    cfg = stages.baseline_config(run, tmp_path / "stage", "mobilenet_fpn_cpu", user, ("Tree", "Rock"), **schedule)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 2 and cfg.TEST.DETECTIONS_PER_IMAGE == 150  # stage 00's suggestion
    assert cfg.INPUT.MIN_SIZE_TEST == 480 and cfg.MODEL.WEIGHTS == str(weights)  # the user's keys win
    assert cfg.SEED == 1 and cfg.SOLVER.STEPS == (75, 92)
    with pytest.raises(modeling.WeightsError, match="absent.pth"):
        stages.baseline_config(run, tmp_path / "stage", "mobilenet_fpn_cpu",
                               {**user, "MODEL.WEIGHTS": str(tmp_path / "absent.pth")}, ("Tree", "Rock"), **schedule)
    plain = stages.baseline_config(run, tmp_path / "stage", "mobilenet_fpn_cpu", user, ("Tree", "Rock"),
                                   fitted=False, **schedule)  # FIT_TO_DATA = False: the config's own value
    assert plain.TEST.DETECTIONS_PER_IMAGE == get_config("mobilenet_fpn_cpu").TEST.DETECTIONS_PER_IMAGE != 150
    assert plain.INPUT.MIN_SIZE_TEST == 480  # the user's keys still win


def test_reload_spec_takes_the_data_stage_00_recorded(baseline_stage, tmp_path):
    spec = stages.reload_spec(tmp_path / "deploy", baseline_stage, threads=2, runs=7)
    assert spec["data_dir"] == str(tmp_path / "voc") and spec["classes"] == ["Tree", "Rock"]
    assert spec["aliases"] == {"conifer": "Tree"} and spec["baseline_dir"] == str(baseline_stage / stages.BASELINE)
    assert (spec["runs"], spec["threads"], spec["images"]) == (7, 2, speed.LATENCY_IMAGES)


def test_a_local_weights_path_is_not_replaced_by_the_offline_coco_file(tmp_path, monkeypatch):
    coco = tmp_path / "coco.pkl"
    coco.write_bytes(b"")
    monkeypatch.setenv("WILDLIB_COCO_WEIGHTS", str(coco))
    assert modeling.resolve_weights("detectron2://COCO-Detection/x.pkl") == str(coco)  # it stands in for URLs
    with pytest.raises(modeling.WeightsError, match="typo.pth"):
        modeling.resolve_weights(str(tmp_path / "typo.pth"))  # a mistyped local path is not the COCO file


def test_a_rerun_stage_drops_its_old_record(baseline_stage, voc_dir):
    """A stage that is re-run and stops half-way (stage 02 on a baseline under its AP50 floor, say)
    leaves no record of its previous run for later stages to read."""
    stages.save_stage(stages.stage_dir(baseline_stage, stages.PRUNE), {}, _prune_record())
    stages.open_stage(baseline_stage, stages.PRUNE, data_dir=str(voc_dir), classes=["zebra"], aliases={"z": "zebra"})
    assert not (baseline_stage / stages.PRUNE / stages.METRICS_FILE).exists()


def test_every_notebook_is_a_registered_stage():
    """A new stage is a notebook plus its entry in stages.STAGE_FOLDERS: the registry and the
    notebooks folder agree, in run order."""
    assert [nb.stem for nb in runner.list_notebooks()] == list(stages.STAGE_FOLDERS)


def _prune_record(**over) -> records.PruneMetrics:
    control = records.DenseControl(iterations=10, ims_per_batch=2, lr=0.01, seed=0, seconds=1.0)
    gradual = records.GradualRun(ranking="lamp", target=0.8, sparsity=0.8, bbox={"AP50": 1.0}, iterations=10,
                                 seconds=1.0)
    return records.PruneMetrics(**{"baseline": {"AP50": 1.0}, "dense_control": control, "reference": "baseline",
                                   "reference_ap50": 1.0, "gradual": gradual, "max_sparsity_within_1ap50": 0.0, **over})


def test_a_stage_writes_its_own_record_and_reads_it_back_typed(baseline_stage):
    """save_stage writes the record with its schema version; metrics_of reads the same class back;
    a dict, or another stage's record, is refused with the file named."""
    stage = stages.stage_dir(baseline_stage, stages.PRUNE)
    stages.save_stage(stage, {}, _prune_record(variants=[{"variant": "old key", "AP50": 3.0}]))
    m = stages.metrics_of(baseline_stage, stages.PRUNE)
    assert isinstance(m, records.PruneMetrics) and m.dense_control.ims_per_batch == 2 and m.gradual.target == 0.8
    assert m.variants == [records.Variant("old key", AP50=3.0)]  # a schema-1 row, read in today's keys
    written = (stage / stages.METRICS_FILE).read_text()
    assert '"schema": 1' in written and '"variant_schema": 2' in written
    with pytest.raises(TypeError, match="02_prune.*PruneMetrics"):
        stages.save_stage(stage, {}, {"reference_ap50": 1.0})
    with pytest.raises(TypeError, match="02_prune.*PruneMetrics"):
        stages.save_stage(stage, {}, records.ExploreMetrics(images={}, instances={}, classes=[]))


def test_baseline_iterations_follow_the_training_set_unless_given(voc_dir):
    """MAX_ITER = 0 in stage 01: passes over the registered training set (wildlib.fit); a
    number given is kept."""
    names = data.register(voc_dir, ["zebra"], prefix="iters_test")
    assert stages.baseline_iterations(names["train"], 8, 12) == 12
    assert stages.baseline_iterations(names["train"], 8) == fit.training_iterations(2, 8) == fit.MIN_ITER


def _run_with_detections(run, data_dir, cfg, boxes, ap50=0.0) -> Path:
    """A run whose stage 01 wrote ``boxes`` (COCO [x, y, w, h], class zebra) on valid's one image
    and recorded AP50 ``ap50`` for them."""
    stages.save_stage(stages.stage_dir(run, stages.EXPLORE), {"data_dir": str(data_dir)},
                      records.ExploreMetrics(images={}, instances={}, classes=list(data.class_list())))
    base = stages.stage_dir(run, stages.BASELINE)
    stages.save_stage(base, cfg.dump(), records.BaselineMetrics(evaluation_split="valid", bbox={"AP50": ap50},
                                                                train=records.TrainingRun(iterations=1, seconds=1.0, ims_per_batch=2)), cfg=cfg)
    image_id = data.load_split(data_dir, "valid")[0]["image_id"]
    zebra = data.class_list().index("zebra")
    io.write_json(base / stages.DETECTIONS_DIR / "baseline.json",
                  [{"image_id": image_id, "category_id": zebra, "bbox": b, "score": 0.9} for b in boxes])
    return run


def test_paired_baselines_pairs_two_runs_on_the_same_images(tmp_path, voc_dir, untrained_cfg):
    hit, miss = [5, 6, 25, 34], [40, 30, 10, 10]  # the ground truth's box; a box far from it
    a = _run_with_detections(tmp_path / "a", voc_dir, untrained_cfg, [hit], ap50=100.0)
    b = _run_with_detections(tmp_path / "b", voc_dir, untrained_cfg, [miss])
    d = stages.paired_baselines(a, b)
    assert d["split"] == "valid" and d["AP50"] == 100 and d["reference_ap50"] == 0
    assert d["delta_ap50"] == pytest.approx(100)  # from the detections, matched again
    same = stages.paired_baselines(a, a)
    assert same["delta_ap50"] == 0 and tuple(same["delta_ap50_ci95"]) == (0, 0)  # identical detections


def test_paired_baselines_refuses_detections_of_other_ground_truth(tmp_path, voc_dir, untrained_cfg):
    a = _run_with_detections(tmp_path / "a", voc_dir, untrained_cfg, [[5, 6, 25, 34]])
    src = a / stages.BASELINE / stages.DETECTIONS_DIR / "baseline.source.json"
    io.write_json(src, {"ground_truth_sha256": "0" * 64, "test_settings": {}})
    with pytest.raises(ValueError, match="baseline.json: made on other ground truth"):
        stages.paired_baselines(a, a)


def test_paired_baselines_takes_detections_of_the_same_data_moved_elsewhere(tmp_path, voc_dir, untrained_cfg):
    moved = tmp_path / "moved"
    shutil.copytree(voc_dir, moved)
    a = _run_with_detections(tmp_path / "a", voc_dir, untrained_cfg, [[5, 6, 25, 34]], ap50=100.0)
    datasets = data.register(moved, prefix="moved", splits=["valid"])
    src = a / stages.BASELINE / stages.DETECTIONS_DIR / "baseline.source.json"
    io.write_json(src, evaluate.source_of(untrained_cfg, datasets["valid"]))  # recorded on the moved copy
    assert stages.paired_baselines(a, a)["AP50"] == 100


def test_distillation_is_off_at_zero_weights_and_teaches_with_the_dense_control(tmp_path):
    assert stages.distillation(tmp_path / "01_baseline", tmp_path / "w.pth") is None
    assert stages.distillation(tmp_path / "01_baseline", tmp_path / "w.pth", temperature=4.0) is None
    hook = stages.distillation(tmp_path / "01_baseline", tmp_path / "02_prune" / "model_dense_control.pth", rpn=0.5)
    made = hook()
    assert made.teacher_config == str(tmp_path / "01_baseline" / "detectron2.yaml")
    assert made.teacher_weights == str(tmp_path / "02_prune" / "model_dense_control.pth")
    assert made.weights == {"cls": 0.0, "rpn": 0.5, "fpn": 0.0} and made.temperature == 2.0


def _rates(cfg) -> list:
    """The LR of each iteration under ``cfg``, from Detectron2's own scheduler."""
    import torch
    from detectron2.solver import build_lr_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    sched, out = build_lr_scheduler(cfg, opt), []
    for _ in range(cfg.SOLVER.MAX_ITER):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_finetune_lr_schedules_step_cosine_and_rewinding_the_baselines_tail(tmp_path):
    base = tmp_path / "01_baseline"
    base.mkdir()
    over = stages.baseline_overrides(base, device="cpu", max_iter=20, ims_per_batch=8, lr=0.02, eval_period=0,
                                     lr_steps=(0.5,))  # 20 iterations: warm-up 4, one drop at 10
    (base / modeling.D2_CONFIG_FILE).write_text(get_config("mobilenet_fpn_cpu", over).dump())
    (base / modeling.MODEL_FILE).write_bytes(b"")  # only named by the configs here, never loaded
    args = dict(device="cpu", ims_per_batch=4, lr=0.01, eval_period=0)
    # rewinding 14 iterations replays the baseline's iterations 6-19: 4 at the base rate, then 10 after its drop
    rewind = stages.finetune_config(base, tmp_path / "r", max_iter=14, lr_schedule="rewind", **args)
    assert _rates(rewind) == pytest.approx([0.01] * 4 + [0.001] * 10)
    # 8 iterations start after the drop: all at the dropped rate
    assert _rates(stages.finetune_config(base, tmp_path / "r8", max_iter=8, lr_schedule="rewind", **args)) == \
        pytest.approx([0.001] * 8)
    cosine = _rates(stages.finetune_config(base, tmp_path / "c", max_iter=50, lr_schedule="cosine", **args))
    peak = cosine.index(max(cosine))
    assert peak == 10 and max(cosine) == pytest.approx(0.01 * (1 + math.cos(math.pi * 10 / 50)) / 2, rel=1e-6)
    assert all(a > b for a, b in zip(cosine[peak:], cosine[peak + 1:])) and cosine[-1] < 1e-4
    step = _rates(stages.finetune_config(base, tmp_path / "s", max_iter=100, **args))
    assert step[50] == pytest.approx(0.01) and step[80] == pytest.approx(0.001) and step[95] == pytest.approx(0.0001)
    with pytest.raises(ValueError, match="after its warm-up"):
        stages.finetune_config(base, tmp_path / "x", max_iter=18, lr_schedule="rewind", **args)
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        stages.finetune_config(base, tmp_path / "x", max_iter=18, lr_schedule="onecycle", **args)
