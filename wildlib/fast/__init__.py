"""Fast CPU inference: the detector's convolutional and FC parts run in ONNX Runtime, in fp32 or
in int8 (static quantization: real int8 kernels), while Detectron2's own code keeps doing the rest
in float.  Introduced in notebook 04_prune_channels.

Two ONNX graphs stand in for the modules of the ``GeneralizedRCNN`` they were exported from:

``backbone``  MobileNetV2 + FPN + the RPN head's convs, in one graph (one call, one wake-up of
              ONNX Runtime's threads): the normalised, padded image -> p2..p6, and the RPN's
              objectness logits and anchor deltas per level (handed to the RPN through
              :class:`OrtRPNHead`)
``box_head``  the box head's FC layers: pooled 7x7 features -> box features

What stays float, in PyTorch (``FLOAT_PARTS``): input normalisation and padding, anchor generation,
proposal top-k and NMS, ROIAlign, the box predictor, box decoding, per-class NMS and rescaling.
Two of those run leaner, with the same results (:func:`lean`): the RPN decodes only the anchors it
keeps (``TopKFirstRPN``: Detectron2 decodes every anchor, then keeps the top k), and anchors are
computed once per feature-map size (``CachedAnchorGenerator``).

Why ONNX Runtime: measured in notebook 04 (docs/speed.md).  PyTorch's FX graph-mode quantization cannot
trace Detectron2's FrozenBatchNorm/FPN (data-dependent control flow), PT2E needs ``torch.export``
+ Inductor compilation, and Detectron2 0.6's own ``detectron2.export`` imports caffe2.
ONNX Runtime runs the exported fp32 graph about 3x faster than PyTorch eager on this CPU already,
and its static int8 quantization (QDQ, per-channel weights) uses its int8 convolution kernels.

The whole detector also goes into **one** ONNX graph (:mod:`~wildlib.fast.one_graph`: ROIAlign as
ONNX ``RoiAlign``, NMS as ``NonMaxSuppression``), run in one session: no tensor returns to Python
between the image and the boxes.

A deployable model is a folder (:mod:`~wildlib.fast.deployable`), of either kind.

The package, by part: :mod:`~wildlib.fast.knobs` (test-time settings), :mod:`~wildlib.fast.lean_parts`
(the leaner float parts), :mod:`~wildlib.fast.graphs` (ONNX export and int8 quantization),
:mod:`~wildlib.fast.runtime` (ONNX Runtime modules), :mod:`~wildlib.fast.deployable` (the folder).
What is measured with them (speed tables, knob sweeps, a reload in a fresh process) is an
experiment: :mod:`wildlib.speed`.  The notebooks call the names below as ``wl.fast.<name>``.
"""

from . import qat  # quantization-aware fine-tuning: wl.fast.qat.finetune
from .deployable import CONFIG, GRAPH_FILE, MANIFEST, PREDICTOR, deploy_bytes, load, save, save_graph
from .graphs import CALIB_IMAGES, GRAPHS, calibration_data, export, quantize
from .knobs import test_time, test_time_of, with_test_time
from .lean_parts import CachedAnchorGenerator, TopKFirstRPN, lean, lean_config
from .one_graph import (GRAPH_PARTS, OneGraphDetector, WholeDetector, canvas_of, export_graph, graph_inputs,
                        graph_part_of, quantize_graph)
from .runtime import FLOAT_PARTS, OrtGraph, RuntimeSettings, attach, check_onnx, read_onnx

__all__ = ["CALIB_IMAGES", "CONFIG", "FLOAT_PARTS", "GRAPHS", "GRAPH_FILE", "GRAPH_PARTS", "MANIFEST", "PREDICTOR",
           "CachedAnchorGenerator", "OneGraphDetector", "OrtGraph", "RuntimeSettings", "TopKFirstRPN", "WholeDetector",
           "attach", "calibration_data", "qat", "canvas_of", "check_onnx", "deploy_bytes", "export", "export_graph",
           "graph_inputs", "graph_part_of", "lean", "lean_config", "load", "quantize", "quantize_graph", "read_onnx",
           "save", "save_graph", "test_time", "test_time_of", "with_test_time"]
