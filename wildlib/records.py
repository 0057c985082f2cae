"""What each stage measured, as typed records: the schema of every ``metrics.json``.

A stage builds its record (``PruneMetrics(...)``), :func:`wildlib.stages.save_stage` writes it with
the schema version, and :func:`wildlib.stages.metrics_of` / :func:`wildlib.stages.load_stage` read
it back as the same class; later stages and :mod:`wildlib.report` read fields
(``prune.metrics.dense_control.ims_per_batch``), not deep paths into a dict.  COCO's own metrics
(``bbox``: ``AP``, ``AP50``, ...) and settings tables stay dicts under their own keys.

Reading is forgiving where it can be and strict where it must be: a file written before the
records had a schema (``schema`` absent) reads alike, renamed keys are mapped (``FORMER_KEYS``),
keys this version does not know are kept in ``extra`` and written back; a missing required field
or a newer schema is an error that names the file.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

RECORD_SCHEMA = 1  # of the stage records, written into every metrics.json as "schema"; absent = 0 (read alike)
VARIANT_SCHEMA = 2  # of Variant rows ("variant_schema"); 1: before they were one record (FORMER_KEYS)
FORMER_KEYS = {"variant": "name", "latency_ms_median": "latency_median_ms", "latency_ms_p90": "latency_p90_ms",
               "best_speedup_within_1ap50": "best_speedup_within_1ap50_valid"}  # 04's, renamed for its split (05's is on test)


class RecordError(ValueError):
    """A ``metrics.json`` that is not the record its stage writes (names the file)."""


@dataclass(kw_only=True)
class _Record:
    """The reading and writing shared by every record.  ``NESTED``: fields that hold another
    record (or, in ``LISTS``, a list of them); ``OMIT_NONE``: leave unmeasured fields out of the
    JSON (a row) rather than writing them as null (a stage's full record)."""

    NESTED: ClassVar[dict] = {}
    LISTS: ClassVar[dict] = {}
    OMIT_NONE: ClassVar[bool] = False
    KEEP_UNKNOWN: ClassVar[bool] = True

    extra: dict = field(default_factory=dict)  # keys this version does not know, written back as they were

    def __post_init__(self):  # a record built from dicts (a notebook's rows) holds records
        for name, kind in self.NESTED.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, kind.from_json(value))
        for name, kind in self.LISTS.items():
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, [v if isinstance(v, kind) else kind.from_json(v) for v in value])

    def to_json(self) -> dict:
        """The record as JSON-ready data (nested records and lists of them included)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if isinstance(value, _Record):
                value = value.to_json()
            elif f.name in self.LISTS and value is not None:
                value = [v.to_json() for v in value]
            if value is None and self.OMIT_NONE:
                continue
            out[f.name] = value
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: dict, where: str = ""):
        """``data`` as this record; ``where`` (the file) names it in errors."""
        label = where or cls.__name__
        if not isinstance(data, dict):
            raise RecordError(f"{label}: expected a JSON object for {cls.__name__}, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        data = {FORMER_KEYS.get(k, k) if FORMER_KEYS.get(k, k) in known else k: v for k, v in data.items()}
        missing = [f.name for f in dataclasses.fields(cls) if f.name in known and f.name not in data
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise RecordError(f"{label}: {cls.__name__} lacks {', '.join(missing)}")
        kwargs = {k: v for k, v in data.items() if k in known}
        for name, kind in cls.NESTED.items():
            if isinstance(kwargs.get(name), dict):
                kwargs[name] = kind.from_json(kwargs[name], f"{label} [{name}]")
        for name, kind in cls.LISTS.items():
            if kwargs.get(name) is not None:
                kwargs[name] = [kind.from_json(v, f"{label} [{name}][{i}]") for i, v in enumerate(kwargs[name])]
        if cls.KEEP_UNKNOWN:
            kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
        return cls(**kwargs)


@dataclass(kw_only=True)
class _Part(_Record):
    """A part of a stage's record (a training run, a verdict): what was not measured is left out."""

    OMIT_NONE: ClassVar[bool] = True


