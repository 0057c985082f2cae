"""Magnitude pruning of a Detectron2 Faster R-CNN with ``torch.nn.utils.prune``.

* **Scopes** are the detector's parts (:mod:`wildlib.parts`) that hold prunable weights (conv and
  linear ``weight`` tensors): ``backbone`` (bottom-up network), ``fpn``, ``rpn``, ``box_head``
  (the box head's FCs) and ``box_predictor`` (the final classifier/regressor, excluded unless
  asked).  ``all`` means every scope but ``box_predictor``.  Combine with ``+``:
  ``"backbone+box_head"``.
* **One-shot** global L1 pruning (the paper's method), **sensitivity** scans per layer group,
  **gradual** pruning on Zhu & Gupta's cubic schedule while fine-tuning (a Detectron2 hook).
* **Ranking** (a pruning criterion: weights -> a score per entry, registered by name with
  ``register_ranking``; every pruning function takes ``ranking=``): ``"l1"`` ranks raw magnitudes across all layers together (the paper).  Layers
  differ in scale (a fan-in of 4704 gives small weights), so global L1 empties whole layers;
  ``"lamp"`` ranks by the layer-adaptive magnitude score of Lee et al. (ICLR 2021),
  ``w_i^2 / sum_{|w_j| >= |w_i|} w_j^2`` within each layer, which is scale-free and keeps every
  layer alive while still choosing per-layer sparsities globally.
* **Size accounting** from the tensors themselves, and a sparse file whose size is measured.

The package, by concern: ``masks`` (scopes, rankings, masks, sparsity), ``experiments`` (the
sweeps and tables of notebook 02), ``gradual`` (the cubic schedule as a training hook),
``sparse_file`` (the sparse ``.npz`` format).  PyTorch's own module is imported as
``torch_prune`` throughout, never under this package's name.
"""

from .experiments import (from_pick, one_shot_pick, one_shot_sweep, pick_name, ratios_from_sensitivity, reported_row,
                          reported_rows, sensitivity_scan)
from .gradual import END_FRACTION, GradualPruning, cubic_schedule, schedule_of
from .masks import (DEFAULT_SCOPES, RANKINGS, SCOPES, check_ranking, global_magnitude, group_of, group_sparsity,
                    l1_scores, lamp_scores, layerwise_magnitude, magnitude_cuts, make_permanent, parse_scopes, prunable, pruned_copy,
                    ranked_scores, register_ranking, scope_of, sparsity, sparsity_at, sparsity_table, state_sparsity)
from .sparse_file import SparseFileError, load_sparse, save_sparse

__all__ = ["DEFAULT_SCOPES", "END_FRACTION", "RANKINGS", "SCOPES", "GradualPruning", "SparseFileError", "check_ranking",
           "cubic_schedule", "from_pick", "global_magnitude", "group_of", "group_sparsity", "l1_scores", "lamp_scores",
           "layerwise_magnitude", "load_sparse", "magnitude_cuts", "make_permanent", "one_shot_pick", "one_shot_sweep", "parse_scopes",
           "pick_name", "prunable", "pruned_copy", "ranked_scores", "ratios_from_sensitivity", "register_ranking", "reported_row",
           "reported_rows", "save_sparse", "schedule_of", "scope_of", "sensitivity_scan", "sparsity", "sparsity_at", "sparsity_table",
           "state_sparsity"]
