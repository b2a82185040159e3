"""Typed, validated pipeline settings (segmenter, classifiers, run).

Built once at the edge (Flower ``run_config``, a preset, the CLI) with :meth:`PipelineConfig.from_mapping`,
which reads flat dashed keys such as ``"seg-encoder"`` or ``"datasets" = "t1,t2,t1ce,t1+t2"``.
Nothing below the edge reads raw mappings. Every check names the key, the value and the allowed range.
The dataclasses have no defaults: every key comes from ``[tool.flwr.app.config]`` in pyproject.toml
(:func:`shared.app_config.app_defaults`, or :meth:`PipelineConfig.defaults`), the one place defaults live.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from shared.app_config import ConfigValue, app_defaults, coerce, unknown_key_error
from shared.data.patient import SEQUENCES
from shared.errors import ConfigError

SEG_ENCODERS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "efficientnet-b0")
SEG_LOSSES: tuple[str, ...] = ("dice", "dice+bce")
#: ``seg-norm``: the U-Net's normalisation layers: BatchNorm (running statistics the federation averages) or
#: GroupNorm (no running statistics: each image normalised by itself; the DP variant's layers, any DP mode forces it)
SEG_NORMS: tuple[str, ...] = ("batch", "group")
#: ``seg-lr-schedule``: Adam at a constant lr, cosine decay to 0 over all the stage's epochs (rounds x local epochs),
#: or a linear warm-up over the stage's first tenth, then constant (shared/training/schedules.py)
SEG_LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine", "warmup")
#: ``seg-local-optimizer`` / ``cls-local-optimizer``: a fresh Adam(W) at each site every round, or each site keeps
#: its optimizer's moments between rounds (in its cache: ``client/local_optimizer.py``)
LOCAL_OPTIMIZERS: tuple[str, ...] = ("restart", "keep")
CLS_ARCHS: tuple[str, ...] = ("resnet101", "resnet18", "resnet50")
CLS_AGGREGATIONS: tuple[str, ...] = ("mean",)
ROI_INTENSITIES: tuple[str, ...] = (
    "body",
    "peritumoral",
    "reference",
    "log-reference",
)  # shared/roi/datasets.py
ROI_CONTEXTS: tuple[str, ...] = ("tumour", "box")  # shared/roi/datasets.py
CLS_AUGMENT_OPS: tuple[str, ...] = ("flip", "rot90", "shift")  # shared/training/augment.py
CLS_TTA: tuple[str, ...] = ("none", "flip")  # shared/training/classification.py slice_scores
CLS_INPUT_NORMS: tuple[str, ...] = ("auto", "none", "batch")  # shared/models/classifier.py; auto: batch unless DP
MAX_CLS_ENSEMBLE = 8  # cls-ensemble: members per classifier (shared/models/ensemble.py)
SEG_AUGMENT_OPS: tuple[str, ...] = ("flip", "shift", "intensity")  # shared/training/augment.py augment_pairs
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
DP_MODES: tuple[str, ...] = ("off", "local", "central")
DP_ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")


def _check_range(key: str, value: float, lo: float, hi: float, *, lo_open: bool = False) -> None:
    ok = (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        left = "(" if lo_open else "["
        raise ConfigError(f"{key}={value!r} is out of range: expected a value in {left}{lo}, {hi}]")


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        hint = difflib.get_close_matches(str(value), allowed, n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"{key}={value!r} is not allowed: expected one of {', '.join(allowed)}{extra}")


def parse_dataset_name(name: str) -> tuple[str, ...]:
    """``"t1+t2"`` -> ``("t1", "t2")`` (channel order = order in the name); raises ConfigError on bad names."""
    parts = tuple(p.strip() for p in name.split("+"))
    for p in parts:
        _check_choice(f"datasets entry {name!r}: sequence", p, SEQUENCES)
    if len(set(parts)) != len(parts):
        raise ConfigError(
            f"datasets entry {name!r} repeats a sequence: expected each of {SEQUENCES} at most once"
        )
    return parts


@dataclass(frozen=True)
class SegmenterConfig:
    """U-Net tumour segmenter (segmentation-models-pytorch)."""

    encoder: str
    in_sequences: tuple[str, ...]
    image_size: int
    lr: float
    batch_size: int
    loss: str
    slices_per_patient: int
    augment: str
    lr_schedule: str
    local_optimizer: str
    norm: str
    weight_ema: float  # 0: off; else the decay of an average of the weights over rounds / epochs (weight_average.py)

    def __post_init__(self) -> None:
        _check_choice("seg-encoder", self.encoder, SEG_ENCODERS)
        _check_choice("seg-norm", self.norm, SEG_NORMS)
        _check_range("seg-weight-ema", self.weight_ema, 0.0, 0.99)
        if not self.in_sequences:
            raise ConfigError("seg-in-sequences is empty: expected one or more of t1, t2, t1ce")
        for s in self.in_sequences:
            _check_choice("seg-in-sequences", s, SEQUENCES)
        if self.image_size % 32 != 0 or not 32 <= self.image_size <= 512:
            raise ConfigError(
                f"seg-image-size={self.image_size!r} is not allowed: expected a multiple of 32 in [32, 512] "
                "(the U-Net downsamples 5 times)"
            )
        _check_range("seg-lr", self.lr, 0.0, 1.0, lo_open=True)
        _check_range("seg-batch-size", self.batch_size, 1, 4096)
        _check_choice("seg-loss", self.loss, SEG_LOSSES)
        _check_choice("seg-lr-schedule", self.lr_schedule, SEG_LR_SCHEDULES)
        _check_choice("seg-local-optimizer", self.local_optimizer, LOCAL_OPTIMIZERS)
        _check_range("seg-slices-per-patient", self.slices_per_patient, 1, 1024)
        unknown = [op for op in self.augment_ops if op not in SEG_AUGMENT_OPS]
        if unknown:
            raise ConfigError(
                f"seg-augment={self.augment!r}: {unknown[0]!r} is not an augmentation; expected 'none' or a "
                f"comma-separated list of {', '.join(SEG_AUGMENT_OPS)}"
            )

    @property
    def in_channels(self) -> int:
        return len(self.in_sequences)

    @property
    def augment_ops(self) -> tuple[str, ...]:
        """``seg-augment`` as a tuple of ops (``()`` for ``"none"``)."""
        return tuple(op.strip() for op in self.augment.split(",") if op.strip() not in ("", "none"))


@dataclass(frozen=True)
class ClassifierConfig:
    """ResNet classifier on tumour ROI crops (one per dataset).

    ``weights``: ``"random"`` (zero-init residuals), ``"imagenet"`` (torchvision enum, needs the weights in the
    torch hub cache: offline it fails with a clear message) or ``"file:<path>"`` (a local state dict).
    """

    arch: str
    weights: str
    image_size: int
    slices_per_patient: int
    lr: float
    batch_size: int
    warmup: float
    label_smoothing: float
    weight_decay: float
    aggregation: str
    augment: str
    mixup: float
    tta: str
    local_optimizer: str
    pretrain_epochs: int
    crop_means: bool
    input_norm: str
    ensemble: int
    linear_member: bool

    def __post_init__(self) -> None:
        _check_choice("cls-arch", self.arch, CLS_ARCHS)
        if not (self.weights in ("random", "imagenet") or self.weights.startswith("file:")):
            raise ConfigError(
                f"cls-weights={self.weights!r} is not allowed: expected 'random', 'imagenet' or 'file:<path to a "
                "state dict>'"
            )
        if self.weights.startswith("file:") and len(self.weights) <= 5:
            raise ConfigError("cls-weights='file:' has no path: expected 'file:/path/to/resnet.pth'")
        _check_range("cls-image-size", self.image_size, 16, 512)
        _check_range("cls-slices-per-patient", self.slices_per_patient, 1, 64)
        _check_range("cls-lr", self.lr, 0.0, 1.0, lo_open=True)
        _check_range("cls-batch-size", self.batch_size, 1, 4096)
        _check_range("cls-warmup", self.warmup, 0.0, 0.9)
        _check_range("cls-label-smoothing", self.label_smoothing, 0.0, 0.5)
        _check_range("cls-weight-decay", self.weight_decay, 0.0, 1.0)
        _check_choice("cls-aggregation", self.aggregation, CLS_AGGREGATIONS)
        _check_range("cls-mixup", self.mixup, 0.0, 10.0)
        _check_choice("cls-tta", self.tta, CLS_TTA)
        _check_choice("cls-input-norm", self.input_norm, CLS_INPUT_NORMS)
        _check_range("cls-ensemble", self.ensemble, 1, MAX_CLS_ENSEMBLE)
        _check_choice("cls-local-optimizer", self.local_optimizer, LOCAL_OPTIMIZERS)
        _check_range("cls-pretrain-epochs", self.pretrain_epochs, 0, 10_000)
        unknown = [op for op in self.augment_ops if op not in CLS_AUGMENT_OPS]
        if unknown:
            raise ConfigError(
                f"cls-augment={self.augment!r}: {unknown[0]!r} is not an augmentation; expected 'none' or a "
                f"comma-separated subset of {', '.join(CLS_AUGMENT_OPS)}"
            )

    @property
    def architecture(self) -> str:
        """What the cards and reports call the classifier: ``"resnet101"``, or ``"resnet101 x 3 (ensemble: mean
        probability)"`` with ``cls-ensemble = 3``; ``cls-linear-member`` adds ``" + logistic regression on the
        tumour's core level per sequence"`` and the mean is weighted."""
        if self.ensemble == 1 and not self.linear_member:
            return self.arch
        cnn = self.arch if self.ensemble == 1 else f"{self.arch} x {self.ensemble}"
        if not self.linear_member:
            return f"{cnn} (ensemble: mean probability)"
        return f"{cnn} + logistic regression on the tumour's core level per sequence (ensemble: weighted mean probability)"

    def input_norm_for(self, dp: bool) -> str:
        """``cls-input-norm`` as built: ``"auto"`` is ``"batch"`` for the plain classifier and ``"none"`` for the
        DP-compatible one (whose GroupNorm would normalise each crop by its own level); the others as set."""
        if self.input_norm == "auto":
            return "none" if dp else "batch"
        return self.input_norm

    @property
    def augment_ops(self) -> tuple[str, ...]:
        """``cls-augment`` as a tuple of ops (``()`` for ``"none"``)."""
        return tuple(op.strip() for op in self.augment.split(",") if op.strip() not in ("", "none"))


