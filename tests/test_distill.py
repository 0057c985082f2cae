"""Distillation from the dense teacher (wildlib.distill): each term against a value worked out by
hand, and the hook inside a real Detectron2 training."""

import functools
import math

import pytest
import torch
from detectron2.utils.events import EventStorage

from wildlib import config, data, distill, modeling, stages, train


def test_class_kl_is_the_kl_of_the_tempered_softmax_times_t_squared():
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # softmax (0.75, 0.25)
    student = torch.tensor([[0.0, 0.0]])            # softmax (0.5, 0.5)
    by_hand = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert distill.class_kl(student, teacher, 1.0).item() == pytest.approx(by_hand, rel=1e-5)
    # at T = 2 the teacher's softmax is (sqrt 3, 1) / (sqrt 3 + 1), and the KL is scaled by 4
    p = math.sqrt(3.0) / (math.sqrt(3.0) + 1.0)
    by_hand_t2 = 4.0 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    assert distill.class_kl(student, teacher, 2.0).item() == pytest.approx(by_hand_t2, rel=1e-5)
    assert distill.class_kl(teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_objectness_kl_is_zero_when_they_agree_and_the_bernoulli_kl_otherwise():
    teacher = [torch.zeros(1, 1, 1, 1)]                    # p = 0.5
    student = [torch.full((1, 1, 1, 1), math.log(3.0))]    # q = 0.75
    by_hand = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert distill.objectness_kl(student, teacher).item() == pytest.approx(by_hand, rel=1e-5)
    same = [torch.randn(2, 3, 4, 5)]
    assert distill.objectness_kl(same, same).item() == pytest.approx(0.0, abs=1e-6)


def test_object_masks_cover_the_boxes_at_each_stride():
    mask = distill.object_masks([torch.tensor([[8.0, 8.0, 24.0, 16.0]])], (1, 7, 4, 5), stride=8)
    expected = torch.zeros(1, 1, 4, 5)
    expected[0, 0, 1:2, 1:3] = 1.0  # rows 8-16, columns 8-24 at stride 8
    assert torch.equal(mask, expected)
    edge = distill.object_masks([torch.tensor([[30.0, 0.0, 99.0, 3.0]])], (1, 1, 2, 2), stride=16)
    assert edge[0, 0].tolist() == [[0.0, 1.0], [0.0, 0.0]]  # clipped to the map


def test_feature_imitation_inside_boxes_and_refusing_other_channels():
    s, t = {"p2": torch.zeros(1, 2, 4, 4)}, {"p2": torch.zeros(1, 2, 4, 4)}
    t["p2"][0, :, 0, 0] = 2.0  # differs at one location, inside the box below
    assert distill.feature_imitation(s, t, {"p2": 4}).item() == pytest.approx(2 * 4.0 / 32)
    # the box covers 4 locations x 2 channels: the squared error 8 over 8 values
    box = [torch.tensor([[0.0, 0.0, 8.0, 8.0]])]
    assert distill.feature_imitation(s, t, {"p2": 4}, box).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="FPN level p2"):
        distill.feature_imitation({"p2": torch.zeros(1, 1, 4, 4)}, t, {"p2": 4})


