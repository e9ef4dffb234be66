"""The Python API: ``automl_ft.tune`` and ``automl_ft.load``, for notebooks and services.

The CLI is a layer over the same code (``automl-ft tune`` runs :func:`automl_ft.tuning.run_search` with a printer;
``predict`` the same :class:`~automl_ft.predict.Predictor`, item building and task decoding this module uses), so
a model answers the same here as on the command line. Nothing is printed unless ``progress=True``; a mistake
raises an :mod:`automl_ft.errors` exception (``UsageError``, ``DataError``, ``ModelDirError``...) instead of
exiting.

Example (a notebook)::

    import automl_ft

    result = automl_ft.tune("sms_spam.csv", "runs/sms", trials=4)
    result.val_metric, result.val_score, result.test_metrics["macro_f1"]
    model = result.load()                     # or automl_ft.load("runs/sms/best"), torch-free
    model.predict(["WINNER!! Claim your prize now", "see you at lunch?"])
    #    input label     score
    # 0      0  spam  0.98...
    # 1      1   ham  0.99...

Importing this module is light (no torch, optuna, onnxruntime or pandas): each function imports what it needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl_ft.errors import DataError, UsageError

if TYPE_CHECKING:
    import optuna
    import pandas as pd

# TuneOptions fields that are not options of tune(): the data and run folder are its arguments; argv and live are
# the CLI's (the command line recorded in run.json, rich's live view).
_NOT_OPTIONS = ("data", "out", "argv", "live")
# Where a DataFrame given to tune() is written: beside the run folder, never inside it (tune refuses DATA inside
# its run folder, which export and cleanups may rewrite) and never in the user's data folder.
DATAFRAME_DIR_SUFFIX = ".data"


def tune_option_names() -> list[str]:
    """The keyword options :func:`tune` accepts: the CLI's ``tune`` flags, with ``_`` for ``-``."""
    from automl_ft.tuning import TuneOptions

    return [f.name for f in dataclasses.fields(TuneOptions) if f.name not in _NOT_OPTIONS]


@dataclass
class TuneResult:
    """What :func:`tune` found and exported.

    Attributes:
        best_trial: number of the trial that was exported.
        config: its resolved configuration (backbone, adaptation, learning rate, ...).
        val_metric: the validation metric the search optimised (``val_accuracy``, ``val_micro_f1``, ``val_rmse``...).
        val_score: the best trial's value of it.
        test_metrics: the task's metrics on the held-out test split (``metrics.json["test"]``); None when another
            worker of a shared study exports the model.
        metrics: all of ``metrics.json`` (test metrics, ONNX check, latency, INT8), or None as above.
        model_dir: the exported model folder (``RUN_DIR/best``); :meth:`load` opens it.
        run_dir: the run folder (study, trials, report).
        task: the full task name (``text-classification``, ``image-multilabel``...).
    """

    best_trial: int
    config: dict[str, Any]
    val_metric: str
    val_score: float
    test_metrics: dict[str, Any] | None
    metrics: dict[str, Any] | None
    model_dir: Path
    run_dir: Path
    task: str
    _study_name: str = field(default="", repr=False)
    _storage: str | None = field(default=None, repr=False)
    _study: Any = field(default=None, repr=False)

    @property
    def study(self) -> optuna.Study:
        """The Optuna study (loaded on first use from the run's storage): ``result.study.trials_dataframe()``."""
        if self._study is None:
            from automl_ft.runs import open_run

            self._study = open_run(self.run_dir, self._storage)[2]
        return self._study

    def load(self, **options: Any) -> Model:
        """The exported model, ready to predict (see :func:`load` for ``options``)."""
        return load(self.model_dir, **options)