@dataclass(kw_only=True)
class Verdict(_Part):
    """A model's AP50 on one split with its interval, against a reference: the paired difference
    with its interval and both rules' answers (what :func:`wildlib.evaluate.against` measures)."""

    split: str | None = None
    AP50: float | None = None
    AP50_ci95: list | None = None
    AP50_se: float | None = None
    reference_ap50: float | None = None
    delta_ap50: float | None = None
    delta_ap50_ci95: list | None = None
    delta_ap50_se: float | None = None
    delta_ap50_bound_mcse: float | None = None  # Monte Carlo error of the drop's upper end (the bootstrap's draws)
    delta_ap50_samples: int | None = None       # bootstrap samples behind the paired interval
    within_1ap50: bool | None = None
    non_inferior: bool | None = None
    non_inferior_clear: bool | None = None  # False: the bound within 2 Monte Carlo errors of the line at the most samples
    tolerance: float | None = None
    baseline_delta_ap50: float | None = None  # beside the verdict: the paired difference to the baseline (no verdict)
    baseline_delta_ap50_ci95: list | None = None


@dataclass
class Variant(Verdict):
    """One measured variant, the row of every table the stages report (02's models on the report
    split, 03's files, 04's speed table, 05's evaluation): whatever a stage measured of it, under
    one name per quantity; what it did not measure stays out of its row (:meth:`row`).  Keys it
    does not know are left out (a row is a table's columns)."""
    KEEP_UNKNOWN: ClassVar[bool] = False

    name: str | None = None  # None: a verdict not yet named (04's combined_on_test)
    AP: float | None = None
    AP75: float | None = None
    sparsity_all: float | None = None
    latency_median_ms: float | None = None
    latency_p90_ms: float | None = None
    baseline_ms_median: float | None = None  # the row's own baseline, measured beside it
    speedup: float | None = None
    speedup_cold: float | None = None  # timed right after the other model ran (wildlib.evaluate.side_by_side)
    latency_runs_ms: list | None = None  # every timed pass of the variant, in turn order
    baseline_runs_ms: list | None = None  # ... and of its own baseline beside it
    threads: int | None = None
    macs: float | None = None
    params: int | None = None
    nonzero: int | None = None
    file: str | None = None
    file_bytes: int | None = None
    dense_fp32_bytes: int | None = None
    ratio: float | None = None
    bits_per_weight: float | None = None
    scored_from: str | None = None
    per_class: dict | None = None
    pid: int | None = None  # the process that measured it (a reload in a fresh process names its own)

    def row(self) -> dict:
        """The fields measured, as a plain dict (a JSON and DataFrame row), its name first."""
        return self.to_json()

    def to_json(self) -> dict:
        body = super().to_json()
        return {"name": body.pop("name"), **body} if "name" in body else body

    @classmethod
    def from_json(cls, data: dict, where: str = "") -> "Variant":
        """A row as any stage wrote it, schema 1 included (its keys renamed); unknown keys ignored;
        NaN (a DataFrame's empty cell) is not measured."""
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if not (isinstance(v, float) and math.isnan(v))}
        return super().from_json(data, where)


@dataclass(kw_only=True)
class TrainingRun(_Part):
    """A training or fine-tuning run as a stage records it (01's ``train``, 04's ``fine_tuning``):
    its schedule, how long it took and, in ``evals``, every evaluation made while it trained.
    Introduced in notebook 01_train_baseline (its record)."""

    iterations: int
    ims_per_batch: int
    lr: float | None = None
    lr_steps: list | None = None  # fractions of the iterations where the LR drops 10x
    seconds: float
    s_per_iter: float | None = None
    device: str | None = None
    num_gpus: int | None = None
    distillation: dict | None = None  # the teacher's terms (wildlib.distill.Distill.state()); None: labels alone
    evals: list | None = None


