"""The stage records (wildlib.records): what every metrics.json holds, written and read back as
the same typed record; old files read alike, bad ones refused with the file named."""
import json

import pytest

from wildlib import records, stages


def _prune_json(**over) -> dict:
    """A stage-02 record as a run before the records had a schema wrote it (schema absent, the
    variant rows in schema 1's keys), with a key this version does not know."""
    return {"evaluation_split": "test", "baseline": {"AP50": 90.0}, "reference": "dense control",
            "reference_ap50": 91.0, "reference_ap50_ci95": [89.0, 93.0], "max_sparsity_within_1ap50": 0.3,
            "dense_control": {"iterations": 500, "ims_per_batch": 4, "lr": 0.01, "seed": 0, "seconds": 9.0,
                              "AP50": 91.0, "bbox": {"AP50": 91.0}},
            "gradual": {"ranking": "lamp", "target": 0.8, "sparsity": 0.8, "bbox": {"AP50": 89.5}, "iterations": 500,
                        "seconds": 8.0, "AP50": 89.5, "delta_ap50": -1.5, "delta_ap50_ci95": [-2.5, -0.5]},
            "best_variant": {"variant": "one-shot", "sparsity_all": 0.3, "AP50": 90.5},
            "variants": [{"variant": "gradual", "AP50": 89.5, "latency_ms_median": 10.0}], "variant_schema": 1,
            "from_the_future": {"x": 1}, **over}


def test_an_old_file_reads_as_todays_record_and_keeps_what_it_does_not_know(tmp_path):
    path = tmp_path / stages.PRUNE / stages.METRICS_FILE
    path.parent.mkdir()
    path.write_text(json.dumps(_prune_json()))
    m = stages.read_metrics(path, stages.PRUNE)
    assert m.dense_control.AP50 == 91.0 and m.gradual.delta_ap50_ci95 == [-2.5, -0.5]
    assert m.best_variant.name == "one-shot" and m.variants[0].latency_median_ms == 10.0  # former keys renamed
    assert m.extra == {"from_the_future": {"x": 1}}
    again = records.PruneMetrics.from_json(json.loads(json.dumps(m.to_json())))
    assert again == m and again.to_json()["schema"] == records.RECORD_SCHEMA


@pytest.mark.parametrize("broken, message", [
    ({"schema": records.RECORD_SCHEMA + 1}, "record schema"),
    ({"gradual": None}, "GradualRun|gradual"),
    ({"dense_control": {"iterations": 500}}, r"\[dense_control\].*DenseControl lacks ims_per_batch"),
])
def test_a_record_that_is_not_one_is_refused_with_the_file_named(tmp_path, broken, message):
    path = tmp_path / stages.PRUNE / stages.METRICS_FILE
    path.parent.mkdir()
    data = _prune_json(**broken)
    if broken.get("gradual", 0) is None:
        del data["gradual"]
    path.write_text(json.dumps(data))
    with pytest.raises(records.RecordError, match=f"{stages.PRUNE}.*metrics.json.*({message})"):
        stages.read_metrics(path, stages.PRUNE)


def test_a_file_that_is_not_a_json_object_or_not_a_stage_is_refused(tmp_path):
    path = tmp_path / stages.EVALUATE / stages.METRICS_FILE
    path.parent.mkdir()
    path.write_text("[1, 2]")
    with pytest.raises(records.RecordError, match="05_evaluate.*JSON object"):
        stages.read_metrics(path, stages.EVALUATE)
    with pytest.raises(records.RecordError, match="not a stage folder"):
        stages.read_metrics(path, "99_elsewhere")


def test_every_stage_folder_has_a_record_and_each_record_round_trips():
    assert set(stages.STAGE_RECORDS) == set(stages.STAGE_FOLDERS.values())
    minimal = {
        records.ExploreMetrics: {"images": {"train": 3}, "instances": {"train": 5}, "classes": ["zebra"]},
        records.BaselineMetrics: {"bbox": {"AP50": 1.0}, "train": {"iterations": 1, "seconds": 1.0, "ims_per_batch": 2}},
        records.PruneMetrics: {k: v for k, v in _prune_json().items() if k not in ("variant_schema", "from_the_future")},
        records.ShareMetrics: {"shared": {"conv_bits": 5, "fc_bits": 4, "before_finetune": {}, "after_finetune": {},
                                          "finetune_iterations": 100, "bit_exact": True}},
        records.ChannelsMetrics: {"best_speedup_within_1ap50_valid": 1.5, "reloaded": {"name": "reloaded", "pid": 7},
                                  "latency": {"runs": 30, "warmup": 5, "threads": 2, "images": 20}},
        records.EvaluateMetrics: {"variants": [{"name": "baseline", "AP50": 1.0, "latency_median_ms": float("nan")}],
                                  "best_compression_ratio_within_1ap50": 1.0, "best_speedup_within_1ap50": 1.0},
    }
    assert set(minimal) == set(stages.STAGE_RECORDS.values())
    for kind, data in minimal.items():
        m = kind.from_json(data)
        assert kind.from_json(json.loads(json.dumps(m.to_json()))) == m, kind.__name__
    ev = records.EvaluateMetrics.from_json(minimal[records.EvaluateMetrics])
    assert ev.variants[0].row() == {"name": "baseline", "AP50": 1.0}  # NaN: not measured, not written


def test_a_dense_control_scored_keeps_its_schedule():
    control = records.DenseControl(iterations=500, ims_per_batch=4, lr=0.01, seed=1, seconds=3.0)
    scored = control.scored({"AP50": 90.0, "AP": 60.0, "AP75": 70.0, "APs": 1.0}, valid_ap50=95.0)
    assert (scored.AP50, scored.AP75, scored.valid_AP50, scored.bbox["APs"]) == (90.0, 70.0, 95.0, 1.0)
    assert scored.iterations == 500 and control.AP50 is None  # a new record; the old one unchanged