def tune(data: str | Path | pd.DataFrame | None, out: str | Path, *, progress: bool = False,
         **options: Any) -> TuneResult:
    """Search, fine-tune, test and export a model, as ``automl-ft tune DATA --out OUT`` does.

    Args:
        data: an image folder, a table file (CSV/TSV/JSONL/Parquet), a pandas DataFrame, or None for the embedded
            demo. A DataFrame is written once to ``OUT.data/<content hash>.parquet`` beside the run folder (tune
            refuses data inside its run folder, and export reloads the data from there later); list cells
            (multi-label) stay lists; relative image paths are taken from the current folder.
        out: the run folder: created, or resumed when it holds the same study (the same call again adds nothing;
            a larger ``trials`` adds the missing trials).
        progress: print the CLI's messages and progress to stderr (default: silent).
        **options: the ``tune`` command's options, ``_`` for ``-``: ``task``, ``text_column``, ``image_column``,
            ``label_column``, ``label_sep``, ``space``, ``trials``, ``timeout``, ``storage``, ``study``, ``device``,
            ``seed``, ``backbones`` (a list or "a,b"), ``trust_remote_code``, ``artifacts``, ``objective``,
            ``max_latency_ms``, ``latency_threads``, ``int8``, ``cv``, ``test_fraction``. See ``automl-ft tune --help``.

    Returns:
        A :class:`TuneResult`.

    Raises:
        UsageError, DataError, SearchSpaceError, BackboneError, StorageError: a bad option or input (nothing is
            written). SearchFailedError: no trial gave a model (every trial failed, or none meets
            ``max_latency_ms``).

    Example::

        >>> result = automl_ft.tune("reviews.csv", "runs/reviews", trials=8, backbones=["minilm-l6"])  # doctest: +SKIP
        >>> result.test_metrics["accuracy"]  # doctest: +SKIP
        0.91
    """
    import os

    from automl_ft.console import printer, silent
    from automl_ft.tuning import TuneOptions, run_search

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as the CLI: no fork warning from data loaders

    known = tune_option_names()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UsageError(f"tune() got unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    options = _checked_options(options)
    if out is None or not str(out).strip():
        raise UsageError("tune() needs out, the run folder (e.g. 'runs/my-model')")
    out = Path(out).expanduser()
    if data is not None and not isinstance(data, (str, Path)) and not _is_dataframe(data):
        raise UsageError(f"tune() data must be a path, a pandas DataFrame or None (the demo), not "
                         f"{type(data).__name__}")
    opts = TuneOptions(data=None, out=str(out), **options)  # validates like the CLI, before anything is written
    source, created = _dataframe_source(data, out, options) if _is_dataframe(data) else (data, False)
    opts = dataclasses.replace(opts, data=None if source is None else str(source), argv=_as_argv(source, out, options))
    try:
        outcome = run_search(opts, printer() if progress else silent, quiet=not progress)
    except BaseException:
        if created and not _recorded(out, Path(source)):  # refused before the run recorded it: leave nothing
            _remove_copy(Path(source))
        raise
    best, study, record = outcome.best, outcome.study, json.loads(outcome.run.run_file.read_text())
    metrics = outcome.metrics
    if metrics is not None:  # as written, with what --int8 added after the export
        metrics = json.loads((outcome.run.best / "metrics.json").read_text())
    return TuneResult(
        best_trial=best.number, config=dict(best.user_attrs.get("config", {})),
        val_metric=study.metric_names[0] if study.metric_names else "val_accuracy", val_score=float(best.values[0]),
        test_metrics=None if metrics is None else metrics.get("test"), metrics=metrics, model_dir=outcome.run.best,
        run_dir=outcome.run.path, task=str(record.get("task")), _study_name=study.study_name,
        _storage=options.get("storage"), _study=study)


_INT_OPTIONS = ("trials", "seed", "latency_threads")
_NUMBER_OPTIONS = ("timeout", "max_latency_ms", "test_fraction")
_BOOL_OPTIONS = ("trust_remote_code", "int8")


def _checked_options(options: dict[str, Any]) -> dict[str, Any]:
    """The CLI's argparse types, for keyword options: a wrong type is a UsageError naming the option, not a
    TypeError from deep inside the search."""
    import math

    out = {}
    for name, value in options.items():
        if value is None:
            out[name] = None
        elif name == "backbones":
            out[name] = _backbone_list(value)
        elif name in _BOOL_OPTIONS:
            if not isinstance(value, bool):
                raise UsageError(f"{name} must be True or False, got {value!r}")
            out[name] = value
        elif name in _INT_OPTIONS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"{name} must be an integer, got {value!r}")
            out[name] = value
        elif name in _NUMBER_OPTIONS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UsageError(f"{name} must be a finite number, got {value!r}; leave it out for no limit")
            out[name] = float(value)
        else:
            if not isinstance(value, (str, Path)):
                raise UsageError(f"{name} must be a string, got {type(value).__name__}")
            out[name] = str(value)
    return out


