"""Training hand-over through files (the several-GPU path), convergence metrics, the reference
AP50, and the per-part profile."""
import functools
import os
import shutil
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import build_detection_train_loader
from detectron2.utils.events import EventStorage

from wildlib import channels, config, data, evaluate, modeling, parts, profile, prune, share, stages, train
from wildlib.fast import qat


def test_plateau_gain_and_learning_curve():
    evals = [{"iter": 100, "AP50": 50.0}, {"iter": 200, "AP50": 80.0}, {"iter": 300, "AP50": 90.0},
             {"iter": 400, "AP50": 90.4}]
    # AP50 at 75% of 400 = iteration 300 -> 90.0
    assert train.plateau_gain(evals) == pytest.approx(0.4)
    # between evaluations: 75% of 400 = 300 lies between; with evaluations at 200 and 400 only
    assert train.plateau_gain([evals[1], evals[3]]) == pytest.approx(90.4 - (80 + 0.5 * 10.4))
    assert math.isnan(train.plateau_gain(evals[:1]))
    assert train.learning_curve(evals + [{"iter": 500, "AP": 3.0}]) == [{"iter": e["iter"], "AP50": e["AP50"]}
                                                                         for e in evals]


def test_best_within_takes_the_largest_within_the_tolerance():
    rows = [{"AP50": 95.0, "s": 0.5}, {"AP50": 94.4, "s": 0.9}, {"AP50": 94.6, "s": 0.8}]
    assert evaluate.best_within(rows, "s", 95.5) == rows[2]  # 94.4 is 1.1 below the reference
    assert evaluate.best_within(rows, "s", 99.0) is None
    assert evaluate.best_within(rows, "s", 95.5, tolerance=2.0) == rows[1]


