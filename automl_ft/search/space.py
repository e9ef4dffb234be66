"""Declarative search spaces: YAML files validated on load, sampled define-by-run through an Optuna trial.

A value in a space is one of

- a scalar (``0.06``, ``mean``): fixed;
- a list (``[16, 32]``) or ``{choices: [...]}``: categorical;
- ``{low: L, high: H}`` with optional ``log: true`` / ``step: S`` / ``type: int|float``: a range (ints when both
  ends are integers).

Layout (see ``search_spaces/*.yaml``)::

    task: text-classification
    backbones:                 # name -> per-backbone settings (preprocessing, freezing depth, load options)
      minilm-l6: {max_length: 128, freeze_depth: {low: 0, high: N}}
    backbone_defaults: {...}   # settings for backbones given with --backbones that are not listed above
    adaptation:
      full: {lr: {low: 2e-5, high: 2e-4, log: true}}
      lora: {rank: [8, 16], alpha: [16, 32], dropout: {low: 0.0, high: 0.1}, lr: {...}}
    training: {weight_decay: ..., label_smoothing: ..., dropout: ..., batch_size: ..., epochs: ..., ...}
    sampler: {type: tpe, n_startup_trials: auto, seed_offset: 0}
    pruner: {type: hyperband, min_resource: 1, reduction_factor: 3}
    first_trial: {...}         # a known-good configuration tried first in a new study

``N`` (or ``N-2``) in a freezing-depth range is the backbone's block count. Optuna parameter names are the keys,
prefixed with the backbone for per-backbone values (``minilm-l6.freeze_depth``) and with the adaptation for its
values (``lora.rank``), so every name keeps one distribution across trials.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl_ft.config import AUGMENTS, HEAD_INITS, IMBALANCE, TrialConfig
from automl_ft.modalities import TEXT, list_modalities
from automl_ft.modalities.text import TEXT_AUGMENTS
from automl_ft.errors import BackboneError, SearchSpaceError

if TYPE_CHECKING:
    from automl_ft.tasks import Task
    import optuna

TOP_KEYS = {"task", "backbones", "backbone_defaults", "adaptation", "training", "sampler", "pruner", "first_trial",
            "description", "probe"}
BACKBONE_KEYS = {"freeze_depth", "max_length", "image_size", "augment", "options", "probe_image_size"}
BACKBONE_OPTION_KEYS = {"pretrained", "weights", "pooling", "drop_path", "trust_remote_code"}
# augmentations that flip training images left-right half the time (loaders.py)
MIRRORING = ("crop-flip", "randaugment")
ADAPTATION_KEYS = {"full": {"lr"}, "lora": {"rank", "alpha", "dropout", "lr"},
                   "setfit": {"lr", "iterations", "max_examples"}}
TRAINING_KEYS = {"weight_decay", "anchor_decay", "label_smoothing", "dropout", "batch_size", "epochs",
                 "warmup_ratio", "max_grad_norm", "patience", "head_lr_scale", "head_init"}
SAMPLER_KEYS = {"type", "n_startup_trials", "multivariate", "constant_liar", "seed_offset"}
PRUNER_KEYS = {"type", "min_resource", "reduction_factor", "n_warmup_steps", "n_startup_trials", "subset_fraction"}
# Scalar settings of the sampler and pruner sections: key -> (kind, low, high). Optuna rejects some of these
# only when the study starts (a reduction factor of 1), others never (a negative warm-up), so they are checked
# here, with the file and key in the message.
SAMPLER_SPEC = {"n_startup_trials": ("int", 0, 100_000), "multivariate": ("bool", None, None),
                "constant_liar": ("bool", None, None), "seed_offset": ("int", -(2**31), 2**31 - 1)}
PRUNER_SPEC = {"min_resource": ("int", 1, 1000), "reduction_factor": ("int", 2, 100),
               "n_warmup_steps": ("int", 0, 1000), "n_startup_trials": ("int", 0, 100_000),
               "subset_fraction": ("float", 0.05, 1.0)}
SAMPLERS = ("tpe", "random")
PRUNERS = ("hyperband", "successive_halving", "median", "none")


@dataclass(frozen=True)
class Param:
    """One dimension: fixed, categorical or a range."""

    kind: str  # "fixed" | "categorical" | "int" | "float"
    value: Any = None
    choices: tuple = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None

    def sample(self, trial: optuna.Trial, name: str) -> Any:
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step) if self.step else 1)
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        if self.kind == "fixed":
            return value == self.value
        if self.kind == "categorical":
            return value in self.choices
        try:
            return self.low <= float(value) <= self.high
        except (TypeError, ValueError):
            return False

    @property
    def max(self) -> Any:
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return max(self.choices)
        return self.high


class _Ctx:
    """Where a value sits, for error messages that name the file and the key."""

    def __init__(self, file: str):
        self.file = file

    def fail(self, key: str, msg: str) -> SearchSpaceError:
        return SearchSpaceError(f"{self.file}: {key}: {msg}")


def _param(ctx: _Ctx, key: str, raw: Any, *, kind: str | None = None, low: float | None = None,
           high: float | None = None, choices: tuple | None = None, block_count: int | None = None,
           backbone: str = "") -> Param:
    """Parse one value; ``kind`` forces int/float/str, ``low``/``high`` bound every value, ``choices`` restricts;
    ``block_count`` resolves ``N`` and bounds the value by ``backbone``'s block count."""

    def check_num(v: Any, what: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ctx.fail(key, f"{what} must be a number, got {v!r}")
        if not math.isfinite(v):
            raise ctx.fail(key, f"{what} must be finite, got {v!r}")
        if low is not None and v < low:
            raise ctx.fail(key, f"{what} {v} is below the minimum {low}")
        if high is not None and v > high:
            raise ctx.fail(key, f"{what} {v} is above the maximum {high}")
        if kind == "int" and float(v) != int(v):
            raise ctx.fail(key, f"{what} must be an integer, got {v!r}")
        return v

    def check_value(v: Any) -> Any:
        if block_count is not None:
            v = _resolve_n(ctx, key, v, block_count, backbone)
        if kind in ("int", "float"):
            return check_num(v, "value")
        if kind == "str":
            if not isinstance(v, str):
                raise ctx.fail(key, f"must be a string, got {v!r}")
        if kind == "bool" and not isinstance(v, bool):
            raise ctx.fail(key, f"must be true or false, got {v!r}")
        if choices is not None and v not in choices:
            raise ctx.fail(key, f"{v!r} is not one of {', '.join(map(str, choices))}")
        return v

    if isinstance(raw, list):
        raw = {"choices": raw}
    if isinstance(raw, dict):
        extra = set(raw) - {"choices", "low", "high", "log", "step", "type"}
        if extra:
            raise ctx.fail(key, f"unknown field(s) {', '.join(sorted(extra))}; use choices, or low/high/log/step/type")
        if "choices" in raw:
            if set(raw) - {"choices"}:
                raise ctx.fail(key, "choices cannot be combined with low/high/log/step")
            vals = raw["choices"]
            if not isinstance(vals, list) or not vals:
                raise ctx.fail(key, "choices must be a non-empty list")
            vals = [check_value(v) for v in vals]
            if len(set(map(repr, vals))) != len(vals):
                raise ctx.fail(key, "choices repeat a value")
            return Param("fixed", value=vals[0]) if len(vals) == 1 else Param("categorical", choices=tuple(vals))
        if "low" not in raw or "high" not in raw:
            raise ctx.fail(key, "a range needs both low and high")
        if kind not in (None, "int", "float"):
            raise ctx.fail(key, f"must be a {kind}, not a numeric range")
        lo, hi = check_value(raw["low"]), check_value(raw["high"])
        typ = raw.get("type") or kind
        if typ is None:
            typ = "int" if isinstance(lo, int) and isinstance(hi, int) else "float"
        if typ not in ("int", "float"):
            raise ctx.fail(key, f"type must be int or float, got {typ!r}")
        if lo > hi:
            raise ctx.fail(key, f"low {lo} is above high {hi}")
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise ctx.fail(key, "log must be true or false")
        if log and lo <= 0:
            raise ctx.fail(key, "a log range needs low > 0")
        step = raw.get("step")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0:
                raise ctx.fail(key, "step must be a positive number")
            if log:
                raise ctx.fail(key, "step and log cannot be combined")
        if lo == hi:
            return Param("fixed", value=int(lo) if typ == "int" else float(lo))
        return Param(typ, low=lo, high=hi, log=log, step=step)
    if raw is None:
        raise ctx.fail(key, "has no value")
    return Param("fixed", value=check_value(raw))


def _describe(p: Param) -> str:
    if p.kind == "fixed":
        return f"fixed at {p.value!r}"
    if p.kind == "categorical":
        return "one of " + ", ".join(map(repr, p.choices))
    return f"{p.low:g} to {p.high:g}"


def _resolve_n(ctx: _Ctx, key: str, v: Any, n: int, backbone: str = "") -> int:
    """``N`` -> n, ``N-k`` -> max(0, n-k); an integer must be at most n.

    An integer above the block count used to be clamped to it, so ``high: 12`` on a 6-layer model silently
    searched a different range than the file says; ``N``/``N-k`` is the way to follow each backbone's depth.
    ``N-k`` below zero is 0: "all but the top k blocks" of a shallower backbone is all of them trainable.
    """
    if isinstance(v, str):
        s = v.replace(" ", "")
        if s == "N":
            return n
        if s.startswith("N-") and s[2:].isdigit():
            return max(0, n - int(s[2:]))
        raise ctx.fail(key, f"{v!r}: use an integer, N (the block count) or N-k")
    if isinstance(v, bool) or not isinstance(v, int):
        raise ctx.fail(key, f"must be an integer, N or N-k, got {v!r}")
    if v < 0:
        raise ctx.fail(key, f"must be >= 0, got {v}")
    if v > n:
        raise ctx.fail(key, f"{v} is above the {n} blocks of {backbone or 'the backbone'}; use at most {n}, or N / "
                       "N-k to follow each backbone's depth")
    return v


@dataclass
class BackboneSpace:
    name: str
    num_blocks: int
    freeze_depth: Param
    max_length: Param | None
    image_size: Param | None
    augment: Param | None
    options: dict[str, Any]
    # the frozen-feature probe's input size (images): its own, since a probe costs one pass at any size while a
    # fine-tune's epochs grow with the pixels. None: the largest searched image_size
    probe_image_size: int | None = None


class SearchSpace:
    """A validated search space: :meth:`suggest` turns an Optuna trial into a :class:`TrialConfig`."""

    def __init__(self, raw: dict[str, Any], file: str, *, backbones: list[str] | None = None,
                 block_counter=None, trust_remote_code: bool = False):
        self.trust_remote_code = trust_remote_code
        self.file = file
        self.raw = raw
        ctx = _Ctx(file)
        if not isinstance(raw, dict):
            raise SearchSpaceError(f"{file}: the top level must be a mapping of keys (task, backbones, ...)")
        extra = set(raw) - TOP_KEYS
        if extra:
            raise ctx.fail(sorted(extra)[0], f"unknown key; known: {', '.join(sorted(TOP_KEYS))}")
        self.task = raw.get("task")
        try:
            # A space is about inputs (backbones, lengths, image sizes), so it serves every task of its modality:
            # text-classification.yaml also searches text regression and multi-label data.
            self.modality = space_modality(self.task)
        except ValueError as e:
            raise ctx.fail("task", str(e)) from None
        counter = self._block_counter = block_counter or count_blocks
        self.backbones = self._parse_backbones(ctx, raw, backbones, counter)
        self.adaptation = self._parse_adaptation(ctx, raw.get("adaptation"))
        self.training = self._parse_training(ctx, raw.get("training") or {})
        self.sampler = self._parse_section(ctx, "sampler", raw.get("sampler") or {}, SAMPLER_KEYS, SAMPLER_SPEC)
        self.pruner = self._parse_section(ctx, "pruner", raw.get("pruner") or {}, PRUNER_KEYS, PRUNER_SPEC)
        if self.sampler.get("type", "tpe") not in SAMPLERS:
            raise ctx.fail("sampler.type", f"must be one of {', '.join(SAMPLERS)}")
        if self.pruner.get("type", "hyperband") not in PRUNERS:
            raise ctx.fail("pruner.type", f"must be one of {', '.join(PRUNERS)}")
        min_resource = self.pruner.get("min_resource", 1)
        if self.pruner.get("type", "hyperband") in ("hyperband", "successive_halving") and \
                min_resource > self.max_epochs:
            raise ctx.fail("pruner.min_resource", f"{min_resource} is above the most epochs a trial runs "
                           f"(training.epochs: {self.max_epochs}); use at most {self.max_epochs}")
        if self.pruner.get("subset_fraction", 1.0) < 1.0 and \
                self.pruner.get("type", "hyperband") not in ("hyperband", "successive_halving"):
            raise ctx.fail("pruner.subset_fraction", "applies to the rung pruners (hyperband, successive_halving) only")
        # The frozen-feature probe as the study's first trial (probe.py): the floor of the search, on by default
        self.probe, self.probe_backbone, self.probe_input = self._parse_probe(ctx, raw.get("probe", True),
                                                                            overridden=bool(backbones))
        first = raw.get("first_trial")
        if first is not None and not isinstance(first, dict):
            raise ctx.fail("first_trial", "must be a mapping of settings")
        self.first_trial = dict(first or {})
        self._check_first_trial(ctx, overridden=bool(backbones))

    # ------------------------------------------------------------------------------------------------ parsing

    @staticmethod
    def _parse_section(ctx: _Ctx, name: str, section: Any, keys: set[str],
                       spec: dict[str, tuple[str, float | None, float | None]]) -> dict[str, Any]:
        if not isinstance(section, dict):
            raise ctx.fail(name, "must be a mapping")
        extra = set(section) - keys
        if extra:
            raise ctx.fail(f"{name}.{sorted(extra)[0]}", f"unknown key; known: {', '.join(sorted(keys))}")
        out = dict(section)
        for key, (kind, lo, hi) in spec.items():
            value = out.get(key)
            if value is None or (key == "n_startup_trials" and name == "sampler" and value == "auto"):
                continue
            if isinstance(value, (list, dict)):
                raise ctx.fail(f"{name}.{key}", f"must be a single value, got {value!r}")
            out[key] = _param(ctx, f"{name}.{key}", value, kind=kind, low=lo, high=hi).value
        return out

    def _parse_backbones(self, ctx: _Ctx, raw: dict, chosen: list[str] | None, counter) -> dict[str, BackboneSpace]:
        from automl_ft.backbones import resolve_name

        listed = raw.get("backbones")
        if isinstance(listed, list):
            listed = {str(n): {} for n in listed}
        if not isinstance(listed, dict) or not listed:
            raise ctx.fail("backbones", "must list at least one backbone (a mapping of name -> settings)")
        defaults = raw.get("backbone_defaults") or {}
        if not isinstance(defaults, dict):
            raise ctx.fail("backbone_defaults", "must be a mapping")
        names = chosen if chosen else list(listed)
        out: dict[str, BackboneSpace] = {}
        for name in names:
            settings = listed.get(name, defaults) or {}
            key = f"backbones.{name}" if name in listed else "backbone_defaults"
            if not isinstance(settings, dict):
                raise ctx.fail(key, "must be a mapping of settings")
            extra = set(settings) - BACKBONE_KEYS
            if extra:
                raise ctx.fail(f"{key}.{sorted(extra)[0]}", f"unknown key; known: {', '.join(sorted(BACKBONE_KEYS))}")
            options = dict(settings.get("options") or {})
            if not isinstance(settings.get("options") or {}, dict):
                raise ctx.fail(f"{key}.options", "must be a mapping")
            bad = set(options) - BACKBONE_OPTION_KEYS
            if bad:
                raise ctx.fail(f"{key}.options.{sorted(bad)[0]}",
                               f"unknown option; known: {', '.join(sorted(BACKBONE_OPTION_KEYS))}")
            try:
                resolve_name(name, self.modality)
            except BackboneError as e:
                if chosen:
                    raise
                raise ctx.fail(key, str(e)) from None
            if options.get("trust_remote_code") and not self.trust_remote_code:
                raise ctx.fail(f"{key}.options.trust_remote_code", "runs the model's own code; allow it on the "
                               "command line with --trust-remote-code")
            if self.trust_remote_code:
                options["trust_remote_code"] = True
            n = counter(name, options)
            fd = _param(ctx, f"{key}.freeze_depth", settings.get("freeze_depth", 0), kind="int", block_count=n,
                        backbone=repr(name))
            if self.modality == TEXT:
                for image_key in ("image_size", "probe_image_size"):
                    if image_key in settings:
                        raise ctx.fail(key, f"{image_key} applies to image backbones only")
                ml = _param(ctx, f"{key}.max_length", settings.get("max_length", 128), kind="int", low=8, high=8192)
                aug = _param(ctx, f"{key}.augment", settings.get("augment", "none"), kind="str",
                             choices=TEXT_AUGMENTS)
                out[name] = BackboneSpace(name, n, fd, ml, None, aug, dict(options))
            else:
                if "max_length" in settings:
                    raise ctx.fail(key, "max_length applies to text backbones only")
                size = _param(ctx, f"{key}.image_size", settings.get("image_size", 224), kind="int", low=16,
                              high=2048)
                aug = _param(ctx, f"{key}.augment", settings.get("augment", "crop-flip"), kind="str",
                             choices=AUGMENTS)
                probe_size = settings.get("probe_image_size")
                if isinstance(probe_size, (list, dict)):
                    raise ctx.fail(f"{key}.probe_image_size", f"must be a single value, got {probe_size!r}")
                if probe_size is not None:
                    probe_size = int(_param(ctx, f"{key}.probe_image_size", probe_size, kind="int", low=16,
                                            high=2048).value)
                out[name] = BackboneSpace(name, n, fd, None, size, aug, dict(options), probe_size)
        return out

    def _parse_probe(self, ctx: _Ctx, raw: Any, *, overridden: bool) -> tuple[bool, str | None, int | None]:
        """``probe: true | false | {backbone: NAME, image_size: N | max_length: N}``: (on, backbone, input size).

        The mapping gives the probe its own backbone, such as image networks side by side (concat_backbone.py),
        which only the probe pays for: one pass over the inputs per network. A backbone chosen on the command line
        (``--backbone``) replaces it, as it replaces the space's list.
        """
        if isinstance(raw, bool):
            return raw, None, None
        if not isinstance(raw, dict):
            raise ctx.fail("probe", f"must be true, false or a mapping (backbone, image_size), got {raw!r}")
        size_key = "max_length" if self.modality == TEXT else "image_size"
        extra = set(raw) - {"backbone", size_key}
        if extra:
            raise ctx.fail(f"probe.{sorted(extra)[0]}", f"unknown key; known: backbone, {size_key}")
        size = raw.get(size_key)
        if size is not None:
            size = int(_param(ctx, f"probe.{size_key}", size, kind="int", low=8 if self.modality == TEXT else 16,
                              high=8192 if self.modality == TEXT else 2048).value)
        name = raw.get("backbone")
        if name is not None:
            from automl_ft.backbones import resolve_name

            if not isinstance(name, str):
                raise ctx.fail("probe.backbone", f"must be a backbone name, got {name!r}")
            try:
                resolve_name(name, self.modality)
            except BackboneError as e:
                raise ctx.fail("probe.backbone", str(e)) from None
        return True, (None if overridden else name), (None if overridden and name else size)

    @staticmethod
    def _parse_adaptation(ctx: _Ctx, raw: Any) -> dict[str, dict[str, Param]]:
        if raw is None:
            raw = {"full": {"lr": 5e-5}}
        if not isinstance(raw, dict) or not raw:
            raise ctx.fail("adaptation", "must map full, lora and/or setfit to their settings")
        out: dict[str, dict[str, Param]] = {}
        for kind, settings in raw.items():
            if kind not in ADAPTATION_KEYS:
                raise ctx.fail(f"adaptation.{kind}", "unknown adaptation; use full, lora or setfit")
            settings = settings or {}
            if not isinstance(settings, dict):
                raise ctx.fail(f"adaptation.{kind}", "must be a mapping")
            extra = set(settings) - ADAPTATION_KEYS[kind]
            if extra:
                raise ctx.fail(f"adaptation.{kind}.{sorted(extra)[0]}",
                               f"unknown key; known: {', '.join(sorted(ADAPTATION_KEYS[kind]))}")
            if "lr" not in settings:
                raise ctx.fail(f"adaptation.{kind}.lr", "is required")
            p = {"lr": _param(ctx, f"adaptation.{kind}.lr", settings["lr"], kind="float", low=1e-8, high=10.0)}
            if kind == "lora":
                p["rank"] = _param(ctx, "adaptation.lora.rank", settings.get("rank", 8), kind="int", low=1, high=256)
                p["alpha"] = _param(ctx, "adaptation.lora.alpha", settings.get("alpha", 16), kind="float", low=1e-3,
                                    high=4096)
                p["dropout"] = _param(ctx, "adaptation.lora.dropout", settings.get("dropout", 0.0), kind="float",
                                      low=0.0, high=0.9)
            if kind == "setfit":
                p["iterations"] = _param(ctx, "adaptation.setfit.iterations", settings.get("iterations", 20),
                                         kind="int", low=1, high=100)
                p["max_examples"] = _param(ctx, "adaptation.setfit.max_examples",
                                           settings.get("max_examples", 1000), kind="int", low=4, high=10**7)
                if p["max_examples"].kind != "fixed":
                    raise ctx.fail("adaptation.setfit.max_examples", "must be one number, not a range")
            out[kind] = p
        return out

    @staticmethod
    def _parse_training(ctx: _Ctx, raw: Any) -> dict[str, Param]:
        if not isinstance(raw, dict):
            raise ctx.fail("training", "must be a mapping")
        extra = set(raw) - TRAINING_KEYS
        if extra:
            raise ctx.fail(f"training.{sorted(extra)[0]}", f"unknown key; known: {', '.join(sorted(TRAINING_KEYS))}")
        spec = {  # key: (default, kind, low, high)
            "weight_decay": (0.01, "float", 0.0, 10.0),
            "anchor_decay": (0.0, "float", 0.0, 10.0),
            "label_smoothing": (0.0, "float", 0.0, 0.5),
            "dropout": (0.0, "float", 0.0, 0.9),
            "batch_size": (32, "int", 1, 65536),
            "epochs": (3, "int", 1, 1000),
            "warmup_ratio": (0.06, "float", 0.0, 0.5),
            "max_grad_norm": (1.0, "float", 0.0, 1e6),
            "patience": (2, "int", 1, 1000),
            "head_lr_scale": (1.0, "float", 1e-3, 1e3),
        }
        out = {k: _param(ctx, f"training.{k}", raw.get(k, d), kind=t, low=lo, high=hi)
               for k, (d, t, lo, hi) in spec.items()}
        # random: a fresh head; probe: linear-probe-then-fine-tune (the head starts at the probe's fit)
        out["head_init"] = _param(ctx, "training.head_init", raw.get("head_init", "random"), kind="str",
                                  choices=HEAD_INITS)
        return out

    def _check_first_trial(self, ctx: _Ctx, overridden: bool) -> None:
        """Every first_trial value must lie inside the space: one outside used to be dropped silently, so the
        "known-good start" ran with sampled values instead. Per-backbone values are checked against the first
        trial's backbone unless --backbones replaced the file's list (then they apply where they fit)."""
        ft = self.first_trial
        allowed = {"backbone", "freeze_depth", "adaptation", "lr", "rank", "alpha", "lora_dropout", "max_length",
                   "image_size", "augment"} | set(TRAINING_KEYS)
        extra = set(ft) - allowed
        if extra:
            raise ctx.fail(f"first_trial.{sorted(extra)[0]}", f"unknown key; known: {', '.join(sorted(allowed))}")
        a = ft.get("adaptation")
        if a is not None and a not in self.adaptation:
            raise ctx.fail("first_trial.adaptation", f"{a!r} is not in the space's adaptation section")
        adaptation = a if a is not None else next(iter(self.adaptation))
        checks: dict[str, tuple[Param | None, str]] = {k: (p, f"training.{k}") for k, p in self.training.items()}
        ad = self.adaptation[adaptation]
        for key, own in (("lr", "lr"), ("rank", "rank"), ("alpha", "alpha"), ("lora_dropout", "dropout")):
            if key in ft and own not in ad:
                raise ctx.fail(f"first_trial.{key}", f"applies to lora, but the first trial's adaptation is "
                               f"{adaptation}; remove it or set adaptation: lora")
            checks[key] = (ad.get(own), f"adaptation.{adaptation}.{own}")
        if not overridden:
            b = ft.get("backbone")
            if b is not None and b not in self.backbones:
                raise ctx.fail("first_trial.backbone",
                               f"{b!r} is not one of the backbones ({', '.join(self.backbones)})")
            bb = self.backbones[b if b is not None else next(iter(self.backbones))]
            where = f"backbones.{bb.name}"
            for key in ("freeze_depth", "max_length", "image_size", "augment"):
                param = getattr(bb, key)
                if key in ft and param is None:
                    raise ctx.fail(f"first_trial.{key}", f"does not apply to {self.task} backbones; remove it")
                checks[key] = (param, f"{where}.{key}")
        for key, (param, source) in checks.items():
            if key not in ft or param is None:
                continue
            value = ft[key]
            integral = isinstance(value, (int, float)) and not isinstance(value, bool) and float(value) == int(value)
            if not param.contains(value) or (param.kind == "int" and not integral):
                raise ctx.fail(f"first_trial.{key}", f"{value!r} is outside the space ({source}: {_describe(param)}); "
                               "pick a value inside it")

    # ---------------------------------------------------------------------------------------------- sampling

    @property
    def max_epochs(self) -> int:
        return int(self.training["epochs"].max)

    def at_fidelity(self, config: TrialConfig) -> TrialConfig:
        """``config`` with the lowest rung's epochs on ``pruner.subset_fraction`` of the data (issue 13's lower-
        fidelity first rungs): a trial Hyperband prunes there pays that fraction of those epochs. Only trials that run
        past the rung, so every trial's last reported value comes from a whole epoch."""
        fraction = float(self.pruner.get("subset_fraction", 1.0))
        rung = int(self.pruner.get("min_resource", 1))
        if fraction >= 1.0 or config.adaptation in ("probe", "setfit") or config.epochs <= rung:
            return config
        return replace(config, subset_epochs=rung, subset_fraction=fraction)

    def suggest(self, trial: optuna.Trial, task_name: str, task: Task, seed: int) -> TrialConfig:
        """Sample a configuration define-by-run (conditional parameters only where they apply).

        Args:
            task_name: the data's full task name (``text-regression``, ...); ``task`` its fitted task, which sizes
                the head and offers its own choices (regression's loss; a remedy for imbalanced classes).
        """
        names = list(self.backbones)
        bb_name = names[0] if len(names) == 1 else trial.suggest_categorical("backbone", names)
        if len(names) == 1:
            trial.set_user_attr("backbone", bb_name)
        bb = self.backbones[bb_name]
        kinds = list(self.adaptation)
        adaptation = kinds[0] if len(kinds) == 1 else trial.suggest_categorical("adaptation", kinds)
        ad = self.adaptation[adaptation]
        values: dict[str, Any] = {
            "task": task_name,
            "backbone": bb_name,
            "num_classes": task.head_size,
            "freeze_depth": int(bb.freeze_depth.sample(trial, f"{bb_name}.freeze_depth")),
            "adaptation": adaptation,
            "lr": float(ad["lr"].sample(trial, f"{adaptation}.lr")),
            "seed": seed,
            "backbone_options": dict(bb.options),
        }
        if adaptation == "setfit":
            values["setfit_iterations"] = int(ad["iterations"].sample(trial, "setfit.iterations"))
        if adaptation == "lora":
            values["lora_rank"] = int(ad["rank"].sample(trial, "lora.rank"))
            values["lora_alpha"] = float(ad["alpha"].sample(trial, "lora.alpha"))
            values["lora_dropout"] = float(ad["dropout"].sample(trial, "lora.dropout"))
        if self.modality == TEXT:
            values["max_length"] = int(bb.max_length.sample(trial, f"{bb_name}.max_length"))
            values["augment"] = str(bb.augment.sample(trial, f"{bb_name}.augment"))
        else:
            values["image_size"] = int(bb.image_size.sample(trial, f"{bb_name}.image_size"))
            values["augment"] = str(bb.augment.sample(trial, f"{bb_name}.augment"))
        for key, param in self.training.items():
            if key == "label_smoothing" and not task.uses_label_smoothing:
                values[key] = 0.0  # not sampled: a dimension the task cannot use would only dilute TPE's model
                continue
            if key == "head_init":
                values[key] = str(param.sample(trial, key)) if task.probe_grid() else "random"
                continue
            v = param.sample(trial, key)
            values[key] = int(v) if param.kind == "int" or key in ("batch_size", "epochs", "patience") else float(v)
        if values["max_grad_norm"] == 0:
            values["max_grad_norm"] = None
        if adaptation == "setfit":  # one pass over its pairs, the head fitted in closed form
            values.update(epochs=1, head_init="random")
        losses = task.loss_choices()
        if len(losses) > 1:
            values["loss"] = str(trial.suggest_categorical("task.loss", losses))
        if task.imbalanced:
            values["imbalance"] = str(trial.suggest_categorical("task.imbalance", list(IMBALANCE)))
        return TrialConfig(**values)

    def probe_config(self, task_name: str, task: Task, seed: int) -> TrialConfig | None:
        """The probe trial's configuration (first backbone, its largest input size), or None where the space
        turns the probe off or the task has no linear head. Nothing is sampled: the probe picks its own
        regularisation on validation, so TPE never spends a trial on it."""
        if not self.probe or not task.probe_grid():
            return None
        bb = next(iter(self.backbones.values()))
        name, blocks, options = bb.name, bb.num_blocks, dict(bb.options)
        if self.probe_backbone is not None:  # probe.backbone: its own, loaded with default options
            name, options = self.probe_backbone, {"trust_remote_code": True} if self.trust_remote_code else {}
            blocks = self._block_counter(name, options)
        values: dict[str, Any] = {"task": task_name, "backbone": name, "num_classes": task.head_size,
                                  "freeze_depth": blocks, "adaptation": "probe", "seed": seed, "epochs": 1,
                                  "backbone_options": options,
                                  "imbalance": "weighted" if task.imbalanced else None}
        if self.modality == TEXT:
            values["max_length"] = self.probe_input or int(bb.max_length.max)
        else:
            values["image_size"] = self.probe_input or bb.probe_image_size or int(bb.image_size.max)
            values["augment"] = "none" if "none" in AUGMENTS else str(bb.augment.max)
        return TrialConfig(**values)

    def first_trial_params(self) -> dict[str, Any] | None:
        """The ``first_trial`` settings as Optuna parameters (for ``study.enqueue_trial``), or None."""
        if not self.first_trial:
            return None
        ft = self.first_trial
        names = list(self.backbones)
        bb_name = ft.get("backbone") if ft.get("backbone") in self.backbones else names[0]
        bb = self.backbones[bb_name]
        params: dict[str, Any] = {}
        if len(names) > 1:
            params["backbone"] = bb_name
        kinds = list(self.adaptation)
        adaptation = ft.get("adaptation", kinds[0])
        if len(kinds) > 1:
            params["adaptation"] = adaptation

        def put(name: str, param: Param | None, key: str, cast=None) -> None:
            if param is None or param.kind == "fixed" or key not in ft:
                return
            value = ft[key]
            if cast is not None:
                value = cast(value, param)
            if param.contains(value):
                params[name] = value

        def clamp(v: Any, p: Param) -> Any:
            return max(int(p.low), min(int(p.high), int(v))) if p.kind == "int" else v

        put(f"{bb_name}.freeze_depth", bb.freeze_depth, "freeze_depth", clamp)
        ad = self.adaptation[adaptation]
        put(f"{adaptation}.lr", ad["lr"], "lr")
        if adaptation == "lora":
            put("lora.rank", ad["rank"], "rank")
            put("lora.alpha", ad["alpha"], "alpha")
            put("lora.dropout", ad["dropout"], "lora_dropout")
        put(f"{bb_name}.max_length", bb.max_length, "max_length")
        put(f"{bb_name}.image_size", bb.image_size, "image_size")
        put(f"{bb_name}.augment", bb.augment, "augment")
        for key, param in self.training.items():
            put(key, param, key)
        return params

    def mirrors(self) -> bool:
        """Whether some trial of the space may flip its training images left-right."""
        return any(bb.augment is not None and any(
            a in MIRRORING for a in ((bb.augment.value,) if bb.augment.kind == "fixed" else bb.augment.choices))
            for bb in self.backbones.values())

    def without_mirroring(self) -> list[str]:
        """Replace the augmentations that flip images by ``crop`` (search/mirror.py: data whose labels a mirror
        changes). Returns the backbones changed."""
        from dataclasses import replace

        changed = []
        for name, bb in self.backbones.items():
            aug = bb.augment
            if aug is None:
                continue
            choices = (aug.value,) if aug.kind == "fixed" else aug.choices
            keep = tuple(dict.fromkeys("crop" if a in MIRRORING else a for a in choices))
            if keep == tuple(choices):
                continue
            new = Param("categorical", choices=keep) if len(keep) > 1 else Param("fixed", value=keep[0])
            self.backbones[name] = replace(bb, augment=new)
            changed.append(name)
        if self.first_trial.get("augment") in MIRRORING:
            self.first_trial["augment"] = "crop"
        return changed

    def limit_to_data(self, n: int, single_label: bool) -> list[str]:
        """Drop the adaptations the data cannot use: those whose ``max_examples`` is below its ``n`` labelled
        examples (SetFit's pairs pay off on a handful of examples and cost more than they return on thousands),
        and SetFit unless each example has one class. Never the last adaptation. Returns the dropped names."""
        dropped = []
        for kind in list(self.adaptation):
            cap = self.adaptation[kind].get("max_examples")
            unfit = (cap is not None and n > int(cap.value)) or (kind == "setfit" and not single_label)
            if unfit and len(self.adaptation) > 1:
                del self.adaptation[kind]
                dropped.append(kind)
        return dropped

    def setfit_trial_params(self) -> dict[str, Any] | None:
        """A SetFit trial with SetFit's own defaults (lr 2e-5, 20 rounds of pairs, batch 16 where the space allows
        them) on top of ``first_trial``'s other settings, or None where the space has no setfit adaptation.
        Queued after the first trial on small data, so a 3-trial study tries the method made for it."""
        if "setfit" not in self.adaptation:
            return None
        params = {k: v for k, v in (self.first_trial_params() or {}).items()
                  if not k.startswith(tuple(f"{kind}." for kind in self.adaptation)) and k != "head_init"}
        if len(self.adaptation) > 1:
            params["adaptation"] = "setfit"
        ad = self.adaptation["setfit"]
        for name, param, want in (("setfit.lr", ad["lr"], 2e-5), ("setfit.iterations", ad["iterations"], 20),
                                  ("batch_size", self.training.get("batch_size"), 16)):
            if param is None or param.kind == "fixed":
                continue
            if param.contains(want):
                params[name] = want
            elif param.kind in ("int", "float"):
                params[name] = type(want)(min(max(want, param.low), param.high))
        return params

    def fingerprint(self) -> str:
        """A short hash of the resolved space, so a resumed study can tell that its space changed."""
        data = json.dumps({"raw": self.raw, "backbones": sorted(self.backbones)}, sort_keys=True, default=str)
        return hashlib.sha1(data.encode()).hexdigest()[:12]


def count_blocks(name: str, options: dict[str, Any] | None = None) -> int:
    """The number of blocks of a backbone without loading its weights (registry, timm on 'meta', HF config)."""
    from automl_ft.backbones import _REGISTRY, _timm_parts, resolve_name

    r = resolve_name(name)
    if r.kind == "dense":
        from automl_ft.segmentation_models import count_stages

        return count_stages(r.target)
    if r.kind == "concat":  # the parts' blocks one after another (concat_backbone.py)
        from automl_ft.concat_backbone import parse_name

        return sum(count_blocks(part, options) for part in parse_name(r.target))
    if r.kind == "registry" and _REGISTRY[r.target].num_blocks is not None:
        return int(_REGISTRY[r.target].num_blocks)
    if r.kind == "timm":
        import timm
        import torch

        with torch.device("meta"):
            net = timm.create_model(r.target, pretrained=False)
        return len(_timm_parts(net).blocks)
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(r.target, trust_remote_code=bool((options or {}).get("trust_remote_code")))
    except Exception as e:
        raise BackboneError(f"backbone {name!r}: cannot read its config ({str(e).splitlines()[0][:200]}); check the "
                            "name or pass a local model folder") from None
    for attr in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        if isinstance(getattr(cfg, attr, None), int):
            return int(getattr(cfg, attr))
    raise BackboneError(f"backbone {name!r}: its config does not say how many layers it has")


def space_modality(task: Any) -> str:
    """The modality a space's ``task:`` names: a modality (``text``) or any full task name (``text-regression``)."""
    from automl_ft.tasks import FULL_TASKS, split_task_name

    if task in list_modalities():
        return str(task)
    if task in FULL_TASKS:
        return split_task_name(task)[0]
    raise ValueError(f"must be a modality ({', '.join(list_modalities())}) or a task ({', '.join(FULL_TASKS)}), "
                     f"got {task!r}")


def default_space_path(name: str) -> Path:
    """A bundled space by name: a modality's default (``text`` -> text-classification.yaml) or a file stem."""
    stem = f"{name}-classification" if name in list_modalities() else name
    return Path(str(importlib.resources.files("automl_ft.search_spaces") / f"{stem}.yaml"))


def load_space(path: str | Path | None, task: str, *, backbones: list[str] | None = None,
               trust_remote_code: bool = False) -> SearchSpace:
    """Load and validate a search-space YAML (the default of the task's modality when ``path`` is None).

    Args:
        task: the data's full task name, or a modality.

    Raises:
        SearchSpaceError: unreadable or malformed file, or a space for the other modality.
    """
    import yaml

    modality = space_modality(task)
    # a task's own bundled space when there is one (image-segmentation.yaml: a different model family), else the
    # modality's default
    own = default_space_path(task) if task not in list_modalities() else None
    file = Path(path).expanduser() if path else own if own is not None and own.is_file() else default_space_path(
        modality)
    if not file.is_file():
        raise SearchSpaceError(f"{file}: no such search-space file; pass --space with a YAML file")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SearchSpaceError(f"{file}: not UTF-8 text; save the YAML as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SearchSpaceError(f"{file}: invalid YAML{where}: {problem}; fix the syntax") from None
    if raw is None:
        raise SearchSpaceError(f"{file}: the file is empty; see search_spaces/ for examples")
    space = SearchSpace(raw, str(file), backbones=backbones, trust_remote_code=trust_remote_code)
    if space.modality != modality:
        raise SearchSpaceError(f"{file}: task: the space is for {space.modality} data but the data is {task}; pass a "
                               "matching --space")
    return space
