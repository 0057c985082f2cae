"""wildlib.fit: the settings stage 00 fits to the data, one rule at a time, each on data made to
need it, and none of them on the data the defaults were made for."""
import numpy as np
import pytest

from wildlib import cluster, config, data, fit


@pytest.fixture(scope="module")
def cfg():
    return config.get_config("mobilenet_fpn_cpu", {})


def _records(n: int, size=(320, 240), boxes=((40, 40),), per_image: int = 1) -> list[dict]:
    """``n`` images of ``size`` (width, height), each with ``per_image`` boxes cycling ``boxes``."""
    w, h = size
    out = []
    for i in range(n):
        anns = []
        for j in range(per_image):
            bw, bh = boxes[(i + j) % len(boxes)]
            x, y = (7 * j) % max(1, w - bw), (5 * j) % max(1, h - bh)
            anns.append({"bbox": [x, y, x + bw, y + bh], "category_id": 0})
        out.append({"file_name": f"img{i}.jpg", "image_id": f"img{i}", "voc_id": f"img{i}", "height": h, "width": w,
                    "annotations": anns})
    return out


def test_data_the_defaults_were_made_for_keeps_them(cfg, smoke_data):
    recs = {s: data.load_split(smoke_data, s) for s in ("train", "valid")}
    got = fit.suggested_settings(recs, cfg, ims_per_batch=8)
    assert got["overrides"] == {} and got["reasons"] == []


def test_small_images_are_kept_at_native_resolution(cfg):
    """400-px aerial tiles with 39-px animals: shrunk to 240 px they would be 23 px."""
    recs = {"train": _records(36, size=(400, 400), boxes=((39, 39), (30, 50)), per_image=20)}
    got = fit.suggested_settings(recs, cfg)
    over = got["overrides"]
    assert over["INPUT.MIN_SIZE_TEST"] == 400 and over["INPUT.MAX_SIZE_TEST"] == round(320 * 400 / 240)
    assert over["INPUT.MIN_SIZE_TRAIN"] == [round(s * 400 / 240) for s in cfg.INPUT.MIN_SIZE_TRAIN]
    assert any("native resolution" in r for r in got["reasons"])
    warn = {w["check"]: w for w in data.dataset_warnings(recs, ["zebra"], **config.input_geometry(cfg))}
    assert warn["resolution_lost_at_input"]["median_downscale"] == pytest.approx(400 / 240)
    # images already at the input size are not enlarged for it
    native = {"train": _records(36, size=(320, 240), boxes=((39, 39),), per_image=20)}
    assert "INPUT.MIN_SIZE_TEST" not in fit.suggested_settings(native, cfg)["overrides"]


def test_anchors_follow_the_boxes_only_where_the_configs_do_not_fit(cfg):
    thin = {"train": _records(40, boxes=((4, 200), (5, 180), (6, 220)))}  # poles, 40x taller than wide
    wh = fit.box_shapes(thin["train"], 240, 320)
    sizes, ratios = cfg.MODEL.ANCHOR_GENERATOR.SIZES, cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS
    assert fit.anchor_coverage(wh, sizes, ratios) < fit.ANCHOR_FIT
    over = fit.suggested_settings(thin, cfg)["overrides"]
    new_sizes, new_ratios = over["MODEL.ANCHOR_GENERATOR.SIZES"], over["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"]
    assert len(new_sizes) == len(sizes) and max(new_ratios[0]) > 20  # height / width, as the boxes
    assert fit.anchor_coverage(wh, new_sizes, new_ratios) == 1.0
    square = {"train": _records(40, boxes=((40, 40), (60, 50)))}
    assert "MODEL.ANCHOR_GENERATOR.SIZES" not in fit.suggested_settings(square, cfg)["overrides"]


def test_kmeans_finds_the_clusters_in_order():
    x = np.r_[np.full(10, 1.0), np.full(10, 5.0), np.full(5, 9.0)]
    assert cluster.kmeans_1d(x, 3, init="density")[0] == pytest.approx([1.0, 5.0, 9.0])
    assert fit.fitted_anchors(np.full((4, 2), 20.0), 3)[0] == [[20.0]] * 3  # one distinct size: repeated


def test_sampling_and_proposals_scale_with_boxes_per_image(cfg):
    crowded = {"train": _records(10, size=(400, 400), boxes=((20, 20),), per_image=61)}
    over = fit.suggested_settings(crowded, cfg)["overrides"]
    assert over["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"] == 512  # 6 positives per box at 25% positives, capped
    assert over["MODEL.RPN.POST_NMS_TOPK_TEST"] == 700 and over["MODEL.RPN.PRE_NMS_TOPK_TEST"] == 1400
    few = {"train": _records(10, per_image=2)}
    assert not {k for k in fit.suggested_settings(few, cfg)["overrides"] if "ROI_HEADS" in k or "RPN" in k}


@pytest.mark.parametrize("n, batch, want", [(461, 8, 1200), (36, 8, fit.MIN_ITER), (10**6, 8, fit.MAX_ITER_CAP),
                                            (1000, 8, 2600), (1000, 4, 5250)])
def test_the_schedule_is_in_passes_over_the_training_set(n, batch, want):
    assert fit.training_iterations(n, batch) == want
    got = fit.suggested_settings({"train": _records(n if n < 2000 else 10)}, config.get_config("mobilenet_fpn_cpu", {}),
                                 ims_per_batch=batch)["schedule"]
    assert got["epochs"] == fit.EPOCHS and (n >= 2000 or got["max_iter"] == want)
