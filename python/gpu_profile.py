"""Nsight Compute over one launch of each main sweep kernel: where a recurrent step's time goes.

    python python/gpu_profile.py --out DIR      # on a GPU machine with ncu, from the repository root
                                                # (or a gpu_bundle archive); about 2-3 minutes

Kernels (512 lines x T 256, one launch each): forward and backward; FP32-core (BRNNSEG_CUDA_RECURRENCE=fma,
float32) and tensor-core (mma, bfloat16); GRU and LSTM; hidden 64 and 128 -- 16 launches, in two ncu
processes (one report each, the FP32-core and the tensor-core kernels). ncu runs with --clock-control none
(the GPU's own clocks, as the timings elsewhere) and the sections SpeedOfLight, LaunchStats, Occupancy,
SchedulerStats, WarpStateStats, SourceCounters (with the CUDA source: the build has -lineinfo) and
MemoryWorkloadAnalysis_Tables.

Writes DIR/profile.md: per kernel the duration and time per step, achieved occupancy, issue-slot use, the
top warp stall reasons, shared-memory bank conflicts, DRAM and L2 throughput, and the source lines with the
most stall samples; DIR/profile.json (the same figures), the raw reports DIR/<name>.ncu-rep and their CSV
exports; and, timed without ncu, the tensor-core forward's time per step with its input projections
copied one or two steps ahead (BRNNSEG_MMA_PREFETCH=1/2, issue 22). Without a GPU (or without ncu) it
exits 2 with one line.
"""
from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINES, T = 512, 256
CASES = [(rec, cell, hid, kind) for rec in ("fma", "mma") for cell in ("gru", "lstm") for hid in (64, 128)
         for kind in ("fwd", "bwd")]
SECTIONS = ("SpeedOfLight", "LaunchStats", "Occupancy", "SchedulerStats", "WarpStateStats", "SourceCounters",
            "MemoryWorkloadAnalysis_Tables")
REPORT_LIMIT = 16 * 2**20


def workload(recurrence: str) -> int:
    """One forward and one backward launch per (cell, hidden) of one recurrence, in CASES order."""
    import torch

    import brnnseg_kernels as bk

    os.environ["BRNNSEG_CUDA_RECURRENCE"] = recurrence
    torch.backends.cuda.matmul.allow_tf32 = False
    dtype = torch.float32 if recurrence == "fma" else torch.bfloat16
    C = 16
    for rec, cell, hid, kind in CASES:
        if rec != recurrence or kind != "fwd":
            continue
        g = bk.cells.spec(cell).gates
        w = [torch.randn(2, g * hid, C, device="cuda", dtype=dtype) * 0.1,
             torch.randn(2, g * hid, hid, device="cuda", dtype=dtype) * hid ** -0.5,
             torch.zeros(2, g * hid, device="cuda", dtype=dtype), torch.zeros(2, g * hid, device="cuda", dtype=dtype)]
        x = torch.randn(1, C, LINES, T, device="cuda", dtype=dtype)  # axis 3: 512 lines of T steps
        y, ws = torch.ops.brnnseg.sweep(cell, x, *w, 3, False, True)
        torch.ops.brnnseg.sweep_backward(cell, torch.randn_like(y), x, w[0], w[1], y, ws, 3)
        torch.cuda.synchronize()
        print(f"ran {recurrence} {cell} hid {hid}", flush=True)
    return 0