@dataclass(kw_only=True)
class DenseControl(_Part):
    """Stage 02's dense control: the baseline fine-tuned with the pruning run's schedule, no
    pruning, so that a pruned model is compared with a model trained as long.
    Introduced in notebook 02_prune_magnitude, section "The baseline, re-measured here, and the reference"."""

    iterations: int
    ims_per_batch: int
    lr: float
    seed: int
    trained_in: str | None = None  # a shared control: the run that trained it
    stored_detections: str | None = None  # ... and its detections on the report split
    seconds: float
    evals: list | None = None
    AP50: float | None = None  # on the report split (bbox: all of COCO's metrics there)
    AP: float | None = None
    AP75: float | None = None
    bbox: dict | None = None
    valid_AP50: float | None = None

    def scored(self, report: dict, valid_ap50: float) -> "DenseControl":
        """This control with its COCO metrics on the report split and its AP50 on valid.
        Introduced in notebook 02_prune_magnitude, section "The baseline, re-measured here, and the reference"."""
        return dataclasses.replace(self, AP50=report["AP50"], AP=report["AP"], AP75=report["AP75"], bbox=report,
                                   valid_AP50=valid_ap50)


@dataclass(kw_only=True)
class GradualRun(Verdict):
    """Stage 02's gradual pruning while fine-tuning, with its verdict against the reference.
    Introduced in notebook 02_prune_magnitude, section "4 · Gradual pruning while fine-tuning"."""

    ranking: str
    target: float
    iterations: int
    schedule: list | None = None  # the masks' history: iteration, target, sparsity
    seconds: float
    sparsity: float
    evals: list | None = None
    bbox: dict  # COCO metrics on the report split
    distillation: dict | None = None  # the teacher's terms (wildlib.distill.Distill.state()); None: labels alone


@dataclass(kw_only=True)
class SharingRun(_Part):
    """Stage 03's weight sharing: the bits, the preparation, centroid fine-tuning and the file.
    Introduced in notebook 03_weight_sharing (its record)."""

    conv_bits: int
    fc_bits: int
    folded_bn_layers: int | None = None
    depthwise_int8_layers: int | None = None
    after_fold_and_depthwise_int8: dict | None = None  # COCO metrics on valid, as each step left the model
    before_finetune: dict
    finetune_iterations: int
    finetune_seconds: float | None = None
    finetune_ims_per_batch: int | None = None
    extra_iterations_beyond_dense_control: int | None = None
    distillation: dict | None = None  # the dense teacher's terms in centroid fine-tuning (wildlib.distill.Distill.state)
    after_finetune: dict
    from_file: dict | None = None  # decoded from the .wlc file
    bit_exact: bool
    encode_seconds: float | None = None
    decode_seconds: float | None = None


@dataclass(kw_only=True)
class LatencyProtocol(_Part):
    """How notebook 04_prune_channels timed its variants: timed runs after warm-up ones, threads, images."""

    runs: int
    warmup: int
    threads: int
    images: int
    threads_apply_to: str | None = None
    timed_pass: str | None = None  # which pass of each turn is timed (wildlib.evaluate.side_by_side)


@dataclass(kw_only=True)
class StageMetrics(_Record):
    """What every stage's record shares: the schema version, keys kept from a newer writer
    (``extra``).  Which stage folder writes which record: :data:`wildlib.stages.STAGE_RECORDS`."""

    environment: dict | None = None  # the machine it ran on (wildlib.io.environment), where a stage records it
    machine: dict | None = None  # how busy it was over the stage, its trainings, contended or not (wildlib.contention)
    reruns: int | None = None  # times this stage had already finished in this run folder: its results could be seen

    def to_json(self) -> dict:
        body = super().to_json()
        if self.LISTS.get("variants") is Variant:
            body["variant_schema"] = VARIANT_SCHEMA
        return {"schema": RECORD_SCHEMA, **body}

    @classmethod
    def from_json(cls, data: dict, where: str = ""):
        if isinstance(data, dict):
            schema = data.get("schema", 0)
            if not isinstance(schema, int) or schema > RECORD_SCHEMA:
                raise RecordError(f"{where or cls.__name__}: record schema {schema!r}; this wildlib reads up to "
                                  f"{RECORD_SCHEMA} (a newer wildlib wrote it?)")
            data = {k: v for k, v in data.items() if k not in ("schema", "variant_schema")}
        return super().from_json(data, where)


