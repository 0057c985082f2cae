"""The command-line tools under tools/ that are not a package (loaded from their files)."""
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from wildlib import config, io

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_convergence_check_numbers_its_curve_as_the_baseline_does(tmp_path):
    """Detectron2 logs a periodic evaluation at iteration k-1 and the final one at max_iter; a resumed
    run logs an evaluation again.  The curve counts iterations done, each evaluation once."""
    check = _tool("convergence_check")
    events = [{"iteration": 19, "total_loss": 1.0}, {"iteration": 299, "bbox/AP50": 70.0},
              {"iteration": 599, "bbox/AP50": 80.0}, {"iteration": 599, "bbox/AP50": 81.0},  # resumed
              {"iteration": 900, "bbox/AP50": 90.0}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    assert check.curve_of(tmp_path, 900) == [{"iter": 300, "AP50": 70.0}, {"iter": 600, "AP50": 81.0},
                                             {"iter": 900, "AP50": 90.0}]


def test_the_longer_schedule_drops_its_lr_at_the_same_fractions(tmp_path):
    check = _tool("convergence_check")
    base = config.get_config("mobilenet_fpn_cpu", {"SOLVER.MAX_ITER": 1200, "SOLVER.STEPS": (600, 900), "SEED": 0})
    keys = check.schedule_keys(base, tmp_path / "x", seed=2, factor=1.5)
    assert keys == {"OUTPUT_DIR": str(tmp_path / "x"), "SOLVER.MAX_ITER": 1800, "SOLVER.STEPS": [900, 1350], "SEED": 2}


def test_the_shorter_schedule_shares_the_longer_ones_iterations_while_their_rates_agree():
    check = _tool("convergence_check")

    def cfg(max_iter, steps, period=300, warmup=100):
        return config.get_config("mobilenet_fpn_cpu", {"SOLVER.MAX_ITER": max_iter, "SOLVER.STEPS": steps,
                                                       "SOLVER.CHECKPOINT_PERIOD": period, "SOLVER.WARMUP_ITERS": warmup})
    long = (1800, (900, 1350))
    assert check.prefix_iteration(cfg(1200, (600, 900)), cfg(*long)) == 600   # a checkpoint right at the drop
    assert check.prefix_iteration(cfg(1200, (600, 900)), cfg(*long, period=500)) == 500   # the last one before it
    assert check.prefix_iteration(cfg(1200, (600, 900)), cfg(*long, period=700)) == 0     # none before it
    # a warm-up as long as the first drop ends at another rate in each schedule: nothing shared
    assert check.prefix_iteration(cfg(1200, (600, 900), warmup=700), cfg(*long, warmup=700)) == 0
    # without a drop the two agree to the end, short of the shorter one's last iteration
    assert check.prefix_iteration(cfg(1200, ()), cfg(1800, ())) == 900


def test_the_shorter_training_starts_from_the_longer_ones_checkpoint_with_its_first_evaluations(tmp_path):
    check = _tool("convergence_check")
    longer, shorter = tmp_path / "x1.5_seed0", tmp_path / "x1_seed0"
    longer.mkdir()
    (longer / "model_0000299.pth").write_bytes(b"at 300")
    (longer / "model_0000599.pth").write_bytes(b"at 600")
    events = [{"iteration": 299, "bbox/AP50": 70.0}, {"iteration": 599, "bbox/AP50": 80.0},
              {"iteration": 600, "total_loss": 0.5}, {"iteration": 899, "bbox/AP50": 85.0}]
    (longer / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    assert check.start_from_prefix(longer, shorter, 900) is None  # no checkpoint there: it starts from scratch
    assert not shorter.exists()
    prefix = check.start_from_prefix(longer, shorter, 600)
    assert (shorter / "last_checkpoint").read_text() == "model_0000599.pth"
    assert (shorter / "model_0000599.pth").read_bytes() == b"at 600"
    assert prefix == io.read_json(shorter / check.PREFIX_FILE) == {
        "from": "x1.5_seed0", "iteration": 600, "checkpoint_sha256": hashlib.sha256(b"at 600").hexdigest()}
    assert check.curve_of(shorter, 1200) == [{"iter": 300, "AP50": 70.0}, {"iter": 600, "AP50": 80.0}]


def test_a_kept_record_from_other_images_settings_or_training_is_refused_by_name(tmp_path):
    check = _tool("convergence_check")
    source = {"ground_truth_sha256": "a" * 64, "test_settings": {"INPUT.MIN_SIZE_TEST": 480}}
    expect = {"seed": 0, "factor": 1.0, "iterations": 1200, "config_sha256": "c" * 64}
    record = {k: [] for k in check.RECORD_KEYS} | {"source": source} | expect
    io.write_json(tmp_path / "x1_seed0.json.gz", record)
    assert check.read_record(tmp_path / "x1_seed0.json.gz", source, expect)["source"] == source
    other = {**source, "test_settings": {"INPUT.MIN_SIZE_TEST": 640}}
    with pytest.raises(ValueError, match="x1_seed0.json.gz: made on other"):
        check.read_record(tmp_path / "x1_seed0.json.gz", other, expect)
    for key, value in [("iterations", 1800), ("seed", 1), ("config_sha256", "d" * 64)]:
        with pytest.raises(ValueError, match=f"x1_seed0.json.gz: made by another training \\({key}"):
            check.read_record(tmp_path / "x1_seed0.json.gz", source, {**expect, key: value})
    io.write_json(tmp_path / "bare.json.gz", {"name": "x1_seed0"})
    with pytest.raises(ValueError, match="bare.json.gz: not a convergence record"):
        check.read_record(tmp_path / "bare.json.gz", source, expect)


def test_an_fp32_config_hashes_as_configs_did_before_the_precision_key():
    """Records kept before SOLVER.PRECISION existed carry the hash of a config without it: an fp32
    config (the default) must still match them; a bf16 one is another training."""
    check = _tool("convergence_check")
    cfg = config.get_config("mobilenet_fpn_cpu", {"SOLVER.PRECISION": "fp32"}, freeze=False)
    before = cfg.clone()
    del before.SOLVER["PRECISION"]
    before.OUTPUT_DIR = ""
    assert check.config_sha256(cfg) == hashlib.sha256(before.dump().encode()).hexdigest()
    cfg.SOLVER.PRECISION = "bf16"
    assert check.config_sha256(cfg) != hashlib.sha256(before.dump().encode()).hexdigest()


def test_a_pair_shares_its_prefix_only_with_the_checkpoint_the_longer_one_kept():
    check = _tool("convergence_check")
    longer = {"prefix_checkpoint_sha256": "a" * 64}
    assert check.shared_prefix(longer, {"prefix": {"checkpoint_sha256": "a" * 64}}) is True
    assert check.shared_prefix(longer, {"prefix": {"checkpoint_sha256": "b" * 64}}) is False
    assert check.shared_prefix(longer, {"prefix": None}) is False      # trained from the beginning
    assert check.shared_prefix({}, {"prefix": None}) is None             # kept before provenance was recorded


def test_a_fine_tuning_schedule_passes_only_as_good_as_its_baseline_and_without_a_deep_dip(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))  # the tool imports convergence_check beside it
    tool = _tool("finetune_schedules")
    from wildlib import intervals

    from .test_intervals import _detections, _gt

    gt = _gt(n_images=60, seed=7)
    good = intervals.match(gt, _detections(gt, seed=8, miss=0.05, extra=0))
    bad = intervals.match(gt, _detections(gt, seed=9, miss=0.5, extra=3))
    base_ap = intervals.ap50(good)
    seeds = [0, 1]
    records = {f"baseline_seed{s}": {"metrics": {"AP50": base_ap}, "curve": []} for s in seeds}
    matched = {f"baseline_seed{s}": good for s in seeds}
    curves = {"flat": [base_ap - 0.5, base_ap], "worse": [base_ap - 0.5, intervals.ap50(bad)],
              "dips": [base_ap - 2.0, base_ap]}  # ends as good as the baseline, but falls 2 AP50 on the way
    for name, curve in curves.items():
        for s in seeds:
            records[f"{name}_seed{s}"] = {"metrics": {"AP50": curve[-1]},
                                          "curve": [{"iter": 50 * (k + 1), "AP50": v} for k, v in enumerate(curve)]}
            matched[f"{name}_seed{s}"] = bad if name == "worse" else good
    out = tool.verdicts(records, matched, list(curves), seeds)["schedules"]
    assert out["flat"]["passes"] and out["flat"]["deepest_dip"] == pytest.approx(0.5)
    assert not out["worse"]["passes"] and out["worse"]["ci95_over_seeds"][1] < 0
    assert not out["dips"]["passes"] and out["dips"]["deepest_dip"] == pytest.approx(2.0)
    assert out["dips"]["delta_seed_mean"] == pytest.approx(0.0, abs=1e-9)


def test_the_precision_check_refuses_a_pair_not_trained_fp32_then_bf16(tmp_path):
    """Its verdict means "bf16 against fp32": two runs in the other order, or both fp32, are refused
    by name before anything is scored."""
    check = _tool("precision_check")
    for name, precision in [("a", "bf16"), ("b", "fp32"), ("c", "fp32")]:
        folder = tmp_path / name / "01_baseline"
        folder.mkdir(parents=True)
        (folder / "detectron2.yaml").write_text(
            config.get_config("mobilenet_fpn_cpu", {"SOLVER.PRECISION": precision}).dump())
    for first, second in [("a", "b"), ("b", "c")]:
        with pytest.raises(SystemExit, match="not fp32 then bf16"):
            check.main([str(tmp_path / first), str(tmp_path / second), "--out", str(tmp_path / "out.json")])


def test_one_baseline_folder_serves_every_seed_and_a_folder_without_weights_is_named(tmp_path, monkeypatch):
    """``--baseline``: the schedules and ablation tools fine-tune that one folder with every seed
    (nothing copied, no convergence-check training needed); a folder missing its weights is refused
    by name before any training starts."""
    monkeypatch.syspath_prepend(str(TOOLS))  # the tool imports convergence_check beside it
    schedules = _tool("finetune_schedules")
    stages = schedules.stages
    shared = tmp_path / "01_baseline"
    shared.mkdir()
    (shared / stages.D2_CONFIG_FILE).write_text("x")
    with pytest.raises(FileNotFoundError, match=stages.MODEL_FILE):
        schedules.baseline_folder(tmp_path / "run", tmp_path / "out", 0, str(shared))
    (shared / stages.MODEL_FILE).write_bytes(b"w")
    assert [schedules.baseline_folder(tmp_path / "run", tmp_path / "out", s, str(shared)) for s in (0, 1)] == [shared] * 2
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="convergence_check"):  # without it: the seed's own 1x training
        schedules.baseline_folder(tmp_path / "run", tmp_path / "out", 0)