def prefetch_ab() -> int:
    """Issue 22's candidate for the tensor-core forward's fixed cost per step, measured both ways in one
    process (then the float32 recurrences: FP32 cores, TF32, 3xTF32): time per step (slope over T = 64 and 256, 512 lines, CUDA events, median of 5) of the bf16
    forward with the input projections copied one step ahead (BRNNSEG_MMA_PREFETCH=1, the build the H200
    measured) and two steps ahead (2). Prints one JSON line."""
    import torch

    import brnnseg_kernels as bk

    os.environ["BRNNSEG_CUDA_RECURRENCE"] = "mma"
    C, rows = 16, []

    def per_call_ms(cell, x, w):
        for _ in range(2):
            torch.ops.brnnseg.sweep(cell, x, *w, 3, False, False)
        times = []
        for _ in range(5):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            torch.ops.brnnseg.sweep(cell, x, *w, 3, False, False)
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        return sorted(times)[2]

    for cell in ("gru", "lstm"):
        for hid in (64, 128):
            g = bk.cells.spec(cell).gates
            w = [torch.randn(2, g * hid, C, device="cuda", dtype=torch.bfloat16) * 0.1,
                 torch.randn(2, g * hid, hid, device="cuda", dtype=torch.bfloat16) * hid ** -0.5,
                 torch.zeros(2, g * hid, device="cuda", dtype=torch.bfloat16),
                 torch.zeros(2, g * hid, device="cuda", dtype=torch.bfloat16)]
            row = dict(cell=cell, hidden=hid)
            for prefetch in ("1", "2"):
                os.environ["BRNNSEG_MMA_PREFETCH"] = prefetch
                ms = [per_call_ms(cell, torch.randn(1, C, LINES, t, device="cuda", dtype=torch.bfloat16), w)
                      for t in (64, 256)]
                row[f"us_per_step_prefetch{prefetch}"] = round((ms[1] - ms[0]) * 1e3 / (256 - 64), 3)
            rows.append(row)
    # float32 forward, the three recurrences (issue 22's 3xTF32 against the FP32-core kernel and TF32): us
    # per step where 3xTF32 has a plan (GRU 32, 64; LSTM 32).
    os.environ["BRNNSEG_MMA_PREFETCH"] = "1"
    f32 = []
    for cell, hid in (("gru", 32), ("gru", 64), ("lstm", 32)):
        g = bk.cells.spec(cell).gates
        w = [torch.randn(2, g * hid, C, device="cuda") * 0.1, torch.randn(2, g * hid, hid, device="cuda") * hid ** -0.5,
             torch.zeros(2, g * hid, device="cuda"), torch.zeros(2, g * hid, device="cuda")]
        row = dict(cell=cell, hidden=hid)
        for rec in ("fma", "mma", "tf32x3"):
            os.environ["BRNNSEG_CUDA_RECURRENCE"] = rec
            ms = [per_call_ms(cell, torch.randn(1, C, LINES, t, device="cuda"), w) for t in (64, 256)]
            row[f"us_per_step_{rec}"] = round((ms[1] - ms[0]) * 1e3 / (256 - 64), 3)
        f32.append(row)
    print(json.dumps(dict(prefetch=rows, float32=f32)))
    return 0


def find_ncu() -> str | None:
    for cand in [shutil.which("ncu")] + sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu"), reverse=True) + \
            ["/usr/local/cuda/bin/ncu"]:
        if cand and os.path.isfile(cand):
            return cand
    return None


def _csv_rows(text: str) -> list[dict]:
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]
    return list(csv.DictReader(io.StringIO("\n".join(lines)))) if lines else []


def _num(v) -> float | None:
    try:
        return float(str(v).replace(",", ""))
    except (TypeError, ValueError):
        return None


def summarize(ncu: str, rep: str, names: list[str], out: str) -> list[dict]:
    """Figures per kernel launch of one report, in launch order (names: our labels for those launches)."""
    raw = subprocess.run([ncu, "--import", rep, "--page", "raw", "--csv"], capture_output=True, text=True)
    with open(rep.replace(".ncu-rep", "-raw.csv"), "w") as f:
        f.write(raw.stdout)
    # The sections as ncu words them (kept whatever this parser makes of the raw page).
    details = subprocess.run([ncu, "--import", rep, "--page", "details", "--csv"], capture_output=True, text=True)
    with open(rep.replace(".ncu-rep", "-details.csv"), "w") as f:
        f.write(details.stdout or details.stderr)
    rows = _csv_rows(raw.stdout)
    rows = [r for r in rows if _num(r.get("gpu__time_duration.sum")) is not None or "Kernel Name" in r]
    results = []
    for i, r in enumerate(rows):
        name = names[i] if i < len(names) else f"launch {i}"
        dur_ns = _num(r.get("gpu__time_duration.sum"))
        stalls = {}
        for k, v in r.items():
            m = re.match(r"smsp__pcsamp_warps_issue_stalled_(\w+?)(_not_issued)?$", k)
            if m and _num(v):
                stalls[m.group(1)] = stalls.get(m.group(1), 0.0) + _num(v)
        total = sum(stalls.values()) or 1.0
        top = sorted(stalls.items(), key=lambda kv: -kv[1])[:5]
        res = dict(
            kernel=name, name=r.get("Kernel Name", ""), duration_us=None if dur_ns is None else dur_ns / 1e3,
            us_per_step=None if dur_ns is None else dur_ns / 1e3 / T,
            achieved_occupancy_pct=_num(r.get("sm__warps_active.avg.pct_of_peak_sustained_active")),
            issue_slots_busy_pct=_num(r.get("sm__inst_issued.avg.pct_of_peak_sustained_active")),
            warp_cycles_per_issue=_num(r.get("smsp__average_warp_latency_per_inst_issued.ratio")),
            top_stalls=[(k, round(100 * v / total, 1)) for k, v in top],
            smem_bank_conflicts_ld=_num(r.get("l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum")),
            smem_bank_conflicts_st=_num(r.get("l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum")),
            dram_pct=_num(r.get("gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed")
                          or r.get("dram__throughput.avg.pct_of_peak_sustained_elapsed")),
            l2_pct=_num(r.get("lts__throughput.avg.pct_of_peak_sustained_elapsed")),
            registers=_num(r.get("launch__registers_per_thread")),
            block=_num(r.get("launch__block_size")), grid=_num(r.get("launch__grid_size")),
        )
        res["hot_lines"] = hot_lines(ncu, rep, i)
        results.append(res)
    return results


