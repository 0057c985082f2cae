"""The test-time compute knobs of a detector: RPN proposals kept before and after NMS, detections
kept per image, the test input size.  Introduced in notebook 04_prune_channels, section 2."""

from __future__ import annotations


def test_time(model, pre_nms: int | None = None, post_nms: int | None = None, detections: int | None = None):
    """Set the test-time compute knobs of ``model`` in place: RPN proposals kept per level before
    NMS, proposals kept after it (what the box head sees), detections kept per image.
    Introduced in notebook 04_prune_channels, section "2 · Test-time knobs before surgery"."""
    rpn = model.proposal_generator
    if pre_nms is not None:
        rpn.pre_nms_topk = {True: rpn.pre_nms_topk[True], False: int(pre_nms)}
    if post_nms is not None:
        rpn.post_nms_topk = {True: rpn.post_nms_topk[True], False: int(post_nms)}
    if detections is not None:
        model.roi_heads.box_predictor.test_topk_per_image = int(detections)
    return model


def test_time_of(model) -> dict:
    return {"pre_nms": model.proposal_generator.pre_nms_topk[False],
            "post_nms": model.proposal_generator.post_nms_topk[False],
            "detections": model.roi_heads.box_predictor.test_topk_per_image}


def with_test_time(cfg, pre_nms: int, post_nms: int, detections: int, min_size: int | None = None):
    """``cfg`` with these test-time settings (and test input size: shortest edge ``min_size``, the
    longest edge scaled alike).
    Introduced in notebook 04_prune_channels, section "2 · Test-time knobs before surgery"."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = int(pre_nms)
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = int(post_nms)
    cfg.TEST.DETECTIONS_PER_IMAGE = int(detections)
    if min_size is not None and int(min_size) != cfg.INPUT.MIN_SIZE_TEST:
        cfg.INPUT.MAX_SIZE_TEST = int(round(cfg.INPUT.MAX_SIZE_TEST * int(min_size) / cfg.INPUT.MIN_SIZE_TEST))
        cfg.INPUT.MIN_SIZE_TEST = int(min_size)
    cfg.freeze()
    return cfg