def _is_dataframe(data: Any) -> bool:
    return type(data).__module__.startswith("pandas") and type(data).__name__ == "DataFrame"


def _backbone_list(value: Any) -> list[str]:
    names = [b.strip() for b in value.split(",")] if isinstance(value, str) else [str(b).strip() for b in value]
    names = [b for b in names if b]
    if not names:
        raise UsageError("backbones is empty; pass names (a list, or a string separated by commas)")
    return names


def _dataframe_source(df: pd.DataFrame, out: Path, options: dict[str, Any]) -> tuple[Path, bool]:
    """Write ``df`` to ``OUT.data/<hash>.parquet`` (once per content); returns the path and whether this call
    wrote it.

    The file lives beside the run folder: tune refuses DATA inside its run folder, and export and report reload
    the data from the recorded path later, so it must stay. Named by content, the same DataFrame resumes the same
    study and another one gets a new file (and tune then says the run folder holds another study).
    """
    import io

    if len(df) == 0:
        raise DataError("the DataFrame has no rows; it needs labeled rows")
    df = df.copy()
    df.columns = [str(c) for c in df.columns]
    image_col = options.get("image_column") or ("image" if "image" in df.columns else None)
    if image_col in df.columns:  # relative image paths: from the current folder, as a notebook user means them
        df[image_col] = [str(Path(v).expanduser().resolve()) if isinstance(v, (str, Path)) and str(v).strip() else v
                         for v in df[image_col]]
    buffer = io.BytesIO()
    try:
        df.reset_index(drop=True).to_parquet(buffer, index=False)
    except (ValueError, TypeError, OverflowError, ImportError) as e:  # pyarrow: ArrowInvalid, ArrowTypeError
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DataError(f"the DataFrame cannot be stored as Parquet ({msg}); make each column one type (text, "
                        "numbers, or lists of labels)") from None
    raw = buffer.getvalue()
    folder = out.resolve().parent / f"{out.resolve().name}{DATAFRAME_DIR_SUFFIX}"
    path = folder / f"{hashlib.sha256(raw).hexdigest()[:16]}.parquet"
    if path.is_file():
        return path, False
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file; tune() keeps the DataFrame's copy there: move it away")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(raw)
    tmp.replace(path)
    return path, True


def _recorded(out: Path, path: Path) -> bool:
    """Whether OUT's run.json names ``path`` as its data (then the copy must stay for export and report)."""
    try:
        return json.loads((out / "run.json").read_text()).get("data_source") == str(path)
    except (OSError, ValueError, AttributeError):
        return False


def _remove_copy(path: Path) -> None:
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()  # only when empty: other DataFrames' copies stay
    except OSError:
        pass


def _as_argv(source: str | Path | None, out: Path, options: dict[str, Any]) -> list[str]:
    """The equivalent command line, recorded in run.json and the model card like a CLI run's."""
    argv = ["tune", *([str(source)] if source is not None else []), "--out", str(out)]
    for name in tune_option_names():
        if name not in options:
            continue
        value = options[name]
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv += [flag] if value else []
        elif value is not None:
            argv += [flag, ",".join(value) if isinstance(value, list) else str(value)]
    return argv


# ------------------------------------------------------------------------------------------------------ load