def hot_lines(ncu: str, rep: str, index: int, top: int = 6) -> list[tuple[str, float]]:
    """The CUDA source lines of launch `index` with the most warp-stall samples (percent of its samples)."""
    p = subprocess.run([ncu, "--import", rep, "--page", "source", "--csv", "--print-source", "cuda",
                        "--launch-skip", str(index), "--launch-count", "1"], capture_output=True, text=True)
    rows = _csv_rows(p.stdout)
    if not rows:
        return [("(no source page: " + (p.stderr.strip().splitlines() or ["empty"])[-1][:120] + ")", 0.0)]
    key = next((k for k in rows[0] if "Stall Sampling (All" in k), None) or \
        next((k for k in rows[0] if "Sampling" in k), None)
    src = next((k for k in rows[0] if k.lower() in ("source", "# source")), None)
    line = next((k for k in rows[0] if k.strip("# ").lower() in ("line", "#")), None)
    if key is None:
        return [("(no stall-sampling column)", 0.0)]
    vals = [(r, _num(r[key]) or 0.0) for r in rows]
    total = sum(v for _, v in vals) or 1.0
    best = sorted(vals, key=lambda rv: -rv[1])[:top]
    return [((f"{r.get(line, '')}: " if line else "") + (r.get(src) or "").strip()[:100], round(100 * v / total, 1))
            for r, v in best if v > 0]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_workload"]:
        return workload(argv[1])
    if argv[:1] == ["_prefetch"]:
        return prefetch_ab()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--cap", type=float, default=70.0, help="seconds per ncu process (two of them)")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_profile: no GPU visible (torch.cuda.is_available() is False); nothing to profile here")
        return 2
    ncu = find_ncu()
    if ncu is None:
        print("gpu_profile: Nsight Compute (ncu) not found on PATH or under /opt/nvidia/nsight-compute")
        return 2
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    results, notes = [], []
    for rec in ("fma", "mma"):
        rep = os.path.join(os.path.abspath(args.out), f"sweep-{rec}")
        cmd = [ncu, "--clock-control", "none", "--target-processes", "all", "--kernel-name", "regex:sweep_(fwd|bwd)",
               "--import-source", "yes", "-f", "-o", rep] + [a for s in SECTIONS for a in ("--section", s)] + \
              [sys.executable, os.path.abspath(__file__), "_workload", rec]
        log = os.path.join(args.out, f"ncu-{rec}.log")
        with open(log, "w") as f:
            try:
                r = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=args.cap,
                                   env={**os.environ, "PYTHONPATH": ROOT})
                status = "ok" if r.returncode == 0 else f"rc {r.returncode}"
            except subprocess.TimeoutExpired:
                status = f"timeout after {args.cap:.0f} s"
        notes.append(f"ncu {rec}: {status} ({time.time() - t0:.0f} s so far; log {os.path.basename(log)})")
        print(notes[-1], flush=True)
        if not os.path.exists(rep + ".ncu-rep"):
            continue
        size = os.path.getsize(rep + ".ncu-rep")
        if size > REPORT_LIMIT:
            notes.append(f"{os.path.basename(rep)}.ncu-rep is {size / 2**20:.1f} MB (> 16 MB)")
        # Launch order of the workload: fwd then bwd per (cell, hidden).
        names = [f"{kind} {rec} {cell} h{hid}" for r2, cell, hid, _ in CASES if r2 == rec and _ == "fwd"
                 for kind in ("fwd", "bwd")]
        try:
            results += summarize(ncu, rep + ".ncu-rep", names, args.out)
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            notes.append(f"summary of {rec} failed: {e}")
    prefetch, f32 = [], []
    try:  # the A/Bs of BRNNSEG_MMA_PREFETCH and of the float32 recurrences (plain timings, no ncu): seconds
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "_prefetch"], cwd=ROOT, capture_output=True,
                           text=True, timeout=40, env={**os.environ, "PYTHONPATH": ROOT})
        ab = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {}
        prefetch, f32 = ab.get("prefetch", []), ab.get("float32", [])
        notes.append(f"prefetch and float32 A/B: {'ok' if prefetch else 'rc %d: %s' % (r.returncode, r.stderr[-300:])}")
    except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
        notes.append(f"prefetch A/B failed: {e}")
    with open(os.path.join(args.out, "profile.json"), "w") as f:
        json.dump(dict(lines=LINES, T=T, results=results, notes=notes, prefetch_ab=prefetch, float32_ab=f32), f,
                  indent=1)
    md = [f"# Sweep kernels under Nsight Compute ({LINES} lines x T {T}, one launch each)", ""]
    md += [f"- {n}" for n in notes] + [""]
    md += ["| kernel | us | us/step | occupancy % | issue busy % | cycles/issue | top stalls (% of samples) | "
           "smem bank conflicts ld/st | DRAM % | L2 % | regs |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(v, nd=1):
        return "" if v is None else f"{v:.{nd}f}"

    for r in results:
        stalls = ", ".join(f"{k} {v}" for k, v in r["top_stalls"])
        md.append(f"| {r['kernel']} | {f(r['duration_us'])} | {f(r['us_per_step'], 2)} | {f(r['achieved_occupancy_pct'])} | "
                  f"{f(r['issue_slots_busy_pct'])} | {f(r['warp_cycles_per_issue'])} | {stalls} | "
                  f"{f(r['smem_bank_conflicts_ld'], 0)}/{f(r['smem_bank_conflicts_st'], 0)} | {f(r['dram_pct'])} | "
                  f"{f(r['l2_pct'])} | {f(r['registers'], 0)} |")
    if prefetch:
        md += ["", "## Tensor-core forward, bf16: us per step with the projections copied 1 or 2 steps ahead "
               "(BRNNSEG_MMA_PREFETCH)", "", "| cell | hidden | prefetch 1 | prefetch 2 | ratio |", "|---|---|---|---|---|"]
        md += [f"| {r['cell']} | {r['hidden']} | {r['us_per_step_prefetch1']} | {r['us_per_step_prefetch2']} | "
               f"{r['us_per_step_prefetch1'] / max(r['us_per_step_prefetch2'], 1e-9):.2f}x |" for r in prefetch]
    if f32:
        md += ["", "## float32 forward: us per step, FP32 cores / TF32 / 3xTF32 (BRNNSEG_CUDA_RECURRENCE)", "",
               "| cell | hidden | fma | mma (TF32) | tf32x3 | fma / tf32x3 |", "|---|---|---|---|---|---|"]
        md += [f"| {r['cell']} | {r['hidden']} | {r['us_per_step_fma']} | {r['us_per_step_mma']} | "
               f"{r['us_per_step_tf32x3']} | {r['us_per_step_fma'] / max(r['us_per_step_tf32x3'], 1e-9):.2f}x |"
               for r in f32]
    for r in results:
        md += ["", f"## {r['kernel']}: source lines with the most stall samples", ""]
        md += [f"- {pct}%  {line}" for line, pct in r["hot_lines"]]
    with open(os.path.join(args.out, "profile.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    print("\n".join(md[:len(results) + len(notes) + 6]))
    print(f"gpu_profile: {len(results)} of {len(CASES)} launches profiled in {time.time() - t0:.0f} s; "
          f"{os.path.join(args.out, 'profile.md')}")
    return 0 if len(results) == len(CASES) else 1


if __name__ == "__main__":
    sys.exit(main())