@dataclass(frozen=True)
class PipelineConfig:
    """The whole two-stage pipeline. ``datasets``: classifier inputs, e.g. ``("t1", "t2", "t1ce", "t1+t2")``."""

    seg: SegmenterConfig
    cls: ClassifierConfig
    datasets: tuple[str, ...]
    seg_epochs: int
    cls_epochs: int
    roi_margin: int
    roi_intensity: str
    roi_context: str
    device: str
    amp: bool
    seed: int
    hist_bins: int
    dp: str
    dp_epsilon: float
    dp_delta: float
    dp_max_grad_norm: float
    dp_accountant: str
    dp_hist_noise: float

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ConfigError("datasets is empty: expected e.g. 't1,t2,t1ce,t1+t2'")
        for name in self.datasets:
            parse_dataset_name(name)
        if len(set(self.datasets)) != len(self.datasets):
            raise ConfigError(f"datasets={','.join(self.datasets)!r} lists a dataset twice")
        _check_range("seg-epochs", self.seg_epochs, 0, 10_000)
        _check_range("cls-epochs", self.cls_epochs, 0, 10_000)
        _check_range("roi-margin", self.roi_margin, 0, 256)
        _check_choice("roi-intensity", self.roi_intensity, ROI_INTENSITIES)
        _check_choice("roi-context", self.roi_context, ROI_CONTEXTS)
        _check_choice("device", self.device, DEVICES)
        _check_range("seed", self.seed, 0, 2**31 - 1)
        _check_range("hist-bins", self.hist_bins, 2, 1_000_000)
        _check_choice("dp", self.dp, DP_MODES)
        _check_range("dp-epsilon", self.dp_epsilon, 0.0, 1000.0, lo_open=True)
        _check_range("dp-delta", self.dp_delta, 0.0, 0.1)
        _check_range("dp-max-grad-norm", self.dp_max_grad_norm, 0.0, 1e6, lo_open=True)
        _check_choice("dp-accountant", self.dp_accountant, DP_ACCOUNTANTS)
        _check_range("dp-hist-noise", self.dp_hist_noise, 0.0, 10_000.0)
        if self.dp == "local" and self.amp:
            raise ConfigError(
                "dp='local' with amp=true: Opacus' per-sample gradients are not checked under mixed precision; "
                "set amp=false (DP-SGD runs in float32)"
            )
        if self.dp == "local" and self.cls.mixup > 0:
            raise ConfigError(
                f"dp='local' with cls-mixup={self.cls.mixup}: a mixed crop blends two patients, so one gradient "
                "carries both and DP-SGD's per-patient clipping would not bound either; set cls-mixup=0, or use "
                "dp='central' (its unit, one site, covers any local training)"
            )
        if self.dp == "local" and self.cls.pretrain_epochs > 0:
            raise ConfigError(
                f"dp='local' with cls-pretrain-epochs={self.cls.pretrain_epochs}: the contrastive pretraining loss "
                "compares each patient with the others in its batch, so one patient's gradient is not their own and "
                "DP-SGD's per-patient clipping would not bound it; set cls-pretrain-epochs=0 (and, federated, "
                "cls-pretrain-rounds=0), or use dp='central' (its unit, one site, covers any local training)"
            )

        # (setting as given, its fix): one message naming every setting to change (the seed-size preset sets both)
        members = [(f"cls-ensemble={self.cls.ensemble}", "cls-ensemble=1")] if self.cls.ensemble > 1 else []
        members += [("cls-linear-member=true", "cls-linear-member=false")] if self.cls.linear_member else []
        if self.dp != "off" and members:
            given, fixes = zip(*members, strict=True)
            raise ConfigError(
                f"dp={self.dp!r} with {' and '.join(given)}: the ensemble's members (ResNets or the regression "
                "member) would share one clipping bound and one noise draw, a privacy-utility trade never measured "
                f"here; set {' and '.join(fixes)} with differential privacy"
            )
        if self.dp != "off" and self.cls.input_norm == "batch":
            raise ConfigError(
                f"dp={self.dp!r} with cls-input-norm='batch': the DP-compatible classifier replaces BatchNorm by "
                "GroupNorm, which would normalise each crop by its own level and erase the tumour-to-reference "
                "intensity the classifier reads; set cls-input-norm='auto' (none under DP) or 'none' with differential "
                "privacy"
            )

    @property
    def dp_models(self) -> bool:
        """Whether the models are the DP-compatible variant (GroupNorm, no in-place residuals): any DP mode.

        Central DP adds noise to every array: BatchNorm running statistics would take it too."""
        return self.dp != "off"

    def dataset_sequences(self, name: str) -> tuple[str, ...]:
        return parse_dataset_name(name)

    # ---- flat mapping (Flower run_config) <-> dataclasses -------------------------------------------------

    @classmethod
    def from_mapping(cls, d: Mapping[str, ConfigValue], base: PipelineConfig | None = None) -> PipelineConfig:
        """Build from flat dashed keys (``"seg-encoder"``, ``"cls-arch"``, ``"datasets"``, ...).

        Without ``base`` every pipeline key must be in ``d`` (a missing key names pyproject.toml); with ``base``,
        keys absent from ``d`` keep its values. Unknown keys raise ConfigError with a "did you mean" hint;
        values go through :func:`shared.app_config.coerce`.
        """
        known = pipeline_keys()
        for key in d:
            if key not in known:
                raise unknown_key_error(key, known, "pipeline setting")
        if base is None:
            missing = [k for k in known if k not in d]
            if missing:
                raise ConfigError(
                    f"pipeline settings lack key {missing[0]!r}: add it to [tool.flwr.app.config] in pyproject.toml "
                    "(where every default lives) or start from PipelineConfig.defaults()"
                )
            kw: dict[str, dict[str, Any]] = {"seg": {}, "cls": {}, "": {}}
            for key, (section, name, typ) in known.items():
                kw[section][name] = coerce(key, d[key], typ)
            return cls(seg=SegmenterConfig(**kw["seg"]), cls=ClassifierConfig(**kw["cls"]), **kw[""])
        seg_kw: dict[str, Any] = {}
        cls_kw: dict[str, Any] = {}
        top_kw: dict[str, Any] = {}
        for key, raw in d.items():
            section, name, typ = known[key]
            {"seg": seg_kw, "cls": cls_kw, "": top_kw}[section][name] = coerce(key, raw, typ)
        seg = replace(base.seg, **seg_kw) if seg_kw else base.seg
        clf = replace(base.cls, **cls_kw) if cls_kw else base.cls
        return replace(base, seg=seg, cls=clf, **top_kw)

    @classmethod
    def defaults(cls, changes: Mapping[str, ConfigValue] | None = None) -> PipelineConfig:
        """The defaults of pyproject.toml's ``[tool.flwr.app.config]``, with optional flat-key ``changes``."""
        known = pipeline_keys()
        base = cls.from_mapping({k: v for k, v in app_defaults().items() if k in known})
        return cls.from_mapping(changes, base) if changes else base

    def to_mapping(self) -> dict[str, ConfigValue]:
        """Flat dashed keys -> bool/int/float/str (tuples joined by commas); inverse of :meth:`from_mapping`."""
        out: dict[str, ConfigValue] = {}
        for key, (section, name, _typ) in pipeline_keys().items():
            obj = {"seg": self.seg, "cls": self.cls, "": self}[section]
            value = getattr(obj, name)
            out[key] = ",".join(value) if isinstance(value, tuple) else value
        return out


_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool, "tuple[str, ...]": tuple}


def pipeline_keys() -> dict[str, tuple[str, str, type]]:
    """Every pipeline run-config key: dashed key -> (section, field name, python type)."""
    out: dict[str, tuple[str, str, type]] = {}
    for section, klass in (("seg", SegmenterConfig), ("cls", ClassifierConfig), ("", PipelineConfig)):
        for f in fields(klass):
            if f.name in ("seg", "cls"):
                continue
            typ = _TYPES[f.type] if isinstance(f.type, str) else f.type
            key = (f"{section}-" if section else "") + f.name.replace("_", "-")
            out[key] = (section, f.name, typ)
    return out