def test_the_lab_screenshot_runs_the_widgets_the_notebooks_call(monkeypatch):
    """Each widget cell of tools/lab_screenshot.py calls the wildlib.widgets function its notebook
    calls, and the set-up cell comes first: the screenshots show the notebooks' own widgets."""
    tool = _tool("lab_screenshot")
    nb = tool.widget_notebook(Path("runs/x"))
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert nb.metadata["kernelspec"]["name"] == "python3" and "load_stage" in code[0]
    notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    for name, nb_file in {"sparsity_slider": "02_prune_magnitude", "bits_slider": "03_weight_sharing",
                          "detections_viewer": "05_evaluate"}.items():
        assert sum(f"wl.widgets.{name}(" in c for c in code[1:]) == 1, name
        assert f"wl.widgets.{name}(" in (notebooks / f"{nb_file}.ipynb").read_text(), nb_file
    assert len(code) == 1 + len(tool.WIDGETS)


def test_the_ablation_draws_seed_means_from_the_baseline_each_in_a_colour_of_its_own(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))
    tool = _tool("distill_ablation")
    rec = lambda *v: {"curve": [{"iter": 100, "AP50": v[0]}, {"iter": 200, "AP50": v[1]}]}  # noqa: E731
    controls = {0: rec(90.0, 94.0), 1: rec(92.0, 96.0)}
    kept = {"none_seed0": rec(80.0, 88.0), "none_seed1": rec(84.0, 90.0),
            "logits_features_seed0": rec(86.0, 93.0), "logits_features_seed1": rec(88.0, 95.0)}
    out = tool.arm_curves(controls, kept, ["none", "logits+features"], [0, 1], 95.5)
    assert [[p["AP50"] for p in c] for c in out.values()] == [[95.5, 91.0, 95.0], [95.5, 82.0, 89.0], [95.5, 87.0, 94.0]]
    assert len({label.split()[0] for label in out}) == 3  # plots.learning_curves colours by the first word