@dataclass(kw_only=True)
class ExploreMetrics(StageMetrics):
    """Stage 00: the data, its checks and the settings they suggest.
    Written by notebook 00_explore_data."""

    data_dir: str | None = None
    images: dict  # split -> images
    instances: dict  # split -> boxes
    instances_total: int | None = None
    classes: list
    per_class: dict | None = None
    paper_table_total: int | None = None
    paper_text_total: int | None = None
    box_size_mix: dict | None = None  # COCO small / medium / large shares
    boxes_per_image_mean: float | None = None
    split_overlap: int | None = None
    classes_missing_in_valid: list | None = None
    input_geometry: dict | None = None
    warnings: list | None = None  # what the data check found, each with what to change
    suggested_settings: dict | None = None  # Detectron2 keys for this data, with the reasons (stage 01 reads them)


@dataclass(kw_only=True)
class BaselineMetrics(StageMetrics):
    """Stage 01: the trained baseline, its learning curve, speed, size and reload check.
    Written by notebook 01_train_baseline."""

    NESTED: ClassVar[dict] = {"train": TrainingRun}

    bbox: dict  # COCO metrics on the report split
    train: TrainingRun
    config_name: str | None = None
    evaluation_split: str = "valid"
    ap50_ci95: list | None = None
    learning_curve: list | None = None
    plateau_gain_ap50: float | None = None
    inference: dict | None = None  # median_s, p90_s at batch 1
    profile: dict | None = None  # part -> costs (wildlib.profile.cost_table)
    size: dict | None = None  # params, weights_bytes
    reload: dict | None = None
    evals: list | None = None
    losses: list | None = None


@dataclass(kw_only=True)
class ReportedMetrics(StageMetrics):
    """A stage that reports its models on a split (``test`` where the data has one) against the
    reference AP50 there (stage 02's choice)."""

    evaluation_split: str = "valid"  # valid: own data without a test split, chosen and reported on one split
    reference_ap50: float | None = None


@dataclass(kw_only=True)
class PruneMetrics(ReportedMetrics):
    """Stage 02: the reference, one-shot sweeps, the sensitivity scan, gradual pruning, sizes.
    Written by notebook 02_prune_magnitude; read by 03-05."""

    NESTED: ClassVar[dict] = {"dense_control": DenseControl, "gradual": GradualRun, "best_variant": Variant,
                              "baseline_against_reference": Verdict}
    LISTS: ClassVar[dict] = {"variants": Variant}

    baseline: dict  # COCO metrics on the report split
    baseline_valid_AP50: float | None = None
    dense_control: DenseControl
    reference: str  # "dense control" (runs before the fixed reference: "baseline" where it scored higher on valid)
    baseline_against_reference: Verdict | None = None  # the baseline paired with the reference on the report split
    reference_ap50: float
    reference_ap50_ci95: list | None = None
    reference_ap50_valid: float | None = None
    ap50_tolerance: float | None = None
    max_sparsity_within_1ap50: float  # the headline: point estimate of the drop within 1 AP50
    max_sparsity_non_inferior: float | None = None
    best_variant: Variant | None = None
    oneshot_pick: dict | None = None  # scope, ratio, ranking
    one_shot: list = field(default_factory=list)  # empty: the one-shot sweep was skipped (SWEEP_RATIOS = [])
    one_shot_lamp: list = field(default_factory=list)
    paper_one_shot_ap50: dict | None = None
    sparsity_at_80_by_ranking: dict | None = None
    sensitivity: list = field(default_factory=list)
    sensitivity_ratios: dict | None = None
    gradual: GradualRun
    sizes: dict | None = None
    variants: list[Variant] = field(default_factory=list)


