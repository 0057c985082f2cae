"""The detector's parts: one vocabulary for everything that names a piece of the Faster R-CNN —
pruning scopes (:mod:`wildlib.prune`), the time profile (:mod:`wildlib.profile`), channel groups
and families (:mod:`wildlib.channels`) and sensitivity scans.  Introduced in notebook
01_train_baseline, section "Where the time goes".

A part is found from a module's name in Detectron2's ``GeneralizedRCNN`` by the longest matching
prefix (:func:`part_of`):

``backbone``       the bottom-up network (MobileNetV2's feature stages, ``BACKBONE_STAGES``)
``fpn``            the feature pyramid: lateral and output convs (the backbone but its bottom-up part)
``rpn``            the region proposal network: its head, anchors, proposal selection and NMS
``roi_pooler``     ROIAlign (no weights)
``box_head``       the box head's FC layers
``box_predictor``  the final classifier and box regressor
``roi_other``      the rest of the ROI heads: proposal sampling in training, box decoding and
                   per-class NMS at test time (no weights)
``other``          anything else: input normalisation, resizing the outputs
"""

from __future__ import annotations

PARTS = {  # name: module-name prefix in a GeneralizedRCNN
    "backbone": "backbone.bottom_up",
    "fpn": "backbone",
    "rpn": "proposal_generator",
    "roi_pooler": "roi_heads.box_pooler",
    "box_head": "roi_heads.box_head",
    "box_predictor": "roi_heads.box_predictor",
    "roi_other": "roi_heads",
}
OTHER = "other"
PART_NAMES = tuple(PARTS) + (OTHER,)  # every part, as the profile lists them

# The backbone's stages, named as Detectron2 names ResNet's (res2..res5): name -> (first feature
# block, end block, stride, channels) in torchvision's mobilenet_v2().features.
BACKBONE_STAGES = {
    "stem": (0, 2, 2, 16),
    "m2": (2, 4, 4, 24),
    "m3": (4, 7, 8, 32),
    "m4": (7, 14, 16, 96),
    "m5": (14, 18, 32, 320),
}


def part_of(module_name: str) -> str:
    """The part a (sub)module belongs to, by the longest matching prefix in :data:`PARTS`;
    :data:`OTHER` if none matches."""
    best, best_len = OTHER, -1
    for part, prefix in PARTS.items():
        if (module_name == prefix or module_name.startswith(prefix + ".")) and len(prefix) > best_len:
            best, best_len = part, len(prefix)
    return best


def backbone_stage_of(module_name: str) -> str | None:
    """The backbone stage a module of the bottom-up network is in (``stem``, ``m2`` .. ``m5``; a
    ResNet's ``res2`` .. ``res5``); None outside the bottom-up network."""
    prefix = PARTS["backbone"] + "."
    if not module_name.startswith(prefix) or "." not in module_name[len(prefix):]:
        return None
    return module_name[len(prefix):].split(".", 1)[0]


# Names runs wrote before the vocabulary was one (pruning scopes): read, never written.
FORMER_NAMES = {"roi_head": "box_head", "predictor": "box_predictor"}


def current_names(spec: str) -> str:
    """A ``+``-joined list of part names as written by a run of any age, in today's names."""
    return "+".join(FORMER_NAMES.get(n, n) for n in spec.split("+"))
