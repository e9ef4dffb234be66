"""Smoke test of bench/bench_train.py: every provider takes real training steps on MiniLM (tiny batch)."""

from __future__ import annotations

import json

from automl_ft.bench import bench_train


def test_bench_train_smoke(tmp_path, capsys):
    assert bench_train.main(["--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    [json_path] = tmp_path.glob("train-*.json")
    assert json_path.with_suffix(".csv").is_file()
    data = json.loads(json_path.read_text())
    assert data["environment"]["device"] and data["environment"]["date"] and data["environment"]["torch"]
    assert data["config"]["batch"] == 4 and data["config"]["seq"] == 16
    rows = {r["provider"]: r for r in data["results"]}
    assert set(rows) == {"ours full", "ours lora r16", "ours lora r16 freeze 3", "hf full", "peft lora r16"}
    assert all(r["step_s"] > 0 for r in rows.values())
    # what each set-up trains: LoRA adapters + head are a few % of the model; freezing 3 of 6 blocks halves them;
    # ours and PEFT adapt the same encoder linears; PEFT's 'dense' also matches the [CLS] pooler, which our
    # mean-pooled head does not use (0.677 M against 0.664 M at r=16)
    assert rows["hf full"]["trainable_m"] > rows["ours full"]["trainable_m"] > 10 * rows["ours lora r16"]["trainable_m"]
    assert abs(rows["ours lora r16"]["trainable_m"] - rows["peft lora r16"]["trainable_m"]) < 0.05
    assert rows["ours lora r16 freeze 3"]["trainable_m"] < 0.6 * rows["ours lora r16"]["trainable_m"]
    assert "results:" in capsys.readouterr().out