@dataclass(kw_only=True)
class ShareMetrics(ReportedMetrics):
    """Stage 03: bits and inits chosen on valid, the shared model and its ``.wlc`` file, int8.
    Written by notebook 03_weight_sharing."""

    NESTED: ClassVar[dict] = {"shared": SharingRun}
    LISTS: ClassVar[dict] = {"variants": Variant}

    # chosen on valid: the starting points, k-means' cost, the inits and bits compared
    reference_ap50_valid: float | None = None
    baseline_valid: dict | None = None
    pruned_valid: dict | None = None
    kmeans_seconds_whole_model: float | None = None
    kmeans_nonzero_weights: int | None = None
    inits: list = field(default_factory=list)
    bits_sweep: list = field(default_factory=list)
    # the shared model and the int8 one, reported on the report split, their files and streams
    shared: SharingRun
    int8: dict | None = None
    reported: dict | None = None  # "shared" / "int8" -> its verdict on the report split
    variants: list[Variant] = field(default_factory=list)
    streams: list | None = None


@dataclass(kw_only=True)
class ChannelsMetrics(ReportedMetrics):
    """Stage 04: channel pruning, int8 in ONNX Runtime and test-time settings, timed side by side.
    Written by notebook 04_prune_channels; read by 05."""

    NESTED: ClassVar[dict] = {"fine_tuning": TrainingRun, "latency": LatencyProtocol, "reloaded": Variant,
                              "combined_on_test": Variant, "best_on_test": Variant, "best_reloaded": Variant}
    LISTS: ClassVar[dict] = {"variants": Variant}

    variants: list[Variant] = field(default_factory=list)
    baseline_latency_ms_median: float | None = None
    combined_on_test: Variant | None = None
    choices_on: str | None = None
    best_speedup_within_1ap50_valid: float  # a choice: the largest speedup within 1 AP50 (point estimate) on valid
    speed_noise: float | None = None  # the baseline's speedup against itself (wildlib.evaluate.speed_noise): picks exceed it
    best_variant: str | None = None
    ap50_tolerance: float | None = None
    test_time: dict | None = None  # the knobs' setting (wildlib.fast.knobs)
    combined_test_time: dict | None = None
    channel_ratios: dict | None = None
    widths: dict | None = None
    fine_tuning: TrainingRun | None = None
    reloaded: Variant | None = None
    deploy_dir: str | None = None
    float_parts: list | None = None
    latency: LatencyProtocol | None = None  # how every row was timed
    profile_ms: dict | None = None  # part -> ms, the baseline's and the combined model's
    # the fastest variant non-inferior on valid (paired with the reference there) on the report
    # split, against the reference: its paired drop interval; best_speedup_non_inferior is its
    # speedup where that drop's 95% upper end is within the tolerance there too (else 0)
    best_non_inferior_variant: str | None = None
    best_on_test: Variant | None = None
    best_speedup_non_inferior: float | None = None
    best_reloaded: Variant | None = None  # that variant reloaded in a fresh process (where it is a deployable)
    best_deploy_dir: str | None = None  # ... its deployable folder (relative to the run), which 05 evaluates
    runtime: dict | None = None  # ONNX Runtime settings chosen on this machine (cpu_model beside them)
    graph_profile_ms: dict | None = None  # part -> ms in the one graph (ONNX Runtime's profiler)
    qat: dict | None = None  # quantization-aware fine-tuning of the combined model (wildlib.fast.qat), paired with PTQ on valid


@dataclass(kw_only=True)
class EvaluateMetrics(ReportedMetrics):
    """Stage 05: every variant in one process on the report split, and the two headlines.
    Written by notebook 05_evaluate."""

    LISTS: ClassVar[dict] = {"variants": Variant}

    variants: list[Variant]
    best_compression_ratio_within_1ap50: float  # the two headlines: chosen within 1 AP50 (point estimate)
    best_variant: str | None = None
    best_speedup_within_1ap50: float
    fastest_variant: str | None = None
    speed_noise: float | None = None  # the baseline's speedup against itself (wildlib.evaluate.speed_noise): picks exceed it
    best_compression_ratio_non_inferior: float | None = None
    best_speedup_non_inferior: float | None = None
    reference: str | None = None
    reference_ap50_ci95: list | None = None
    per_class: dict | None = None
    oneshot_pick: dict | None = None
    survey_slices: list | None = None  # the deployable on survey mosaics: whole, auto slices, slices of its input size

