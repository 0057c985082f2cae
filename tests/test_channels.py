"""Channel surgery (wildlib.channels): the smaller network computes what the original computes
with the removed channels forced to zero, and rebuilds from its config + weights alone."""
import copy

import pytest
import torch

from wildlib import channels, config, modeling, widths
from wildlib.modeling import WeightsError


def _randomised(model):
    """Random BN statistics and biases, so that channels differ in importance and every channel
    carries signal (a fresh model's frozen BNs are all identity)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith(("running_var", "weight")) and buf.dim() == 1:
                buf.copy_(0.5 + torch.rand(buf.shape, generator=g))
            elif name.endswith(("running_mean", "bias")) and buf.dim() == 1:
                buf.copy_(0.1 * torch.randn(buf.shape, generator=g))
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def model_and_cfg():
    cfg = config.get_config("mobilenet_fpn_cpu", {"MODEL.MOBILENET.PRETRAINED": "none"})
    torch.manual_seed(0)
    return _randomised(modeling.build_model(cfg)), cfg


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(1)
    return {"image": torch.randint(0, 255, (3, 128, 160), generator=g, dtype=torch.uint8).float(),
            "height": 128, "width": 160}


def _parts(model, image):
    """Backbone features, RPN head outputs and box head + predictor outputs on fixed boxes."""
    from detectron2.structures import Boxes

    with torch.no_grad():
        feats = model.backbone(model.preprocess_image([image]).tensor)
        rpn = model.proposal_generator.rpn_head([feats[f] for f in model.proposal_generator.in_features])
        boxes = [Boxes(torch.tensor([[4.0, 6.0, 60.0, 70.0], [30.0, 20.0, 150.0, 120.0], [0.0, 0.0, 40.0, 30.0]]))]
        pooled = model.roi_heads.box_pooler([feats[f] for f in model.roi_heads.in_features], boxes)
        head = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
    return feats, rpn, head


GROUPS = ["block2", "block5", "block12", "block17", "fpn_inner", "fpn_out", "rpn", "box_fc1", "box_fc2"]


@pytest.mark.parametrize("name", GROUPS)
def test_surgery_equals_zeroed_channels(model_and_cfg, image, name):
    model, _ = model_and_cfg
    group = next(g for g in channels.groups(model) if g.name == name)
    keep = torch.sort(torch.randperm(group.width, generator=torch.Generator().manual_seed(2))[: group.width // 2]).values
    drop = sorted(set(range(group.width)) - set(keep.tolist()))
    small = copy.deepcopy(model)
    channels.narrow_group_(small, group, keep)
    with channels.zeroed(model, group, drop):
        ref_feats, ref_rpn, ref_head = _parts(model, image)
    feats, rpn, head = _parts(small, image)
    plain_feats, plain_rpn, plain_head = _parts(model, image)
    for k in ref_feats:
        want = ref_feats[k][:, keep] if name == "fpn_out" else ref_feats[k]
        assert feats[k].shape == want.shape
        assert torch.allclose(feats[k], want, atol=1e-4), k
    # the zeroing did change something: the test compares two non-trivial computations
    changed = any(not torch.allclose(plain_feats[k], ref_feats[k]) for k in ref_feats)
    changed |= any(not torch.allclose(a, b) for x, y in zip(plain_rpn, ref_rpn) for a, b in zip(x, y))
    changed |= any(not torch.allclose(a, b) for a, b in zip(plain_head, ref_head))
    assert changed
    for a, b in zip(ref_rpn, rpn):
        for x, y in zip(a, b):
            assert torch.allclose(x, y, atol=1e-4)
    for x, y in zip(ref_head, head):
        assert torch.allclose(x, y, atol=1e-4)


def test_pruned_model_rebuilds_from_config_and_weights(model_and_cfg, image, tmp_path):
    model, cfg = model_and_cfg
    ratios = {f: 0.5 for f in channels.FAMILIES}
    small = channels.prune(model, ratios)
    assert sum(p.numel() for p in small.parameters()) < 0.6 * sum(p.numel() for p in model.parameters())
    w = channels.widths(small)
    assert w["MODEL.FPN.OUT_CHANNELS"] == 32 and w["MODEL.ROI_BOX_HEAD.FC_DIM"] == 256
    assert w["MODEL.MOBILENET.HIDDEN_CHANNELS"][0] == 32  # block 1 has no expansion layer: untouched
    assert all(h % channels.ROUND_TO == 0 for h in w["MODEL.MOBILENET.HIDDEN_CHANNELS"])
    small_cfg = channels.config_for(cfg, small)
    (tmp_path / "detectron2.yaml").write_text(small_cfg.dump())
    modeling.save_weights(small, tmp_path / "model_final.pth")
    _, rebuilt = modeling.load_trained(tmp_path)
    with torch.no_grad():
        a, b = small([image])[0]["instances"], rebuilt([image])[0]["instances"]
    assert len(a) == len(b) and torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_weights_of_another_shape_are_refused_naming_the_file(model_and_cfg, tmp_path):
    model, cfg = model_and_cfg
    small = channels.prune(model, {"box_head": 0.5})
    (tmp_path / "detectron2.yaml").write_text(channels.config_for(cfg, small).dump())
    modeling.save_weights(model, tmp_path / "model_final.pth")  # the unpruned weights
    with pytest.raises(WeightsError, match=r"model_final\.pth: .*fc1\.weight has shape \[512, 3136\]"):
        modeling.load_trained(tmp_path)


def test_the_most_important_channels_are_kept(model_and_cfg):
    model = copy.deepcopy(model_and_cfg[0])
    fc1 = model.roi_heads.box_head.fc1
    with torch.no_grad():
        fc1.weight[:8] *= 100  # units 0..7 write far more than the rest
    keep = channels.plan(model, {"box_head": 0.75})["box_fc1"]
    assert len(keep) == 128 and set(range(8)) <= set(keep.tolist())


def test_kept_width_rounds_to_simd_multiples():
    assert channels.kept_width(960, 0.5) == 480 and channels.kept_width(144, 0.25) == 112
    assert channels.kept_width(64, 0.99) == 8 and channels.kept_width(6, 0.5) == 6
    with pytest.raises(ValueError):
        channels.kept_width(64, 1.0)


def test_hidden_widths_are_checked():
    with pytest.raises(config.ConfigError, match="17 widths"):
        modeling.build_model(config.get_config("mobilenet_fpn_cpu", {"MODEL.MOBILENET.HIDDEN_CHANNELS": [8, 8]}))
    hidden = widths.default_hidden_widths()
    hidden[0] = 16  # block 1 has no expansion layer
    with pytest.raises(config.ConfigError, match=r"HIDDEN_CHANNELS\[0\]"):
        modeling.build_model(config.get_config("mobilenet_fpn_cpu", {"MODEL.MOBILENET.HIDDEN_CHANNELS": hidden}))


def test_unknown_family_is_an_error(model_and_cfg):
    with pytest.raises(ValueError, match="unknown families"):
        channels.plan(model_and_cfg[0], {"stem": 0.5})
