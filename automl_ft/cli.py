"""The ``automl-ft`` command line: tune, export, predict, report, bench.

Exit codes: 0 success, 2 bad input or usage (one line on stderr, no traceback), 1 a search that left no model
or an unexpected error, 130 Ctrl-C. The work is in the Python API's modules (api, tuning, runs, predict); this
one parses the arguments, calls them and prints.
Heavy packages are imported by the sub-commands that need them, so ``--help`` and ``predict`` start fast.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

from automl_ft import __version__
from automl_ft.errors import AutomlError

BENCHES = ("lora", "adamw", "onnx", "train", "tasks", "serve", "gpu")  # gpu: bench/gpu.sh, the prepared run of every GPU check


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors on one line (exit 2) instead of the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message}; see '{self.prog} --help'\n")


def _int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    return value


def _number(text: str) -> float:
    """A finite number: float() also accepts 'nan' and 'inf', which compare false with every limit and so used to
    slip past --timeout's "positive" check (nan never timed out; inf is no limit)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number; pass a number, or leave the flag out "
                                         "for no limit")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="automl-ft", description="Searched, fine-tuned, tested and ONNX-exported classifiers "
                     "from labeled images or text.")
    parser.add_argument("--version", action="version", version=f"automl-ft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("tune", help="search and fine-tune a model on labeled data, then test and export the best",
                       description="Search and fine-tune on DATA; the best model goes to RUN_DIR/best. Re-running "
                       "the same command resumes the study. Without DATA, runs an embedded demo (digits).")
    t.add_argument("data", nargs="?", metavar="DATA",
                   help="image folder (one sub-folder per class, optionally under train/val/test) or a "
                        "CSV/TSV/JSONL/Parquet file with text and label columns; omit for the demo")
    t.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (created; resumed if it exists)")
    from automl_ft.tasks import FULL_TASKS  # numpy only: --help stays fast

    t.add_argument("--task", default="auto", choices=("auto", *FULL_TASKS), metavar="TASK",
                   help="auto (the default: modality from the data, problem from the labels; tune prints what it "
                        f"chose) or one of {', '.join(FULL_TASKS)}")
    t.add_argument("--text-column", metavar="C", help="text column of a table (default: text)")
    t.add_argument("--image-column", metavar="C",
                   help="image-path column of a table (default: image); relative paths resolve against the table's "
                        "folder")
    t.add_argument("--label-column", metavar="C", help="label column of a table (default: label)")
    t.add_argument("--label-sep", default="|", metavar="S",
                   help="what joins several labels in one multi-label cell (default: |; JSONL/Parquet may hold "
                        "lists instead)")
    t.add_argument("--space", metavar="FILE", help="search-space YAML (default: search_spaces/<task>.yaml)")
    t.add_argument("--trials", type=_int, default=8, metavar="N",
                   help="total trials of the study (complete + pruned), across resumes and workers (default 8)")
    t.add_argument("--timeout", type=_number, metavar="SECONDS",
                   help="stop starting trials after this long; running trials stop at their next epoch")
    t.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: sqlite:///RUN_DIR/study.db; "
                   "postgresql://... for many workers)")
    t.add_argument("--study", metavar="NAME", help="study name (default: derived from the data)")
    t.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    t.add_argument("--seed", type=int, default=0, help="seed of the split, the sampler and training (default 0)")
    t.add_argument("--backbones", metavar="A,B", help="comma-separated backbones to search over instead of the "
                   "space's list (registry names, timm names, Hugging Face ids or folders)")
    t.add_argument("--trust-remote-code", action="store_true",
                   help="allow Hugging Face models that run their own code (off by default)")
    t.add_argument("--artifacts", metavar="PATH|s3://B/P",
                   help="artifact store for trial checkpoints shared by workers (default: RUN_DIR/artifacts)")
    t.add_argument("--objective", default="accuracy", metavar="accuracy[,latency]",
                   help="accuracy (default) or accuracy,latency: a multi-objective study where every candidate is "
                        "exported and timed with onnxruntime; the report shows the Pareto front")
    t.add_argument("--max-latency-ms", type=_number, metavar="X",
                   help="export the most accurate model whose onnxruntime latency (CPU, batch 1) is at most X ms")
    t.add_argument("--latency-threads", type=_int, metavar="T",
                   help="threads for latency timing (default: the physical cores); the same for every candidate")
    t.add_argument("--int8", action="store_true",
                   help="also export an INT8 model (usable only if it loses at most 1 point of test accuracy)")
    t.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                   help="recompute the frozen layers of text trials every epoch instead of once per text (to measure "
                        "what the cache saves; the results are the same)")
    t.add_argument("--test-fraction", type=_number, default=0.1, metavar="F",
                   help="share of the labelled examples held out as the test split when the data gives none "
                        "(default 0.1; 0: none, for a test set of your own; small data holds none either way when "
                        "it would average under one example per class)")
    t.add_argument("--cv", choices=("auto", "off"), default="auto",
                   help="small data (validation split under 100 examples, or a class under 50): score trials by "
                        "repeated stratified k-fold on train+val and refit the best on all of it (auto), or not (off)")

    e = sub.add_parser("export", help="evaluate and export a trial of a run to ONNX (default: the best)")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--trial", type=int, metavar="N", help="trial number (default: the best complete trial)")
    e.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/best, or RUN_DIR/trial-N)")
    e.add_argument("--storage", metavar="URL", help="storage URL, needed when run.json hides its password")
    e.add_argument("--int8", action="store_true",
                   help="add model.int8.onnx: dynamic INT8 for text, static QDQ calibrated on validation data for "
                        "CNNs; marked unusable when it loses more than 1 point of test accuracy")

    e.add_argument("--format", default="auto", choices=("auto", "hf"),
                   help="auto (default): ONNX, plus hf/ (save_pretrained + tokenizer, Optimum's ONNX layout) for "
                        "Hugging Face backbones; hf: hf/ for every backbone (timm's folder for image models)")

    p = sub.add_parser("predict", help="classify files, folders, tables or stdin lines with an exported model")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="an exported model folder, e.g. RUN_DIR/best")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image file, image folder (recursive), CSV/TSV/JSONL/Parquet table, or - for text lines on "
                        "stdin")
    p.add_argument("--top-k", type=int, default=1, metavar="K", help="also list the K most likely labels")
    p.add_argument("--batch-size", type=int, default=32, metavar="B")
    p.add_argument("--provider", default="auto", help="onnxruntime execution provider: auto, cpu or cuda")
    p.add_argument("--threads", type=int, metavar="T",
                   help="onnxruntime intra-op threads (default: the physical cores)")
    p.add_argument("--int8", action="store_true",
                   help="use the quantized model.int8.onnx (refused when its accuracy check failed)")
    p.add_argument("--out-dir", metavar="DIR",
                   help="segmentation models: write one mask PNG per input image here (class indices)")

    s = sub.add_parser("serve", help="serve an exported model over HTTP (FastAPI + onnxruntime, micro-batched)",
                       description="HTTP server: GET /health, GET /v1/metadata, POST /v1/predict (JSON "
                       "{\"inputs\": [...]}), POST /v1/predict/upload (image files), docs at /docs.")
    s.add_argument("model_dir", metavar="MODEL_DIR", help="an exported model folder, e.g. RUN_DIR/best")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=_int, default=8000, help="port (default 8000)")
    s.add_argument("--workers", type=_int, default=1, metavar="N", help="server processes, each with the model")
    s.add_argument("--max-batch", type=_int, default=32, metavar="B",
                   help="most inputs of concurrent requests run as one model call (1: no micro-batching)")
    s.add_argument("--max-wait-ms", type=_number, default=5.0, metavar="MS",
                   help="how long the first request of a batch waits for others (default 5)")
    s.add_argument("--max-body-mb", type=_number, default=10.0, metavar="M",
                   help="larger request bodies are refused with 413 (default 10)")
    s.add_argument("--max-inputs", type=_int, default=256, metavar="N",
                   help="more inputs in one request are refused with 413 (default 256)")
    s.add_argument("--provider", default="auto", help="onnxruntime execution provider: auto, cpu or cuda")
    s.add_argument("--threads", type=_int, metavar="T", help="onnxruntime intra-op threads (default: physical cores)")

    u = sub.add_parser("push", help="upload an exported model folder to the Hugging Face Hub",
                       description="Upload MODEL_DIR to the Hub repository REPO_ID (created if needed): hf/ at the "
                       "root, the model card as README.md, the rest of the export under automl-ft/.")
    u.add_argument("model_dir", metavar="MODEL_DIR", help="an exported model folder, e.g. RUN_DIR/best")
    u.add_argument("repo_id", metavar="REPO_ID", help="OWNER/NAME on the Hub")
    u.add_argument("--private", action="store_true", help="create the repository private")
    u.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    u.add_argument("--message", help="commit message")

    r = sub.add_parser("report", help="leaderboard, plots and an HTML page for a run")
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument("--storage", metavar="URL", help="storage URL, needed when run.json hides its password")
    r.add_argument("--out", metavar="DIR", help="folder for the plots and index.html (default: RUN_DIR/report)")

    b = sub.add_parser("bench", help="benchmarks: kernels and a training step against PyTorch/PEFT, ONNX Runtime "
                                     "against PyTorch")
    b.add_argument("name", choices=BENCHES)
    b.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the benchmark (see its --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `automl-ft`: a usage hint on stderr, not the help block on stdout
        sys.stderr.write(f"error: no command; use one of {', '.join(_commands(parser))} (see 'automl-ft --help')\n")
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return _dispatch(args, argv)
    except AutomlError as e:
        sys.stderr.write(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:  # `automl-ft predict ... | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    """The sub-command names, in the order --help lists them."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def _dispatch(args: argparse.Namespace, argv: list[str]) -> int:
    if args.command == "tune":
        from automl_ft.tuning import TuneOptions, run_tune

        backbones = [b.strip() for b in args.backbones.split(",") if b.strip()] if args.backbones else None
        if args.backbones is not None and not backbones:
            from automl_ft.errors import UsageError

            raise UsageError("--backbones is empty; pass names separated by commas")
        opts = TuneOptions(data=args.data, out=args.out, task=args.task, text_column=args.text_column,
                           label_column=args.label_column, image_column=args.image_column,
                           label_sep=args.label_sep, space=args.space, trials=args.trials,
                           timeout=args.timeout, storage=args.storage, study=args.study, device=args.device,
                           seed=args.seed, backbones=backbones, trust_remote_code=args.trust_remote_code,
                           artifacts=args.artifacts, objective=args.objective,
                           max_latency_ms=args.max_latency_ms, latency_threads=args.latency_threads,
                           int8=args.int8, cv=args.cv, test_fraction=args.test_fraction,
                           prefix_cache=args.prefix_cache, argv=argv)
        return run_tune(opts)
    if args.command == "export":
        from automl_ft.console import printer
        from automl_ft.runs import export_run

        export_run(args.run_dir, trial=args.trial, out=args.out, storage=args.storage, int8=args.int8, argv=argv,
                   format=args.format, say=printer())
        return 0
    if args.command == "predict":
        from automl_ft.predict import run_predict

        return run_predict(args.model_dir, args.inputs, top_k=args.top_k, batch_size=args.batch_size,
                           provider=args.provider, threads=args.threads, int8=args.int8, out_dir=args.out_dir)
    if args.command == "serve":
        from automl_ft.serve import ServeConfig, run_serve

        return run_serve(ServeConfig(args.model_dir, host=args.host, port=args.port, workers=args.workers,
                                     max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                                     max_body_mb=args.max_body_mb, max_inputs=args.max_inputs,
                                     provider=args.provider, threads=args.threads))
    if args.command == "push":
        from automl_ft.hub import push

        done = push(args.model_dir, args.repo_id, private=args.private, token=args.token, message=args.message)
        print(f"Pushed {len(done['files'])} files to {done['url']} (commit {done['commit']}).")
        return 0
    if args.command == "report":
        from automl_ft.commands import print_report
        from automl_ft.runs import make_report

        print_report(*make_report(args.run_dir, storage=args.storage, out=args.out))
        return 0
    if args.command == "bench":
        import importlib

        _check_bench_out(list(args.args))  # before minutes of benchmarking
        module = importlib.import_module(f"automl_ft.bench.bench_{args.name}")
        return int(module.main(list(args.args)) or 0)
    raise AssertionError(args.command)


def _check_bench_out(bench_args: list[str]) -> None:
    """A benchmark adds its result files to ``--out`` (never replacing the folder): refuse a path that cannot be a
    folder now, not after the benchmark ran."""
    from pathlib import Path

    from automl_ft.errors import UsageError
    from automl_ft.rundir import check_creatable

    for i, arg in enumerate(bench_args):
        value = arg.split("=", 1)[1] if arg.startswith("--out=") else \
            bench_args[i + 1] if arg == "--out" and i + 1 < len(bench_args) else None
        if value is not None:
            path = Path(value).expanduser().resolve()
            if path.exists() and not path.is_dir():
                raise UsageError(f"--out {path} is a file; pass a folder for the results")
            check_creatable(path, "--out")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
