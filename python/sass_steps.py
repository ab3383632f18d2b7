"""What one recurrent step executes, read from the shipped build's SASS (no GPU needed).

    python python/sass_steps.py [--so brnnseg_kernels/_C.abi3.so] [--arch sm_90] [--cells gru lstm]
                                [--dtypes float32 bfloat16] [--md FILE]

For each sweep kernel (forward/backward, FP32-core/tensor-core) it disassembles the cubin with line
information (nvdisasm -g; the build has -lineinfo), finds the time-step loop -- the outermost loop (a
backward branch) whose body holds a block barrier -- and the loops nested in it, and counts, per pass
through each, the instructions that set a step's latency: global loads (LDG) and which source lines
issue them, global stores, cp.async copies (LDGSTS) and their waits (LDGDEPBAR / DEPBAR), barriers
(BAR), shared-memory loads and stores, tensor-core MMAs (HMMA), float FMAs, special-function ops
(MUFU), branches, and all instructions. Static counts: a loop body once; the caller multiplies by trip
counts (hidden size, lines per thread) to get a per-step budget (issue 22's model).
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = {
    "LDG": r"^LDG\b", "STG": r"^STG\b", "LDGSTS": r"^LDGSTS\b", "wait": r"^(LDGDEPBAR|DEPBAR)\b",
    "BAR": r"^BAR\b", "LDS": r"^(LDS|LDSM)\b", "STS": r"^STS\b", "HMMA": r"^HMMA\b", "FFMA": r"^FFMA\b",
    "FMUL/FADD": r"^(FMUL|FADD)\b", "MUFU": r"^MUFU\b", "BRA": r"^BRA\b", "CCTL/prefetch": r"^(CCTL|PREFETCH)",
}
_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_LINE = re.compile(r'//## File "([^"]+)", line (\d+)')
_LABEL = re.compile(r"^(\.L_x_\d+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


def tool(name: str) -> str:
    import shutil

    cands = [shutil.which(name)] + [os.path.join(h, "bin", name) for h in (os.environ.get("CUDA_HOME"), "/usr/local/cuda") if h]
    try:
        import triton

        cands.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name))
    except ImportError:
        pass
    found = next((c for c in cands if c and os.path.isfile(c)), None)
    if not found:
        raise SystemExit(f"sass_steps: {name} not found (CUDA toolkit or triton's copy)")
    return found


def parse(text: str) -> dict:
    """{function: [dict(addr, pred, op, text, file, line, label)]} of an nvdisasm -g listing."""
    funcs, cur, src, labels = {}, None, (None, None), []
    for raw in text.splitlines():
        if raw.startswith(".text."):
            cur = raw[len(".text."):].rstrip(":")
            funcs[cur] = []
            continue
        if cur is None:
            continue
        m = _LINE.search(raw)
        if m:
            src = (os.path.basename(m.group(1)), int(m.group(2)))
            continue
        m = _LABEL.match(raw.strip())
        if m:
            labels.append(m.group(1))
            continue
        m = _INSN.search(raw)
        if m:
            funcs[cur].append(dict(addr=int(m.group(1), 16), pred=(m.group(2) or "").strip(), op=m.group(3),
                                   text=(m.group(3) + m.group(4)).strip(), file=src[0], line=src[1], labels=labels))
            labels = []
    return funcs


def loops(insns: list) -> list:
    """[(start index, end index)] of every loop: a branch to a label at or before it."""
    where = {}
    for i, ins in enumerate(insns):
        for lab in ins["labels"]:
            where[lab] = i
    out = []
    for i, ins in enumerate(insns):
        if ins["op"].startswith("BRA"):
            m = _TARGET.search(ins["text"])
            if m and m.group(1) in where and where[m.group(1)] <= i:
                out.append((where[m.group(1)], i))
    return out


def count(insns: list, lo: int, hi: int, skip=()) -> Counter:
    c = Counter()
    for i in range(lo, hi + 1):
        if any(a <= i <= b for a, b in skip):
            continue
        op = insns[i]["op"]
        c["all"] += 1
        for name, rx in CLASSES.items():
            if re.match(rx, op):
                c[name] += 1
    return c


def step_loop(insns: list):
    """(step loop, [loops nested in it, outermost first]) or None."""
    ls = loops(insns)
    with_bar = [(a, b) for a, b in ls if any(insns[i]["op"].startswith("BAR") for i in range(a, b + 1))]
    if not with_bar:
        return None
    outer = max(with_bar, key=lambda ab: ab[1] - ab[0])
    inner = [(a, b) for a, b in ls if outer[0] <= a and b <= outer[1] and (a, b) != outer]
    # Only the outermost of the nested loops (a loop inside another inner loop is counted with it).
    top = [(a, b) for a, b in inner if not any(c <= a and b <= d and (c, d) != (a, b) for c, d in inner)]
    return outer, sorted(top)


def analyse(so: str, arch: str, wanted) -> list:
    objdump, disasm = tool("cuobjdump"), tool("nvdisasm")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([objdump, "-xelf", "all", os.path.abspath(so)], cwd=tmp, check=True, capture_output=True)
        for cubin in sorted(glob.glob(os.path.join(tmp, f"*sweep_*.{arch}.cubin"))):
            text = subprocess.run([disasm, "-g", "-c", cubin], capture_output=True, text=True).stdout
            for fn, insns in parse(text).items():
                m = re.search(r"sweep_(fwd|bwd)(_mma)?_kernelI(f|N3c104HalfE|N3c108BFloat16E)NS_\d+(\w+?)CellELi(\d+)E"
                              r"(?:Lb([01])E)?", fn)
                if not m:
                    continue
                dtype = {"f": "float32", "N3c104HalfE": "float16", "N3c108BFloat16E": "bfloat16"}[m.group(3)]
                cell = re.sub(r"(?<!^)([A-Z])", r"_\1", m.group(4)).lower()
                kernel = m.group(1) + (f"_mma kt={m.group(5)}" + (" tf32x3" if m.group(6) == "1" else "")
                                       if m.group(2) else "")
                if not wanted(cell, dtype):
                    continue
                found = step_loop(insns)
                if not found:
                    rows.append(dict(kernel=kernel, cell=cell, dtype=dtype, note="no step loop found"))
                    continue
                (a, b), inner = found
                body = count(insns, a, b, skip=inner)
                ldg_lines = Counter(f"{insns[i]['file']}:{insns[i]['line']}" for i in range(a, b + 1)
                                    if insns[i]["op"].startswith("LDG") and not insns[i]["op"].startswith("LDGSTS")
                                    and not any(c <= i <= d for c, d in inner))
                subs = []
                for c, d in inner:
                    lines = sorted({insns[i]["line"] for i in range(c, d + 1) if insns[i]["line"]})
                    subs.append(dict(span=(lines[0], lines[-1]) if lines else None, counts=count(insns, c, d)))
                rows.append(dict(kernel=kernel, cell=cell, dtype=dtype, step=body, ldg_lines=ldg_lines, inner=subs))
    return rows


def markdown(rows: list) -> str:
    cols = ["all", "LDG", "STG", "LDGSTS", "wait", "BAR", "LDS", "STS", "HMMA", "FFMA", "FMUL/FADD", "MUFU", "BRA"]
    out = ["| kernel | cell | dtype | loop | " + " | ".join(cols) + " | global loads by source line |",
           "|---|---|---|---|" + "---|" * len(cols) + "---|"]
    for r in sorted(rows, key=lambda r: (r["kernel"], r["cell"], r["dtype"])):
        if "step" not in r:
            out.append(f"| {r['kernel']} | {r['cell']} | {r['dtype']} | {r.get('note')} |")
            continue
        lines = ", ".join(f"{k} x{v}" for k, v in sorted(r["ldg_lines"].items()))
        out.append(f"| {r['kernel']} | {r['cell']} | {r['dtype']} | step (outside inner loops) | "
                   + " | ".join(str(r["step"].get(c, 0)) for c in cols) + f" | {lines} |")
        for s in r["inner"]:
            span = f"lines {s['span'][0]}-{s['span'][1]}" if s["span"] else "?"
            out.append(f"| | | | inner loop ({span}), one pass | " + " | ".join(str(s["counts"].get(c, 0)) for c in cols)
                       + " | |")
    return "\n".join(out)


def issue_budget(rows: list, measured: list, clock_ghz: float) -> str:
    """FP32-core kernels, hidden <= 128 (W_hh in shared memory): the warp instructions one scheduler issues
    per step -- warps per scheduler x (inner-loop trips x one pass + the rest of the step) -- against the
    measured time per step. The inner loop runs hidden times forward (k), gates x hidden times backward
    (jj); every thread owns kLPT = 4 lines, so the counts are per thread and step. One CTA per SM at 512
    lines (64-128 CTAs on 132 SMs), 256 threads: 8 warps, 2 per scheduler."""
    from brnnseg_kernels import cells, plan

    sass = {(r["kernel"], r["cell"], r["dtype"]): r for r in rows if "step" in r}
    out = [f"| cell | dtype | hidden | kernel | W_hh | warps/scheduler | inner trips x instr/pass | rest of step | "
           f"issue cycles/step | measured us/step | measured cycles ({clock_ghz} GHz) | cycles per issued instruction |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in measured:
        if m["recurrence"] != "fma" or m["hidden"] > 128:
            continue
        r = sass.get((m["kernel"], m["cell"], m["dtype"]))
        if not r or len(r["inner"]) != 1:
            continue
        launch = plan.launch_plan(m["cell"], m["dtype"], m["hidden"], m["lines"], m["kernel"] == "bwd", "h100",
                                  recurrence="fma")
        wps = launch.threads / 32 / 4
        trips = m["hidden"] * (1 if m["kernel"] == "fwd" else cells.spec(m["cell"]).gates)
        inner, rest = r["inner"][0]["counts"]["all"], r["step"]["all"]
        issue = wps * (trips * inner + rest)
        cyc = m["us_per_step"] * clock_ghz * 1e3
        out.append(f"| {m['cell']} | {m['dtype']} | {m['hidden']} | {m['kernel']} | {m['weights']} | {wps:g} | "
                   f"{trips} x {inner} | {rest} | {issue:.0f} | {m['us_per_step']:.2f} | {cyc:.0f} | {cyc / issue:.2f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    so_default = (glob.glob(os.path.join(ROOT, "brnnseg_kernels", "_C*.so")) or [""])[0]
    p.add_argument("--so", default=so_default)
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--cells", nargs="*", default=["gru", "lstm"])
    p.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    p.add_argument("--md", default=None, help="also write the table to this file")
    p.add_argument("--measured", default=None, help="us_per_step.json of a GPU run: the issue budget beside it")
    p.add_argument("--clock-ghz", type=float, default=1.755, help="SM clock the cycles are counted at")
    args = p.parse_args(argv)
    if not args.so or not os.path.exists(args.so):
        raise SystemExit("sass_steps: no built extension (--so)")
    rows = analyse(args.so, args.arch, lambda c, d: c in args.cells and d in args.dtypes)
    md = markdown(rows)
    if args.measured:
        import json

        sys.path.insert(0, ROOT)
        with open(args.measured) as f:
            md += ("\n\n## FP32-core kernels: issued instructions per step against the measured time\n\n"
                   + issue_budget(rows, json.load(f), args.clock_ghz))
    print(md)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
