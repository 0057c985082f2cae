"""The command-line tools under tools/ that are not a package (loaded from their files)."""
import importlib.util
import json
from pathlib import Path

from wildlib import config

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