def test_parts_cover_the_detector_and_are_the_one_vocabulary():
    cfg = config.get_config("mobilenet_fpn_cpu", {"MODEL.MOBILENET.PRETRAINED": "none"})
    model = modeling.build_model(cfg)
    assert parts.part_of("backbone.bottom_up.m3.0.conv.0.0") == "backbone"
    assert parts.part_of("backbone.fpn_output2") == "fpn"
    assert parts.part_of("roi_heads.box_head.fc1") == "box_head"
    assert parts.part_of("roi_heads.box_pooler.level_poolers.0") == "roi_pooler"
    assert parts.part_of("pixel_mean") == "other"
    assert parts.backbone_stage_of("backbone.bottom_up.m3.0.conv.0.0") == "m3"
    assert parts.backbone_stage_of("backbone.fpn_output2") is None
    with_weights = {parts.part_of(n) for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert with_weights == {"backbone", "fpn", "rpn", "box_head", "box_predictor"}
    # pruning scopes, sensitivity groups and channel families all speak it
    assert set(prune.SCOPES) == with_weights
    groups = {prune.group_of(n) for n, _ in prune.prunable(model, "all")}
    assert groups == {"backbone.stem", "backbone.m2", "backbone.m3", "backbone.m4", "backbone.m5", "fpn", "rpn", "box_head"}
    assert set(channels.FAMILIES) <= set(parts.PARTS) | set(parts.BACKBONE_STAGES)
    assert parts.current_names("backbone+roi_head") == "backbone+box_head"  # a run written before


def test_channels_last_is_the_same_model():
    torch.manual_seed(0)
    cfg = config.get_config("mobilenet_fpn_cpu", {"MODEL.MOBILENET.PRETRAINED": "none", "MODEL.CHANNELS_LAST": False})
    dense = modeling.build_model(cfg)
    nhwc = modeling.with_memory_format(modeling.build_model(cfg), config.get_config("mobilenet_fpn_cpu"))
    nhwc.load_state_dict(dense.state_dict())
    assert nhwc.backbone.bottom_up.stem[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        a, b = dense.backbone(x), nhwc.backbone(x)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), k


@pytest.fixture(scope="module")
def tiny(smoke_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    data.register(smoke_data, coco_dir=out / "coco")
    over = stages.baseline_overrides(out / "stage", device="cpu", max_iter=6, ims_per_batch=2, lr=0.001,
                                     eval_period=0, seed=0)
    over.update({"MODEL.MOBILENET.PRETRAINED": "none", "TEST.EVAL_PERIOD": 0})
    return config.get_config("mobilenet_fpn_cpu", over)


def test_results_come_back_through_the_output_folder(tiny):
    """The several-GPU path returns what the worker wrote: history and the trained weights,
    with hooks built inside the worker from picklable factories and finalized there."""
    hook = functools.partial(prune.GradualPruning, "all", 0.5, 0, 4, 2, ranking="lamp")
    direct = train._train_worker(tiny, False, [hook])
    back = train.load_result(tiny)
    assert back["iterations_run"] == direct["iterations_run"] == 6
    assert back["hook_states"][0]["history"][-1][1] == pytest.approx(0.5, abs=1e-3)
    assert len(back["losses"]) == 6
    a, b = direct["model"].state_dict(), back["model"].state_dict()
    assert set(a) == set(b) and not any(k.endswith("_orig") for k in a)  # masks folded by finalize()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert prune.sparsity(back["model"]) == pytest.approx(0.5, abs=1e-3)


def test_a_training_resumed_under_another_schedule_keeps_its_momentum_and_takes_the_new_rate(tiny, tmp_path):
    """What the convergence check does (tools/convergence_check.py): a shorter schedule resumes from a
    longer one's checkpoint at its first LR drop.  SGD's momentum buffers come back from the file, and
    the first resumed step already runs at the resumed schedule's rate (base LR x gamma after the drop)."""
    def schedule(folder, max_iter, steps):
        cfg = tiny.clone()
        cfg.defrost()
        cfg.OUTPUT_DIR, cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = str(tmp_path / folder), max_iter, steps
        cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.WARMUP_ITERS = 2, 0
        return cfg

    longer, shorter = schedule("longer", 4, (3,)), schedule("shorter", 3, (2,))  # the same rate up to iteration 2
    train._train_worker(longer, False)
    saved = torch.load(tmp_path / "longer" / "model_0000001.pth", weights_only=True)
    assert saved["trainer"]["optimizer"]["state"] and saved["iteration"] == 1
    (tmp_path / "shorter").mkdir()
    shutil.copy(tmp_path / "longer" / "model_0000001.pth", tmp_path / "shorter")
    (tmp_path / "shorter" / "last_checkpoint").write_text("model_0000001.pth")
    trainer = train.Trainer(shorter)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx(
        [shorter.SOLVER.BASE_LR * shorter.SOLVER.GAMMA] * len(trainer.optimizer.param_groups))
    state = trainer.optimizer.state_dict()["state"]
    assert state.keys() == saved["trainer"]["optimizer"]["state"].keys()
    assert all(torch.equal(state[k]["momentum_buffer"], saved["trainer"]["optimizer"]["state"][k]["momentum_buffer"]) for k in state)


def _bf16(cfg, out_dir=None, amp: bool = False, **solver):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.PRECISION = "bf16"
    cfg.SOLVER.AMP.ENABLED = amp
    for k, v in solver.items():
        cfg.SOLVER[k] = v
    if out_dir is not None:
        cfg.OUTPUT_DIR = str(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)  # Detectron2's writers open their files there
    return cfg


def _fpn_dtypes(model) -> list:
    seen = []
    model.backbone.register_forward_hook(lambda m, a, out: seen.append(out["p2"].dtype))
    return seen


def test_bf16_precision_runs_the_forward_in_bfloat16_and_keeps_the_weights_fp32(tiny, tmp_path):
    """SOLVER.PRECISION "bf16": each training step's forward under CPU autocast (the FPN's outputs in
    bfloat16), the SGD step on fp32 weights, the losses logged in fp32; "fp32" (the default) leaves
    Detectron2's own step as it was."""
    def one_step(cfg):
        trainer = train.Trainer(cfg)
        seen = _fpn_dtypes(trainer.model)
        trainer._trainer.iter = 0
        with EventStorage(0) as storage:
            trainer._trainer.run_step()
        weights = {p.dtype for p in trainer.model.parameters()}
        return type(trainer._trainer), seen, weights, storage

    kind, seen, weights, storage = one_step(_bf16(tiny, tmp_path / "bf16"))
    assert kind is train.AutocastTrainer and seen == [torch.bfloat16] and weights == {torch.float32}
    assert np.isfinite(storage.history("total_loss").latest())
    fp32 = _bf16(tiny, tmp_path / "fp32", PRECISION="fp32")
    kind, seen, weights, _ = one_step(fp32)
    assert kind is not train.AutocastTrainer and seen == [torch.float32]
    with pytest.raises(ValueError, match="SOLVER.PRECISION 'fp16'"):
        train.train_dtype(_bf16(tiny, PRECISION="fp16"))
    with pytest.raises(ValueError, match="AMP"):
        train.Trainer(_bf16(tiny, tmp_path / "amp", amp=True))


def test_auto_precision_is_bf16_only_on_a_cpu_that_has_it_in_hardware():
    """The default config asks for "auto": bf16 where /proc/cpuinfo lists AVX512-BF16 or AMX-BF16, fp32
    on other CPUs (emulated bfloat16 is slower) and on a GPU; stage 01 writes the decision down."""
    zen4 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
    zen3 = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\n"
    sapphire = "flags\t\t: avx512f amx_tile amx_bf16 amx_int8\n"
    assert train.resolve_precision("auto", "cpu", zen4) == "bf16"
    assert train.resolve_precision("auto", "cpu", sapphire) == "bf16"
    assert train.resolve_precision("auto", "cpu", zen3) == "fp32"
    assert train.resolve_precision("auto", "cpu", "model name\t: avx512_bf16 in its name\n") == "fp32"
    assert train.resolve_precision("auto", "cuda", zen4) == "fp32"
    assert train.resolve_precision("fp32", "cpu", zen4) == "fp32"
    assert config.get_config("mobilenet_fpn_cpu").SOLVER.PRECISION == "auto"
    assert config.get_config("paper_r50_fpn").SOLVER.PRECISION == "fp32"
    cfg = stages.baseline_config(Path("/nonexistent-run"), Path("/tmp"), "mobilenet_fpn_cpu", {}, ["zebra"], fitted=False,
                                 device="cpu", max_iter=10, ims_per_batch=2, lr=0.01, eval_period=0, seed=0)
    assert cfg.SOLVER.PRECISION == ("bf16" if train.native_bf16() else "fp32")


def test_a_bf16_training_trains_records_and_probes_at_its_precision(tiny, tmp_path, monkeypatch):
    cfg = _bf16(tiny, tmp_path / "run", MAX_ITER=2)
    probed = []
    monkeypatch.setattr(train, "step_seconds", lambda *a, **kw: probed.append(kw.get("dtype")) or profile.step_seconds(*a, **kw))
    result = train._train_worker(cfg, False)
    assert probed == [torch.bfloat16]
    assert len(result["losses"]) == 2 and all(np.isfinite(r["total_loss"]) for r in result["losses"])
    assert result["probe_step_s"] > 0
    saved = torch.load(tmp_path / "run" / train.TRAINED_FILE, weights_only=True)
    assert {v.dtype for v in saved["model"].values() if v.is_floating_point()} == {torch.float32}


def test_short_finetunings_follow_the_precision_except_qat_and_centroids(tiny):
    """A bf16 config's short fine-tunings run in bf16, but quantization-aware fine-tuning (the int8
    grid ONNX Runtime computes exactly) and centroid fine-tuning (the centroids the .wlc stores) in fp32."""
    cfg = _bf16(tiny)
    m = modeling.build_model(cfg)
    seen = _fpn_dtypes(m)
    train.short_finetune(m, cfg, [p for p in m.parameters() if p.requires_grad], 1, 0.0, progress=False)
    assert seen == [torch.bfloat16]
    seen.clear()
    qat.finetune(m, cfg, 1, 0.0, progress=False)
    assert seen == [torch.float32]
    seen.clear()
    share.finetune_centroids(m, cfg, share.share_weights(m, bits=3, init="linear"), iters=1, lr=0.0, progress=False)
    assert seen == [torch.float32]


def test_the_probe_times_steps_at_the_training_precision(tiny):
    """The probe a training's mean step is held against runs its forward as the training did: a bf16
    training probed in fp32 would look slower than its probe whatever the machine's load."""
    model = modeling.build_model(tiny)
    seen = []  # the probe trains a copy of the model, hooks copied with it
    model.backbone.register_forward_hook(lambda m, a, out: seen.append(out["p2"].dtype))
    batches = iter(build_detection_train_loader(tiny))
    profile.step_seconds(model, batches, runs=1, warmup=0, dtype=torch.bfloat16)
    profile.step_seconds(model, batches, runs=1, warmup=0)
    assert seen == [torch.bfloat16, torch.float32]


@pytest.mark.slow
@pytest.mark.alone
def test_trainings_side_by_side_each_train_in_a_process_of_their_own(tiny, smoke_data, tmp_path):
    setup = functools.partial(data.register, smoke_data, coco_dir=tmp_path / "coco")  # a spawned process has none
    a, b = tiny.clone(), tiny.clone()
    a.defrost(), b.defrost()
    a.OUTPUT_DIR = str(tmp_path / "a")
    b.OUTPUT_DIR, b.SOLVER.MAX_ITER, b.SOLVER.STEPS = str(tmp_path / "b"), 5, (3,)
    hook = functools.partial(prune.GradualPruning, "all", 0.5, 0, 2, 1, ranking="lamp")
    ra, rb = train.train_together([(a, []), (b, [hook])], threads_each=1, setup=setup)
    assert ra["iterations_run"] == 6 and rb["iterations_run"] == 5 and len(rb["losses"]) == 5
    assert prune.sparsity(rb["model"]) == pytest.approx(0.5, abs=1e-3) and prune.sparsity(ra["model"]) < 0.01
    assert ra["probe_step_s"] > 0 and ra["step_s"] > 0
    # both children were this process's: the machine of the span does not count them as other load
    assert ra["machine"] is rb["machine"] and ra["machine"]["own_share"] > ra["machine"]["others_share"]
    with pytest.raises(RuntimeError, match=r"exited 1 \(its log: .*a[/\\]log\.txt\)"):
        train.train_together([(a, [])], setup=None)  # the child has no dataset registered: it fails, named


@pytest.mark.slow
@pytest.mark.alone
@pytest.mark.timeout(600)
def test_trainings_side_by_side_probe_together_and_a_failed_one_does_not_hold_the_others(tiny, smoke_data, tmp_path):
    """The shorter training waits for the longer one before its probe, so that both probes share the
    machine as their steps did; a sibling that fails breaks that wait (no hang) and is named."""
    setup = functools.partial(data.register, smoke_data, coco_dir=tmp_path / "coco")
    a, b = tiny.clone(), tiny.clone()
    a.defrost(), b.defrost()
    a.OUTPUT_DIR, a.SOLVER.MAX_ITER, a.SOLVER.STEPS, a.TEST.EVAL_PERIOD = str(tmp_path / "a"), 40, (30,), 0
    b.OUTPUT_DIR, b.SOLVER.MAX_ITER, b.SOLVER.STEPS, b.TEST.EVAL_PERIOD = str(tmp_path / "b"), 4, (3,), 0
    ra, rb = train.train_together([(a, []), (b, [])], threads_each=1, setup=setup)
    assert ra["trained_until"] - rb["trained_until"] > 2.0  # b finished well before a ...
    assert abs(ra["probe_started"] - rb["probe_started"]) < 1.0  # ... and probed when a did
    b.DATASETS.TRAIN = ("no_such_dataset",)
    with pytest.raises(RuntimeError, match=r"b[/\\]log\.txt") as err:
        train.train_together([(a, []), (b, [])], threads_each=1, setup=setup)
    assert "a" + os.sep + "log.txt" not in str(err.value)  # a trained to the end and probed alone
    assert train.load_result(a)["probe_step_s"] > 0


def test_unpicklable_hooks_are_refused_before_launch(tiny):
    with pytest.raises(TypeError, match="picklable"):
        train.train(tiny, num_gpus=2, hooks=[lambda: prune.GradualPruning()])


def test_cost_table_splits_time_and_flops(tiny, smoke_data):
    model = modeling.build_model(tiny)
    inputs = evaluate.load_inputs(tiny, data.load_split(smoke_data, "valid")[:2])
    table = profile.cost_table(model, tiny, inputs, train_iter=profile.train_batches(tiny), runs=2, train_runs=1)
    assert set(parts.PART_NAMES) <= set(table.index) and {"optimizer_step", "data_loading"} <= set(table.index)
    for col in ("infer_ms", "train_ms"):
        assert table[col].sum() > 0 and (table[col] >= 0).all()
        assert table[col.replace("_ms", "_share")].sum() == pytest.approx(1.0)
    # time in the parts that hold the convolutions, FLOPs only where there are multiply-adds
    assert table.loc["backbone", "infer_ms"] > 0 and table.loc["backbone", "train_bwd_ms"] > 0
    assert table.loc["backbone", "infer_gflops"] > 0 and table.loc["fpn", "infer_gflops"] > 0
    assert table.loc["roi_pooler", "infer_gflops"] == 0 and table.loc["box_head", "train_fwd_gflops"] > 0
    # fvcore's total over the parts equals its count for the whole model
    total = profile.flops(model, inputs[:1])
    assert np.isclose(sum(total.values()) / 1e9, table["infer_gflops"].sum())


def test_centroid_finetuning_repeats_whatever_the_global_rng(tiny):
    """Stage 03's centroid fine-tuning repeats bit for bit: seeded from cfg.SEED although the
    process's global RNGs stand elsewhere (a loader seeded from them would draw another image
    order), with deterministic scatter-adds for the centroid gradients."""
    import copy

    from wildlib import share

    start = modeling.build_model(tiny)
    codebooks, losses = [], []
    numpy_state = np.random.get_state()
    with torch.random.fork_rng():  # the session's random state is given back afterwards
        for other in (1, 2):
            np.random.seed(other)
            torch.manual_seed(other)
            m = copy.deepcopy(start)
            layers = share.share_weights(m, bits=3, init="linear")
            out = share.finetune_centroids(m, tiny, layers, iters=2, lr=0.05, progress=False)
            codebooks.append({n: layer.codebook for n, layer in out["shared"].items()})
            losses.append([row["total_loss"] for row in out["losses"]])
    np.random.set_state(numpy_state)
    assert losses[0] == losses[1]  # the same images, in the same order
    assert codebooks[0].keys() == codebooks[1].keys()
    assert all(np.array_equal(codebooks[0][n], codebooks[1][n]) for n in codebooks[0])  # bit for bit
    assert not torch.are_deterministic_algorithms_enabled()  # the process's setting is given back


def test_final_eval_is_the_evaluation_after_the_last_iteration():
    evals = [{"iter": 250, "AP50": 80.0}, {"iter": 500, "AP50": 90.0, "AP": 60.0}]
    assert train.final_eval(evals, 500) == {"AP50": 90.0, "AP": 60.0}
    assert train.final_eval(evals, 1000) is None and train.final_eval([], 500) is None
    # nothing detected: Detectron2 gives NaN, metrics.json null: not a number to take
    assert train.final_eval([{"iter": 500, "AP50": float("nan")}], 500) is None
    assert train.final_eval([{"iter": 500, "AP50": None}], 500) is None


def test_the_probe_after_a_training_is_at_most_half_its_length_and_at_least_two_steps():
    """A short training (the smoke tier's 2- to 10-iteration fine-tunings) is not probed for longer
    than it trained; a long one gets the full probe."""
    assert [train.probe_steps(n) for n in (1, 2, 4, 10, 24, 1200)] == [2, 2, 2, 5, 12, 12]
