"""wildlib.widgets: each draws the static figure of its default (what papermill keeps) and its
controls redraw from precomputed data; and the figures they draw say what they show."""

import json

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from wildlib import plots, widgets
from wildlib import prune as wp


@pytest.fixture
def model(untrained_model):
    return untrained_model


def _title(fig: Figure) -> str:
    return " ".join([ax.get_title() for ax in fig.axes] + [fig._suptitle.get_text() if fig._suptitle else ""])


def test_sparsity_slider_draws_its_default_and_redraws_on_a_move(model, tmp_path):
    summary = tmp_path / "summary.csv"
    summary.write_text("group,sparsity,AP50_mean,delta_mean,delta_lo,delta_hi\ntarget,0.9,90.1,-2.5,-3.0,-2.0\n")
    fig, box = widgets.sparsity_slider(wp.ranked_scores(model), 0.8, frontier_csv=summary)
    assert "80%" in _title(fig) and "frontier" not in _title(fig)  # no sweep point within 0.05 of 0.8
    bars = [p.get_width() for p in fig.axes[0].patches]
    table = wp.sparsity_at(wp.ranked_scores(model), 0.8)
    assert sorted(bars) == pytest.approx(sorted(np.r_[table["l1"], table["lamp"]] * 100))
    assert box.last_figure is None
    box.children[0].children[0].value = 0.9  # a move redraws, with the frontier's point there
    assert "90%" in _title(box.last_figure) and "AP50 90.1, delta -2.50 [-3.00, -2.00]" in _title(box.last_figure)


def test_bits_slider_counts_codes_and_codebook():
    w = np.r_[np.zeros(1000), np.random.default_rng(0).normal(size=3000)]
    fig, box = widgets.bits_slider(w, "layer", bits=3)
    assert "3,000 nonzero" in _title(fig) and "8 shared values" in _title(fig)
    assert widgets.sharing_bytes(3000, 3) == 1125 + 32  # 3000 x 3 bits, 8 float32 values
    assert "1.2 kB" in _title(fig)
    box.children[0].children[0].value = 1
    assert "2 shared values" in _title(box.last_figure)
    box.children[0].children[1].value = "density"
    assert "2 shared values (density init)" in _title(box.last_figure)


def test_detections_viewer_filters_by_variant_and_score(tmp_path):
    img = tmp_path / "a.jpg"
    Image.new("RGB", (64, 48)).save(img)
    records = [{"image_id": 7, "file_name": str(img)}]
    dets = [{"image_id": 7, "category_id": 1, "bbox": [1, 2, 10, 10], "score": s} for s in (0.9, 0.6, 0.2)]
    (tmp_path / "a.json").write_text(json.dumps(dets))
    (tmp_path / "b.json").write_text(json.dumps(dets[:1]))
    fig, box = widgets.detections_viewer(records, {"a": tmp_path / "a.json", "b": tmp_path / "b.json"},
                                         ["x", "y"], variant="a", score=0.5)
    assert "2 boxes" in _title(fig) and "a: score >= 0.50" in _title(fig)
    box.children[0].children[0].value = "b"
    assert "1 boxes" in _title(box.last_figure) and "b: score >= 0.50" in _title(box.last_figure)
    fig = widgets.detections_figure(records, dets, ["x", "y"], 0.1)
    assert "3 boxes" in _title(fig)


def test_magnitude_cuts_are_where_global_pruning_cuts_the_layer(model):
    ranked = wp.ranked_scores(model)
    pruned = dict(wp.pruned_copy(model, "all", 0.8, "l1").named_modules())
    name, layer = max(((n, m) for n, m in wp.prunable(model, "all")), key=lambda nm: nm[1].weight.numel())
    cut = wp.magnitude_cuts(ranked, layer.weight, 0.8)["l1"]
    w, kept = layer.weight.detach().abs(), pruned[name].weight.detach() != 0
    assert float(w[~kept].max()) == pytest.approx(cut)
    assert not kept.any() or float(w[kept].min()) > cut  # global L1 may empty this, the largest layer


def test_weight_histogram_marks_the_cuts():
    fig = plots.weight_histogram(np.linspace(-1, 1, 101), {"global L1": 0.3}, title="t")
    xs = sorted(line.get_xdata()[0] for line in fig.axes[0].get_lines())
    assert xs == pytest.approx([-0.3, 0.3])


def test_per_class_heatmap_colours_the_difference_to_the_reference():
    import pandas as pd

    table = pd.DataFrame({"dense control": [80.0, 60.0], "pruned": [78.0, 40.0]}, index=["zebra", "lion"])
    fig = plots.per_class_heatmap(table, reference="dense control")
    image = fig.axes[0].images[0].get_array()
    assert image.tolist() == [[0.0, -2.0], [0.0, -20.0]]  # colour: the difference
    assert [t.get_text() for t in fig.axes[0].texts] == ["80", "78", "60", "40"]  # text: the AP itself
    assert "difference to the dense control" in fig.axes[0].get_title()


def test_size_waterfall_writes_each_steps_ratio_to_the_dense_file():
    fig = plots.size_waterfall([("dense", 8e6), ("sparse", 2e6), ("shared", 1e6)])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == [" 8.00 MB (1.0x)", " 2.00 MB (4.0x)", " 1.00 MB (8.0x)"]


def test_time_stack_stacks_the_parts_of_each_variant():
    import pandas as pd

    t = pd.DataFrame({"baseline": [30.0, 6.0], "one graph": [5.0, None]}, index=["backbone", "rpn"])
    fig = plots.time_stack(t)
    assert [t.get_text() for t in fig.axes[0].texts] == ["36 ms", "5 ms"]
    assert [p.get_height() for p in fig.axes[0].patches] == [30.0, 5.0, 6.0, 0.0]


def test_latency_strips_draw_every_pass_and_its_baseline():
    rows = [{"name": "a", "latency_runs_ms": [1.0, 2.0, 3.0], "baseline_runs_ms": [10.0, 11.0, 12.0]},
            {"name": "no passes"}]
    fig = plots.latency_strips(rows)
    sizes = sorted(len(c.get_offsets()) for c in fig.axes[0].collections)
    assert sizes == [3, 3] and [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a"]
