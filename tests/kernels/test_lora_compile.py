"""The LoRA kernels compile for an H100 (sm_90a) without one: Triton's compiler and its bundled ptxas run on any host.

This catches what the interpreter accepts but a GPU does not (tl.dot dimensions < 16, layouts, shared memory that
does not fit) and checks that the main configs use wgmma tensor-core instructions without register spills. It runs
in a subprocess because the test session has TRITON_INTERPRET=1 set, which turns ``triton.jit`` into the interpreter.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# (kernel, config index in its autotune list, dropout, padded rank, dtype)
CASES = [
    ("fwd", 0, False, 16, "bf16"),  # 128x256x64: the main no-dropout tile
    ("fwd", 4, True, 16, "bf16"),  # 128x128x64, N_TILES=2, dropout
    ("fwd", 7, True, 256, "fp16"),  # the fallback tile at the largest rank
    ("dx", 1, False, 16, "bf16"),
    ("dx", 5, True, 16, "bf16"),  # the dropout tile that must not spill
    ("db", 0, False, 16, "bf16"),
]


def _compile_report() -> list[dict]:
    """Compile CASES for sm_90a; returns shared memory, registers, spills and whether wgmma is used, per case."""
    assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
    import automl_ft.kernels.lora as L
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptxas = pathlib.Path(triton.__file__).parent / "backends/nvidia/bin/ptxas"
    target = GPUTarget("cuda", 90, 32)
    kernels = {"fwd": (L._lora_fwd_kernel, L._fwd_configs()), "dx": (L._lora_bwd_dx_kernel, L._dx_configs()),
               "db": (L._lora_bwd_db_kernel, L._db_configs())}
    # Runtime specialisation of a contiguous call: unit strides become constants, the rest are 16-divisible ints.
    unit = {"stride_xk", "stride_wk", "stride_ak", "stride_br", "stride_yn", "stride_dyn", "stride_dxk"}
    zero = {"stride_xb", "stride_dyb"}
    floats = {"lora_scale"}
    report = []
    for name, idx, dropout, r_pad, dtype in CASES:
        autotuner, configs = kernels[name]
        fn, cfg = autotuner.fn, configs[idx]
        consts = {**cfg.kwargs, "R_PAD": r_pad, "DOT_PRECISION": "tf32", "ROUNDS": L._PHILOX_ROUNDS,
                  "HAS_BIAS": True, "HAS_DROPOUT": dropout, "COMPUTE_DX": True, "COMPUTE_DA": True,
                  "COMPUTE_XA": True}
        consts.update({k: 1 for k in unit} | {k: 0 for k in zero})
        if not dropout:
            consts["seed_ptr"] = None
        consts = {k: v for k, v in consts.items() if k in fn.arg_names}
        sig, attrs = {}, {}
        for i, arg in enumerate(fn.arg_names):
            if arg in consts:
                sig[arg] = "constexpr"
            elif arg.endswith("_ptr"):
                sig[arg] = "*i64" if arg == "seed_ptr" else "*fp32" if "part" in arg else f"*{dtype}"
                attrs[(i,)] = [["tt.divisibility", 16]]
            elif arg in floats:
                sig[arg] = "fp32"
            else:
                sig[arg] = "i32"
                if arg not in ("drop_threshold", "R"):
                    attrs[(i,)] = [["tt.divisibility", 16]]
        k = triton.compile(ASTSource(fn, sig, consts, attrs), target=target,
                           options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
        ptx = k.asm["ptx"]
        ptx_path = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"lora_{name}_{idx}_{os.getpid()}.ptx"
        ptx_path.write_text(ptx)
        out = subprocess.run([str(ptxas), "-arch=sm_90a", "-v", str(ptx_path), "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
        ptx_path.unlink()
        spills = sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", out))
        regs = max(int(v) for v in re.findall(r"Used (\d+) registers", out))
        report.append({"case": [name, idx, dropout, r_pad, dtype], "shared": k.metadata.shared, "regs": regs,
                       "spill_bytes": spills, "wgmma": "wgmma.mma_async" in ptx,
                       "serialized_wgmma": "C7515" in out})
    return report


def test_kernels_compile_for_h100():
    import triton

    if not (pathlib.Path(triton.__file__).parent / "backends/nvidia/bin/ptxas").is_file():
        pytest.skip("Triton's bundled ptxas is missing")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import json; from tests.kernels.test_lora_compile import _compile_report; "
            "print(json.dumps(_compile_report()))")
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for row in report:
        assert row["wgmma"], f"{row['case']}: no wgmma (tensor cores) in the PTX"
        assert row["shared"] <= 227 * 1024, f"{row['case']}: {row['shared']} B of shared memory"
        if row["case"][3] <= 64:  # rank 256 may spill a little in the fallback tile; the main tiles must not
            assert row["spill_bytes"] <= 64, f"{row['case']}: {row['spill_bytes']} B of register spills"
    main_fwd = report[0]
    assert not main_fwd["serialized_wgmma"], "the main forward tile serialises its wgmma"