def test_weights_are_checked():
    with pytest.raises(ValueError, match="weights must be finite"):
        distill.Distill("a.yaml", "b.pth", cls=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        distill.Distill("a.yaml", "b.pth", temperature=0.0)


@pytest.fixture(scope="module")
def student(smoke_data, tmp_path_factory):
    """A tiny training config, and a teacher folder holding its model's initial weights."""
    out = tmp_path_factory.mktemp("distill")
    data.register(smoke_data, coco_dir=out / "coco")
    over = stages.baseline_overrides(out / "student", device="cpu", max_iter=3, ims_per_batch=2, lr=0.001,
                                     eval_period=0, seed=0)
    over.update({"MODEL.MOBILENET.PRETRAINED": "none", "TEST.EVAL_PERIOD": 0, "SOLVER.CHECKPOINT_PERIOD": 100})
    cfg = config.get_config("mobilenet_fpn_cpu", over)
    torch.manual_seed(0)
    teacher = modeling.build_model(cfg, weights="")
    (out / "teacher").mkdir()
    (out / "teacher" / "detectron2.yaml").write_text(cfg.dump())
    modeling.save_weights(teacher, out / "teacher" / "model_final.pth")
    return cfg, out / "teacher"


def _one_step(cfg, student_weights, teacher_dir, **weights):
    """A student with ``student_weights`` in training mode, the hook attached with ``teacher_dir``'s
    model as teacher, and its loss dict on one training batch."""
    model = modeling.load_exact(modeling.build_model(cfg, weights="", eval_mode=False), student_weights).train()
    hook = distill.Distill(teacher_dir / "detectron2.yaml", teacher_dir / "model_final.pth", **weights)
    hook.teacher = distill.load_teacher(hook.teacher_config, hook.teacher_weights)
    hook.attach(model)
    with EventStorage():  # the losses log to Detectron2's storage, as inside its training loop
        return model, hook, model(next(iter(train.Trainer.build_train_loader(cfg))))


def test_a_student_equal_to_its_teacher_gets_zero_terms_and_a_different_one_is_pulled_toward_it(student, tmp_path):
    cfg, teacher_dir = student
    _, hook, losses = _one_step(cfg, teacher_dir / "model_final.pth", teacher_dir, cls=1.0, rpn=1.0, fpn=1.0)
    hook.detach()
    assert {"loss_cls", "loss_rpn_cls"} <= set(losses) and set(distill.LOSS_KEYS) <= set(losses)
    for k in distill.LOSS_KEYS:
        assert losses[k].item() == pytest.approx(0.0, abs=1e-5), k
    # a teacher with other weights: each term is positive and its gradient reaches the student's backbone
    other = tmp_path / "other"
    other.mkdir()
    (other / "detectron2.yaml").write_text((teacher_dir / "detectron2.yaml").read_text())
    weights = torch.load(teacher_dir / "model_final.pth", weights_only=True)["model"]
    torch.manual_seed(1)
    weights = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in weights.items()}
    torch.save({"model": weights}, other / "model_final.pth")
    model, hook, losses = _one_step(cfg, teacher_dir / "model_final.pth", other, cls=1.0, rpn=1.0, fpn=1.0)
    for k in distill.LOSS_KEYS:
        assert losses[k].item() > 1e-6, k
        model.zero_grad()
        losses[k].backward(retain_graph=True)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters()), k
    assert not any(p.requires_grad for p in hook.teacher.parameters())
    # in eval mode the student is left alone: its detections, no terms, no teacher run
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.zeros(3, 64, 64), "height": 64, "width": 64}])
    assert isinstance(out, list) and hook.steps == 1
    hook.detach()


def test_the_hook_in_a_training_logs_its_terms_and_saves_the_student_alone(student):
    cfg, teacher_dir = student
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(teacher_dir / "model_final.pth")
    cfg.freeze()
    hook = functools.partial(distill.Distill, teacher_dir / "detectron2.yaml", teacher_dir / "model_final.pth",
                             cls=1.0, rpn=0.5, fpn=0.0)
    result = train.train(cfg, hooks=[hook])
    assert len(result["losses"]) == 3
    assert all({"loss_distill_cls", "loss_distill_rpn"} <= set(r) and "loss_distill_fpn" not in r
               for r in result["losses"])
    state = result["hook_states"][0]
    assert state["steps"] == 3 and state["teacher_s_per_step"] > 0 and state["weights"]["rpn"] == 0.5
    saved = torch.load(f"{cfg.OUTPUT_DIR}/{train.TRAINED_FILE}", weights_only=True)["model"]
    assert set(saved) == set(modeling.build_model(cfg, weights="").state_dict())  # no teacher inside


def test_a_later_fine_tuning_repeats_02s_terms_without_features_a_narrower_fpn_cannot_match(untrained_cfg):
    recorded = {"teacher_config": "t.yaml", "teacher_weights": "t.pth", "weights": {"cls": 1.0, "rpn": 0.5, "fpn": 2.0},
                "temperature": 3.0, "near_objects": True, "steps": 10, "teacher_s_per_step": 0.1}
    assert stages.distill_settings(None, untrained_cfg, untrained_cfg) == ({}, None)
    same, why = stages.distill_settings(recorded, untrained_cfg, untrained_cfg)
    assert same == {"cls": 1.0, "rpn": 0.5, "fpn": 2.0, "temperature": 3.0, "near_objects": True} and why is None
    narrow = untrained_cfg.clone()
    narrow.defrost()
    narrow.MODEL.FPN.OUT_CHANNELS = untrained_cfg.MODEL.FPN.OUT_CHANNELS // 2
    off, why = stages.distill_settings(recorded, narrow, untrained_cfg)
    assert off == {**same, "fpn": 0.0} and f"{narrow.MODEL.FPN.OUT_CHANNELS} channels" in why
    assert stages.distillation("b", "w", **off) is not None  # the keywords are distillation()'s