class Model:
    """An exported model folder loaded for inference with onnxruntime (torch is never imported).

    Attributes:
        labels: the class names (``[]`` for regression).
        task: the full task name (``text-classification``, ``image-multilabel``, ``text-regression``...).
        metrics: the export's ``metrics.json`` (test metrics, ONNX check, ...), ``{}`` if absent.
        model_dir: the folder.

    Example::

        >>> model = automl_ft.load("runs/sms/best")  # doctest: +SKIP
        >>> model.predict(["free entry in a weekly competition"], as_dicts=True)  # doctest: +SKIP
        [{'input': 0, 'label': 'spam', 'score': 0.97}]
    """

    def __init__(self, model_dir: str | Path, *, provider: str = "auto", threads: int | None = None,
                 int8: bool = False, batch_size: int = 32):
        from automl_ft.predict import Predictor

        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        if threads is not None and threads < 1:
            raise UsageError(f"threads must be at least 1, got {threads}")
        self._predictor = Predictor(model_dir, provider=provider, threads=threads, int8=int8)
        self.model_dir = self._predictor.dir
        self.batch_size = batch_size
        self.labels: list[str] = list(self._predictor.labels)
        self.task: str = self._predictor.task_name
        try:
            self.metrics: dict[str, Any] = json.loads((self.model_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            self.metrics = {}

    def __repr__(self) -> str:
        return f"Model({str(self.model_dir)!r}, task={self.task!r}, labels={self.labels!r})"

    @property
    def is_image(self) -> bool:
        return self._predictor.is_image

    def predict(self, inputs: Any, *, top_k: int = 1, as_dicts: bool = False) -> pd.DataFrame | list[dict]:
        """Predict, with the fields ``automl-ft predict`` prints for each input.

        Args:
            inputs: texts (a list, or one string) for a text model; image paths, PIL images or HxWx3 uint8 NumPy
                arrays for an image model; or a DataFrame with the training data's columns (its label column, if
                present, comes back as ``true_label``).
            top_k: also list the k most likely labels (classification) / keep the k best scores (multi-label).
            as_dicts: a list of dicts (one per input, JSON-ready) instead of a DataFrame.

        Returns:
            One row per input, in order: ``input`` (its position), then the task's fields (``label``/``score``,
            ``labels``/``scores`` or ``value``), or ``error`` for an input that could not be read (an empty text, a
            missing or corrupt image).

        Raises:
            UsageError: inputs of the wrong kind for this model (e.g. images for a text model).
        """
        from automl_ft.predict import predict_items

        if top_k < 1:
            raise UsageError(f"top_k must be at least 1, got {top_k}")
        top_k = min(top_k, max(1, len(self.labels)))
        rows = list(predict_items(self._predictor, iter(self._items(inputs)), batch_size=self.batch_size,
                                  top_k=top_k))
        if as_dicts:
            return rows
        import pandas as pd

        return pd.DataFrame.from_records(rows)

    def predict_proba(self, inputs: Any) -> pd.DataFrame:
        """Class probabilities, one column per label (softmax for classification, each label's sigmoid for
        multi-label), one row per input; rows of unreadable inputs are NaN.

        Raises:
            UsageError: a regression model (it predicts values: use :meth:`predict`), or inputs of the wrong kind.
        """
        import numpy as np
        import pandas as pd

        from automl_ft.predict import predict_with_logits

        self._predictor.task.probabilities(np.zeros((0, self._predictor.task.head_size), np.float32))  # regression
        rows = []
        for _, logits in predict_with_logits(self._predictor, iter(self._items(inputs)), batch_size=self.batch_size):
            rows.append(np.full(len(self.labels), np.nan) if logits is None else
                        self._predictor.task.probabilities(logits[None, :])[0])
        return pd.DataFrame(np.asarray(rows, dtype=np.float64).reshape(len(rows), len(self.labels)),
                            columns=self.labels)

    def evaluate(self, data: str | Path | pd.DataFrame) -> dict[str, Any]:
        """The task's metrics (those of ``metrics.json["test"]``: accuracy/macro F1, micro F1, RMSE...) on labeled
        data: a table file or a DataFrame with the training data's input and label columns.

        The predictions come from the same code as ``automl-ft predict``, which prints the same figures for a
        labeled table. Rows whose label is none of the model's classes are not scored (``metrics["unknown_labels"]``
        counts them); unreadable rows neither.

        Raises:
            DataError: no label column, or no row with a usable label.
        """
        from automl_ft.predict import Scorer, predict_with_logits

        items = list(self._table(data))
        if all(it.true_label is None for it in items):
            raise DataError(f"no label column {self._predictor.record.get('label_column') or 'label'!r} in the data; "
                            "evaluate needs the true labels (name the column like the training data)")
        scorer = Scorer(self._predictor)
        for result, logits in predict_with_logits(self._predictor, iter(items), batch_size=self.batch_size):
            if "error" not in result and "true_label" in result:
                scorer.add(result["true_label"], logits)
        metrics = scorer.metrics()
        if metrics is None:
            raise DataError("no row has a readable input and a label the model knows; nothing to score")
        unknown = sum(scorer.unknown.values())
        return {**metrics, **({"unknown_labels": unknown} if unknown else {})}

    # ---------------------------------------------------------------------------------------------- inputs

    def _items(self, inputs: Any) -> list[Any]:
        from automl_ft.predict import Item

        if _is_dataframe(inputs):
            return list(self._table(inputs))
        if isinstance(inputs, (str, Path)) or _is_image_object(inputs) and not _is_batch_array(inputs):
            inputs = [inputs]
        elif _is_batch_array(inputs):
            inputs = list(inputs)
        if not isinstance(inputs, Iterable):
            raise UsageError(f"predict() takes a list of inputs or a DataFrame, not {type(inputs).__name__}")
        items = []
        for i, x in enumerate(inputs):
            if self.is_image:
                items.append(self._image_item(i, x))
            else:
                if not isinstance(x, str):
                    raise UsageError(f"input {i} is a {type(x).__name__}, but this is a text model; pass strings")
                items.append(Item(i, x) if x.strip() else Item(i, x, error="empty text"))
        return items

    def _image_item(self, i: int, x: Any) -> Any:
        from automl_ft.predict import Item

        if isinstance(x, (str, Path)):
            path = Path(x).expanduser()
            return Item(i, path) if path.is_file() else Item(i, path, error=f"no image file {str(x)!r}")
        if _is_image_object(x):
            return Item(i, _as_pil(x, i))
        raise UsageError(f"input {i} is a {type(x).__name__}, but this is an image model; pass image paths, PIL "
                         "images or HxWx3 uint8 arrays")

    def _table(self, data: Any) -> Iterable[Any]:
        """Items of a labeled table: a DataFrame, or a table file read as ``automl-ft predict`` reads it."""
        from automl_ft.data.tables import _as_strings, table_format
        from automl_ft.predict import _table_items, frame_items

        if _is_dataframe(data):
            if len(data) == 0:
                raise DataError("the DataFrame has no rows")
            data = data.reset_index(drop=True)
            data.columns = [str(c) for c in data.columns]
            original: dict[str, Any] = {}
            strings = _as_strings(data, original)  # what read_table gives for a Parquet file, list cells kept
            return frame_items(strings, original["frame"], self._predictor.record, name="DataFrame",
                               base=Path.cwd())
        if isinstance(data, (str, Path)):
            path = Path(data).expanduser()
            if not path.is_file():
                raise DataError(f"{path}: no such file")
            if table_format(path) is None:
                raise UsageError(f"{path}: not a table; pass a .csv/.tsv/.jsonl/.parquet file or a DataFrame")
            return _table_items(path, self._predictor.record)
        raise UsageError(f"pass a table path or a pandas DataFrame, not {type(data).__name__}")


def _is_batch_array(x: Any) -> bool:
    """A NumPy array of several images (N x H x W x C), which predict() takes as N inputs."""
    return type(x).__module__ == "numpy" and getattr(x, "ndim", 0) == 4


def _is_image_object(x: Any) -> bool:
    module = type(x).__module__
    return module.startswith("PIL.") or (module == "numpy" and getattr(x, "ndim", 0) in (2, 3, 4))


def _as_pil(x: Any, i: int) -> Any:
    from PIL import Image

    if isinstance(x, Image.Image):
        return x
    import numpy as np

    arr = np.asarray(x)
    if arr.dtype != np.uint8:
        raise UsageError(f"input {i}: a {arr.dtype} array; pass uint8 pixels (H x W or H x W x 3, 0-255)")
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4):
        raise UsageError(f"input {i}: an array of shape {arr.shape}; pass H x W x 3 (channels last)")
    return Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr)


def load(model_dir: str | Path, *, provider: str = "auto", threads: int | None = None, int8: bool = False,
         batch_size: int = 32) -> Model:
    """Load an exported model folder (``RUN_DIR/best``, or an ``automl-ft export --out`` folder) for inference.

    Torch-free: onnxruntime and the exported tokenizer or image preprocessing only.

    Args:
        provider: onnxruntime execution provider: ``auto``, ``cpu`` or ``cuda``.
        threads: onnxruntime intra-op threads (default: the physical cores).
        int8: use the quantized ``model.int8.onnx`` (refused when its accuracy check failed).
        batch_size: inputs per onnxruntime call.

    Raises:
        ModelDirError: not an exported model folder, or unreadable files. UsageError: a bad option.

    Example::

        >>> model = automl_ft.load("runs/sms/best")  # doctest: +SKIP
        >>> model.task, model.labels  # doctest: +SKIP
        ('text-classification', ['ham', 'spam'])
        >>> model.evaluate("sms_test.csv")["accuracy"]  # doctest: +SKIP
        0.98
    """
    return Model(model_dir, provider=provider, threads=threads, int8=int8, batch_size=batch_size)
