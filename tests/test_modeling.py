import pickle

import pytest
import torch

from wildlib import config, modeling


def test_mobilenet_fpn_shapes_from_scratch(untrained_cfg, untrained_model):
    cfg, model = untrained_cfg, untrained_model
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 224, 320))
    assert {k: tuple(v.shape[-2:]) for k, v in feats.items()} == {
        "p2": (56, 80), "p3": (28, 40), "p4": (14, 20), "p5": (7, 10), "p6": (4, 5)}
    assert all(v.shape[1] == cfg.MODEL.FPN.OUT_CHANNELS for v in feats.values())
    # FREEZE_AT=2: stem and m2 are frozen, later stages train
    bu = model.backbone.bottom_up
    assert not any(p.requires_grad for p in bu.m2.parameters())
    assert all(p.requires_grad for p in bu.m3.parameters())


def test_imagenet_init_is_torchvisions_file():
    import torchvision

    ref = torchvision.models.mobilenet_v2()
    ref.load_state_dict(modeling.load_mobilenet_state())
    model = modeling.build_model(config.get_config())
    got = model.backbone.bottom_up.m4[0].conv[0][0].weight
    assert torch.equal(got, ref.features[7].conv[0][0].weight)


def test_checksum_mismatch_is_an_error(tmp_path, monkeypatch):
    fake = tmp_path / modeling.MOBILENET_V2_FILE
    torch.save({"features.0.0.weight": torch.zeros(1)}, fake)
    monkeypatch.setenv("WILDLIB_MOBILENET_WEIGHTS", str(fake))
    with pytest.raises(modeling.WeightsError, match="does not match the expected"):
        modeling.build_model(config.get_config())


def test_missing_weights_say_how_to_go_on(tmp_path, monkeypatch):
    monkeypatch.setenv("WILDLIB_MOBILENET_WEIGHTS", str(tmp_path / "absent.pth"))
    with pytest.raises(modeling.WeightsError, match="PRETRAINED=none"):
        modeling.build_model(config.get_config())


def test_paper_config_loads_a_model_zoo_checkpoint(tmp_path):
    """The COCO model-zoo file cannot be downloaded here, so the test writes one in the same
    format (a pickle of numpy arrays under 'model', 80 COCO classes) and fine-tunes from it."""
    coco_cfg = config.get_config("paper_r50_fpn", {"MODEL.DEVICE": "cpu", "MODEL.WEIGHTS": "",
                                                    "MODEL.ROI_HEADS.NUM_CLASSES": 80})
    coco_model = modeling.build_model(coco_cfg)
    pkl = tmp_path / "model_final_280758.pkl"
    with open(pkl, "wb") as fh:
        pickle.dump({"model": {k: v.numpy() for k, v in coco_model.state_dict().items()},
                     "__author__": "Detectron2 Model Zoo"}, fh)
    cfg = config.get_config("paper_r50_fpn", {"MODEL.DEVICE": "cpu",
                                               "MODEL.WEIGHTS": modeling.resolve_weights(cfg_url(), pkl)})
    assert cfg.MODEL.WEIGHTS == str(pkl)
    model = modeling.build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 41e6
    w = "backbone.bottom_up.res4.2.conv2.weight"
    assert torch.equal(model.state_dict()[w], coco_model.state_dict()[w])
    # the 81-way COCO classifier does not fit 13 classes and is left at its fresh init
    assert model.roi_heads.box_predictor.cls_score.out_features == 14


def cfg_url():
    return config.get_config("paper_r50_fpn").MODEL.WEIGHTS


def test_paper_config_is_the_papers_schedule():
    cfg = config.get_config("paper_r50_fpn")
    assert cfg.MODEL.WEIGHTS.startswith("detectron2://COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/")
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER) == (8, 0.02, 2000)
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 13
    assert min(cfg.INPUT.MIN_SIZE_TRAIN) == 640 and max(cfg.INPUT.MIN_SIZE_TRAIN) == 800


def test_weights_only_file_reloads(untrained_cfg, untrained_model, tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    a = untrained_model
    path = modeling.save_weights(a, tmp_path / "w.pth")
    assert set(torch.load(path, weights_only=True)) == {"model"}
    with torch.random.fork_rng():  # the session's random state is left as it was
        torch.manual_seed(1)  # not the shared model's seed: b starts out different from a
        b = modeling.build_model(untrained_cfg)
    assert not all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    DetectionCheckpointer(b).load(str(path))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_the_same_weights_make_the_same_bytes_whatever_the_file_is_called(untrained_model, tmp_path):
    a = modeling.save_weights(untrained_model, tmp_path / "w.pth")
    b = modeling.save_weights(untrained_model, tmp_path / "a much longer folder name" / "model_final.pth")
    assert a.read_bytes() == b.read_bytes()  # a file's size is a result: not the temporary name's length


def test_unknown_config_name_lists_the_known_ones():
    with pytest.raises(FileNotFoundError, match="mobilenet_fpn_cpu"):
        config.get_config("nope")


def test_overrides_must_be_pairs():
    with pytest.raises(ValueError, match="odd number"):
        config.get_config("mobilenet_fpn_cpu", ["SOLVER.MAX_ITER"])
