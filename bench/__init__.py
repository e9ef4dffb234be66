"""Benchmarks: one script per thing measured (``python bench/bench_X.py`` or ``automl-ft bench X``)."""
