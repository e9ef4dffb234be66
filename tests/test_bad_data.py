"""Data and settings that look wrong say so: more bad-input cases (exit 2, one line on stderr, no traceback, earlier
files byte-identical, no run folder), and the warnings a usable but suspicious data set gets on the console and in
``data_summary.json``.

The cases extend ``tests/test_cli_errors.py`` (its ``earlier_run`` fixture and ``snapshot`` are shared).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from automl_ft.cli import main
from tests.conftest import make_image_folder, make_png, make_text_rows, write_csv
from tests.test_cli_errors import earlier_run, snapshot  # noqa: F401  (earlier_run is a fixture)

SPACE = """
task: text-classification
backbones:
  minilm-l6: {max_length: 64, freeze_depth: {low: 0, high: 3}}
adaptation:
  full: {lr: {low: 1.0e-5, high: 1.0e-3, log: true}}
"""


def case_inputs(tmp_path: Path, name: str) -> list[str]:
    """Arguments of one bad-input case (the files they need are created here)."""
    good = "".join(f"{t},{y}\n" for t, y in make_text_rows(10))
    good_csv = write_csv(tmp_path / "good.csv", make_text_rows(10))
    out = ["--out", str(tmp_path / "run")]

    def space(text: str) -> list[str]:
        (tmp_path / "s.yaml").write_text(text)
        return ["tune", str(good_csv), "--space", str(tmp_path / "s.yaml"), *out]

    if name == "csv row with an extra field":  # pandas made "hello there" an index and "food" the text
        (tmp_path / "t.csv").write_text("text,label\nhello there,food,extra\n" + good)
        return ["tune", str(tmp_path / "t.csv"), *out]
    if name == "csv row with a missing field":
        (tmp_path / "t.csv").write_text("text,label\n" + good + "a text and no label\n")
        return ["tune", str(tmp_path / "t.csv"), *out]
    if name == "csv quote never closed":
        (tmp_path / "t.csv").write_text("text,label\n" + good + '"an open quote,food\n' + good)
        return ["tune", str(tmp_path / "t.csv"), *out]
    if name == "semicolon file with ambiguous columns":
        rows = [(t, y, "x") for t, y in make_text_rows(10)]
        return ["tune", str(write_csv(tmp_path / "t.csv", rows, header=("text", "category", "extra"), sep=";")),
                *out]
    if name == "nan labels in many rows":
        rows = make_text_rows(10) + [(f"unlabelled text {i}", "nan") for i in range(5)]
        return ["tune", str(write_csv(tmp_path / "t.csv", rows)), *out]
    if name == "decompression bombs":  # 10000 x 10000: over PIL's 89 M pixel limit, under twice it (only a warning)
        root = make_image_folder(tmp_path / "imgs", n_per_class=4)
        for i in range(2):
            (root / "red" / f"huge{i}.png").write_bytes(make_png(10000, 10000))
        return ["tune", str(root), *out]
    if name == "timeout nan":
        return ["tune", str(good_csv), "--timeout", "nan", *out]
    if name == "timeout inf":
        return ["tune", str(good_csv), "--timeout", "inf", *out]
    if name == "max-latency-ms nan":
        return ["tune", str(good_csv), "--max-latency-ms", "NaN", *out]
    if name == "no command":
        return []
    if name == "space: freeze_depth above the block count":  # MiniLM-L6 has 6 blocks; 12 was clamped to 6
        return space(SPACE.replace("high: 3}", "high: 12}"))
    if name == "space: reduction factor 1":
        return space(SPACE + "pruner: {type: hyperband, reduction_factor: 1}\n")
    if name == "space: first trial outside the space":
        return space(SPACE + "first_trial: {lr: 0.5}\n")
    raise AssertionError(name)


CASES = {
    "csv row with an extra field": "1 row(s) have a different number of fields than the header's 2 (line 2)",
    "csv row with a missing field": "1 row(s) have a different number of fields than the header's 2 (line 32)",
    "csv quote never closed": "close every quote",
    "semicolon file with ambiguous columns": "no 'label' column and 2 candidates (category, extra)",
    "nan labels in many rows": "5 of 35 rows have an empty text (0) or an empty/NaN label (5)",
    "decompression bombs": "2 of 14 images cannot be read (huge0.png: decompression bomb, skipped (Image size "
                           "(100000000 pixels) exceeds limit of",
    "timeout nan": "argument --timeout: 'nan' is not a finite number",
    "timeout inf": "argument --timeout: 'inf' is not a finite number",
    "max-latency-ms nan": "argument --max-latency-ms: 'NaN' is not a finite number",
    "no command": "no command; use one of tune, export, predict, serve, push, report, bench",
    "space: freeze_depth above the block count": "backbones.minilm-l6.freeze_depth: 12 is above the 6 blocks",
    "space: reduction factor 1": "pruner.reduction_factor: value 1 is below the minimum 2",
    "space: first trial outside the space": "first_trial.lr: 0.5 is outside the space",
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_data_exits_2_with_one_line(tmp_path, capsys, earlier_run, name):  # noqa: F811
    before = snapshot(earlier_run)
    args = case_inputs(tmp_path, name)
    usage = name.startswith(("timeout", "max-latency"))  # argparse's own checks exit through SystemExit(2)
    with pytest.raises(SystemExit) if usage else contextlib.nullcontext() as exit_info:
        rc = main(args)
    if usage:
        rc = exit_info.value.code
    out, err = capsys.readouterr()
    err = err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and CASES[name] in err, err
    assert "Traceback" not in err and out == ""
    assert snapshot(earlier_run) == before
    assert not (tmp_path / "run").exists()


def test_bare_command_prints_one_line_on_stderr():
    """It printed the whole --help block on stdout and nothing on stderr."""
    proc = subprocess.run([sys.executable, "-m", "automl_ft"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: no command; use one of tune")


def test_data_warnings_reach_the_console_and_data_summary(tmp_path, tiny_text_space, capsys):
    """A ';'-separated file with labels that differ in case and a few NaN labels trains, and says all three."""
    rows = [(t, "Food" if y == "food" and i % 2 else y) for i, (t, y) in enumerate(make_text_rows(40))]
    rows += [("a message nobody labelled", "nan"), ("another one", "")]
    data = write_csv(tmp_path / "t.csv", rows, sep=";")
    run = tmp_path / "run"
    assert main(["tune", str(data), "--out", str(run), "--space", str(tiny_text_space), "--trials", "1"]) == 0
    console = " ".join(capsys.readouterr().err.split())  # rich may wrap; compare word by word
    warnings = json.loads((run / "data_summary.json").read_text())["warnings"]
    assert len(warnings) == 3
    assert "t.csv is separated by semicolons, not commas" in warnings[0]
    assert "label column 'label': 2 row(s) with an empty or NaN label dropped as missing" in warnings[1]
    assert "('Food'/'food')" in warnings[2]
    for warning in warnings:
        assert f"Warning: {' '.join(warning.split())}." in console
