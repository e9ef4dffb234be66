"""The LoRA kernels compile for an H100 (sm_90a) without one: Triton's compiler and its bundled ptxas run on any host.

This catches what the interpreter accepts but a GPU does not (tl.dot dimensions < 16, layouts, shared memory that
does not fit), checks that the main configs use wgmma tensor-core instructions without register spills, and reads
the PTX of the two big GEMM loops (issue 14): the forward's and dx's main loops must be plain pipelined GEMMs, i.e.
end with ``wgmma.wait_group 1`` or more (before, the fused ``dy @ B`` made every dx config wait for 0) and contain no
Philox code (before, with dropout, the forward's K step grew from 146 to 589 PTX instructions). It runs in a
subprocess because the test session has TRITON_INTERPRET=1 set, which turns ``triton.jit`` into the interpreter.

The same report, with the pre-restructuring numbers beside it, is written by
``python -m tests.kernels.test_lora_compile --out bench/results/lora-sm90a-ptx-<date>.json``.
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
    ("fwd", 0, False, 16, "bf16"),  # 128x256x64: the main tile (the forward has no dropout code any more)
    ("fwd", 2, False, 16, "bf16"),  # 128x128x64
    ("fwd", 5, False, 256, "fp16"),  # the fallback tile at the largest rank
    ("xa", 0, True, 16, "bf16"),  # the skinny pre-pass: the forward's only Philox
    ("xa", 4, True, 256, "fp16"),
    ("dx", 0, False, 16, "bf16"),  # 128x256 dx tile
    ("dx", 1, False, 16, "bf16"),
    ("dx", 1, True, 16, "bf16"),  # dropout only touches the epilogue
    ("dx", 3, True, 16, "bf16"),
    ("skinny", 0, False, 16, "bf16"),  # dy @ B and dy.T @ xa in one read of dy
    ("fwd-epilogue", 2, False, 16, "bf16"),  # backend="addmm": the low-rank epilogue on cuBLAS's output tile
    ("dx-epilogue", 1, True, 16, "bf16"),
]

# Measured with the same compile of the kernels before issue 14 (automl_ft/kernels/lora.py at the commit that moved
# it from kernels/; R_PAD=16, bf16, contiguous specialisation): main-loop PTX instructions per K step (N step for dx)
# and the wgmma.wait_group that ends it.
BEFORE = {
    "fwd 128x256x64 no dropout": {"instructions_per_step": 146, "wait_group": [2]},
    "fwd 128x256x64 dropout": {"instructions_per_step": 609, "wait_group": [2], "C7515_serialized_wgmma": True},
    "fwd 128x128x64 dropout": {"instructions_per_step": 589, "wait_group": [2]},
    "fwd 128x128x64 N_TILES=2 dropout": {"instructions_per_step": 589, "wait_group": [2]},
    "dx 128x64x256 no dropout": {"instructions_per_step": 167, "wait_group": [0]},
    "dx 128x64x128 no dropout": {"instructions_per_step": 150, "wait_group": [0]},
    "dx 128x64x128 dropout": {"instructions_per_step": 150, "wait_group": [0], "spill_bytes": 44},
    "dx 128x64x64 (4 warps) dropout": {"instructions_per_step": 203, "wait_group": [0], "spill_bytes": 8},
    # WARPGROUP.DEPBAR.LE gsb0, 0x0 / 0x1 / 0x2 counts per kernel (cuobjdump -sass of the cubin)
    "sass_depbar": {"dx, all 4 configs above": [4, 0, 0], "fwd 128x256x64 no dropout": [2, 0, 1],
                    "fwd 128x256x64 dropout (C7515)": [9, 0, 0], "fwd 128x128x64 dropout": [2, 0, 2]},
}


def loop_stats(ptx: str) -> list[dict]:
    """Every loop of the PTX (a branch back to an earlier label) that issues wgmma: instruction count of one
    iteration, wgmma count, the ``wgmma.wait_group`` depths in it and how many Philox multiplies (mul.hi.u32)."""
    lines = [line.strip() for line in ptx.splitlines()]
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\$L__\w+):", line))}
    loops = []
    for i, line in enumerate(lines):
        m = re.search(r"\bbra(?:\.uni)?\s+(\$L__\w+);", line)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            loops.append((labels[m.group(1)], i))
    out = []
    for s, e in loops:
        body = lines[s:e + 1]
        text = "\n".join(body)
        if "wgmma.mma_async" not in text:
            continue
        out.append({
            "instructions": sum(1 for line in body if line.endswith(";") and not line.startswith(("//", ".reg"))),
            "wgmma": text.count("wgmma.mma_async"),
            "wait_group": sorted({int(v) for v in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", text)}),
            "philox_mul_hi": text.count("mul.hi.u32"),
        })
    return out


def _compile_report() -> list[dict]:
    """Compile CASES for sm_90a; per case: shared memory, registers, spills, wgmma use and the main-loop stats."""
    assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import automl_ft.kernels.lora as L

    bindir = pathlib.Path(triton.__file__).parent / "backends/nvidia/bin"
    target = GPUTarget("cuda", 90, 32)
    kernels = {"fwd": (L._lora_fwd_kernel, L._fwd_configs()), "dx": (L._lora_bwd_dx_kernel, L._dx_configs()),
               "xa": (L._lora_xa_kernel, L._xa_configs()), "skinny": (L._lora_bwd_dyb_db_kernel, L._skinny_configs())}
    # Runtime specialisation of a contiguous call: unit strides become constants, the rest are 16-divisible ints.
    unit = {"stride_xk", "stride_wk", "stride_ak", "stride_br", "stride_yn", "stride_dyn", "stride_dxk"}
    zero = {"stride_xb", "stride_dyb"}
    report = []
    for name, idx, dropout, r_pad, dtype in CASES:
        kernel, _, variant = name.partition("-")
        autotuner, configs = kernels[kernel]
        fn, cfg = autotuner.fn, configs[idx]
        gemm = variant != "epilogue"
        consts = {**cfg.kwargs, "R_PAD": r_pad, "DOT_PRECISION": "tf32", "ROUNDS": L._PHILOX_ROUNDS,
                  "HAS_BIAS": gemm, "HAS_DROPOUT": dropout, "BASE_GEMM": gemm, "DX_GEMM": gemm, "COMPUTE_DX": True,
                  "COMPUTE_DA": True, "COMPUTE_DYB": True, "COMPUTE_DB": True}
        if name == "skinny":
            consts["BLOCK_M"] = L._SKINNY_BM
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
            elif arg == "lora_scale":
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
        cubin = ptx_path.with_suffix(".cubin")
        out = subprocess.run([str(bindir / "ptxas"), "-arch=sm_90a", "-v", str(ptx_path), "-o", str(cubin)],
                             capture_output=True, text=True, check=True).stderr
        # SASS: WARPGROUP.DEPBAR.LE gsb0, 0xN is the hardware wait that wgmma.wait_group N lowers to.
        sass = ""
        if (bindir / "cuobjdump").is_file():
            sass = subprocess.run([str(bindir / "cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                                  check=False).stdout
        ptx_path.unlink()
        cubin.unlink()
        tile = "x".join(str(cfg.kwargs[b]) for b in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if b in cfg.kwargs)
        report.append({"case": [name, idx, dropout, r_pad, dtype], "tile": tile, "num_warps": cfg.num_warps,
                       "num_stages": cfg.num_stages, "shared": k.metadata.shared,
                       "regs": max(int(v) for v in re.findall(r"Used (\d+) registers", out)),
                       "spill_bytes": sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", out)),
                       "wgmma": "wgmma.mma_async" in ptx, "serialized_wgmma": "C7515" in out,
                       "loops": loop_stats(ptx),
                       "sass_depbar": {d: sass.count(f"WARPGROUP.DEPBAR.LE gsb0, {d}") for d in ("0x0", "0x1", "0x2")}})
    return report


def _run_report() -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import json; from tests.kernels.test_lora_compile import _compile_report; "
            "print(json.dumps(_compile_report()))")
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_kernels_compile_for_h100():
    import triton

    if not (pathlib.Path(triton.__file__).parent / "backends/nvidia/bin/ptxas").is_file():
        pytest.skip("Triton's bundled ptxas is missing")
    report = _run_report()
    for row in report:
        name = row["case"][0]
        # (The epilogue-only kernels of backend="addmm" are memory-bound passes; mma.sync is fine there.)
        assert row["wgmma"] or name.endswith("-epilogue"), f"{row['case']}: no wgmma (tensor cores) in the PTX"
        assert row["shared"] <= 227 * 1024, f"{row['case']}: {row['shared']} B of shared memory"
        if row["case"][3] <= 64:  # rank 256 may spill a little in the fallback tile; the main tiles must not
            assert row["spill_bytes"] <= 64, f"{row['case']}: {row['spill_bytes']} B of register spills"
        if name in ("fwd", "dx") and row["case"][3] <= 64:
            # The big GEMM loops: pipelined (the loop never drains the wgmma queue) and free of the mask.
            [main] = [lp for lp in row["loops"] if lp["wgmma"] == max(q["wgmma"] for q in row["loops"])][:1]
            assert min(main["wait_group"]) >= 1, f"{row['case']}: main loop waits for 0 wgmma groups: {main}"
            assert main["philox_mul_hi"] == 0, f"{row['case']}: Philox inside the GEMM loop: {main}"
            assert not row["serialized_wgmma"], f"{row['case']}: ptxas serialises the wgmma (C7515)"


def _main(argv: list[str] | None = None) -> int:
    import argparse
    import datetime as dt
    import shlex

    parser = argparse.ArgumentParser(description="sm_90a PTX report of the LoRA kernels (no GPU needed)")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    import triton

    after = _run_report()
    doc = {"what": "PTX of the LoRA kernels compiled for sm_90a with Triton's bundled ptxas, on a CPU host",
           "command": "python -m tests.kernels.test_lora_compile " + " ".join(shlex.quote(a) for a in
                                                                            (argv or sys.argv[1:])),
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "triton": triton.__version__,
           "before": BEFORE, "after": after}
    pathlib.Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    for row in after:
        main = max(row["loops"], key=lambda lp: lp["wgmma"], default={})
        print(f"{row['case']!s:38} {row['tile']:>11} regs {row['regs']:3d} spill {row['spill_bytes']:4d} "
              f"loop: {main.get('instructions')} instr, wait_group {main.get('wait_group')}, "
              f"philox {main.get('philox_mul_hi')}; SASS depbar {row['sass_depbar']}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
