import os
from pathlib import Path

import matplotlib
import pytest
from PIL import Image

from wildlib import runner, synth

# this process draws headless; the notebooks' kernels keep ipykernel's inline backend, so their
# executed notebooks hold their figures as a make run's do (the HTML test reads them)
matplotlib.use("Agg")

# PyTorch threads of every notebook a test runs: 2 (the machine's cores) by default; 1 when
# tools/test_lanes.py runs two lanes of tests side by side (`make test`), one core each.
TEST_THREADS = int(os.environ.get("WILDLIB_TEST_THREADS", "2"))


def threaded(prefix: str, overrides: dict) -> dict:
    """A notebook's overrides with ``NUM_THREADS = TEST_THREADS`` if notebook ``prefix`` takes it."""
    nb = runner.select(runner.list_notebooks(), [prefix])[0]
    return {**overrides, "NUM_THREADS": TEST_THREADS} if "NUM_THREADS" in runner.parameters_of(nb) else overrides


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    """A small embedded set (about 8% of the paper's counts; 8 held-out test scenes, since every
    smoke stage scores its models there), rendered once per test session."""
    out = tmp_path_factory.mktemp("data") / "savanna_smoke"
    synth.generate(out, synth.SynthConfig(seed=3, scale=0.08, test_images=100), progress=False)
    return out


# Each notebook's smoke parameters: minutes in all, and assertions on what each one writes
# (tests/test_notebooks.py).  The smoke baseline is trained long enough to detect (21-32 AP50 on
# the 13 smoke `valid` images after 200 iterations at batch 2 in 3 runs at seeds 0 and 1 on a 2-core
# AVX2 machine, 1.5 min each): the pickers of 02-05 choose between real differences, and its
# evaluations are fast (a barely trained box head scores most of the 300 proposals for every class
# near 1/14, above the 0.05 threshold: thousands of boxes per image went into NMS).
SMOKE = {
    "00": {"N_SAMPLES": 4},
    "01": {"MAX_ITER": 200, "IMS_PER_BATCH": 2, "EVAL_PERIOD": 100, "PROFILE_RUNS": 2,
           "LR": 0.01},  # 0.02 at batch 4 (the same LR per image) diverged within 40 iterations
    "02": {"SWEEP_SCOPES": ["all"], "SWEEP_RATIOS": [0.3, 0.6], "SENS_RATIOS": [0.5], "TARGET_SPARSITY": 0.5,
           "FT_ITER": 10, "FT_LR": 0.0005, "IMS_PER_BATCH": 2,
           "DISTILL_CLS": 1.0, "DISTILL_RPN": 0.5},  # the pruning run learns from the dense control too
    "03": {"BITS_SWEEP": [3, 8], "INIT_BITS": 3, "CONV_BITS": 5, "FC_BITS": 4, "FT_ITER": 4, "IMS_PER_BATCH": 2},
    "04": {"PROPOSALS": [[100, 50]], "COMBINED_PROPOSALS": [[100, 50]], "DETECTIONS": [20], "INPUT_SIZES": [208],
           "SCAN_RATIOS": [0.5], "FT_ITER": 4, "SCAN_FAMILIES": ["m5", "fpn", "rpn", "box_head"], "SCAN_DROP": 10.0,
           "LATENCY_RUNS": 3, "SWEEP_RUNS": 2, "RUNTIME_RUNS": 2, "NI_PROPOSALS": [[100, 50]], "NI_INPUT_SIZES": [208],
           "QAT_ITER": 2,
           "SCAN_MIN_SPEEDUP": 0.0},  # a family costing <= 10 AP50 is pruned, whatever 2 passes of timing say
    "05": {"LATENCY_RUNS": 3, "N_SHOW": 2, "SURVEY_GRID": 2, "SURVEY_IMAGES": 2},  # 2 mosaics of 2 x 2 of the 8 test images
}


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, smoke_data):
    """``smoke_run("03")``: the session's smoke run folder once notebook 03 and every earlier one
    have run (each at most once per session), with the SMOKE parameters."""
    run_dir = tmp_path_factory.mktemp("run")
    done = set()

    def run(prefix: str) -> Path:
        for p in sorted(SMOKE):
            if p > prefix:
                break
            if p not in done:
                extra = {"DATA_DIR": str(smoke_data)} if p == "00" else {}
                runner.run_all(run_dir, only=[p], overrides=threaded(p, {**SMOKE[p], **extra}))
                done.add(p)
        return run_dir

    return run


def pytest_collection_modifyitems(items):
    """Tests without a tier are unit tests (``make test-unit``: ``-m unit``)."""
    for item in items:
        if not any(item.get_closest_marker(m) for m in ("notebooks", "slow")):
            item.add_marker(pytest.mark.unit)


def voc_xml(filename="a.jpg", size=(64, 48), objects=(("zebra", (5, 6, 30, 40)),)) -> str:
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    return (f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>")


@pytest.fixture
def voc_dir(tmp_path) -> Path:
    """A tiny valid VOC folder: two train images, one valid image, 64x48 px."""
    root = tmp_path / "voc"
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    for name in ("img1", "img2", "img3"):
        Image.new("RGB", (64, 48), (120, 100, 60)).save(root / "images" / f"{name}.jpg")
        (root / "annotations" / f"{name}.xml").write_text(voc_xml(f"{name}.jpg"))
    (root / "train.txt").write_text("img1\nimg2\n")
    (root / "valid.txt").write_text("img3\n")
    return root


@pytest.fixture(scope="session")
def untrained_cfg():
    """The project's default config (``mobilenet_fpn_cpu``) with ``MODEL.MOBILENET.PRETRAINED=none``:
    a model of it needs no weights file.  Frozen, so sharing it is safe."""
    from wildlib import config

    return config.get_config("mobilenet_fpn_cpu", {"MODEL.MOBILENET.PRETRAINED": "none"})


@pytest.fixture(scope="session")
def untrained_model(untrained_cfg):
    """One untrained model of :func:`untrained_cfg` (random init from ``torch.manual_seed(0)``, eval
    mode), built once per session and shared by every test that asks for it.

    Read-only: a test that changes a model (pruning, hooks, quantizing, sharing, BN statistics,
    loading weights) works on ``copy.deepcopy(untrained_model)``; one that needs another config or
    two independently built models builds its own.  Building does not move the session's random
    state, and at the end of the session the model is checked against what was built, so a test
    that changed it is reported instead of silently skewing the tests that ran after it."""
    import torch

    from wildlib import modeling

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = modeling.build_model(untrained_cfg)
    built = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    yield model
    now = model.state_dict()
    changed = sorted(set(built) ^ set(now)) + sorted(k for k in set(built) & set(now)
                                                     if not torch.equal(built[k], now[k]))
    changed += sorted(n for n, p in model.named_parameters() if flags.get(n) != p.requires_grad)
    assert not changed and not model.training, (
        f"a test changed the shared untrained_model (use copy.deepcopy): {changed[:5]}"
        f"{' (train mode)' if model.training else ''}")
