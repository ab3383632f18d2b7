"""One command on a GPU machine: build, test, sanitize, time and benchmark the CUDA path.

    python python/gpu_selfcheck.py --out DIR              # from the repository root; builds in place first
    python python/gpu_selfcheck.py --no-build --out DIR   # from a gpu_bundle archive (built elsewhere)

With a prebuilt extension the whole check fits in 6 minutes (--budget 330 s); every step has its own cap
and the caps add up to the budget, so no step starves the next (seen on an H200: the per-step timing
ran past its cap and the benchmarks got nothing). Steps (a failing step is recorded and the next one
runs):
  1. build in place for this GPU's arch only (TORCH_CUDA_ARCH_LIST=<major.minor>, no simulator
     extension), against whatever torch this machine has;
  2. the CUDA tests (cap 110 s, pytest-xdist when present, no -x: every failure is data):
     tests/test_sweep_cuda.py (cuDNN and matmul TF32 off; pair mode in every dtype; hidden 3..256; a side
     stream; cuda:1 when present), tests/test_cuda_backend.py (the cuDNN-or-ours choice on the GPU: the
     cuDNN path against the nn.LSTM block, explain, compile), tests/test_seg_loss.py and
     tests/test_ce_dice_loss.py with compiled
     Triton (conftest.py sets TRITON_INTERPRET only without a GPU);
  3. compute-sanitizer memcheck, racecheck, initcheck and synccheck side by side (cap 100 s): every
     kernel variant (forward/backward, FP32-core/tensor-core, GRU/LSTM, float32/bfloat16, W_hh in shared
     memory and through L2, sequential and pair launches, both losses) on small shapes; racecheck, the
     slowest tool, on one shape per variant. Each log ends with a count of errors per kernel
     (sanitizer-summary.json). initcheck's workload starts with a probe: a bfloat16 GEMM of the
     projections' shape read back by a torch kernel, so an error there is cuBLAS's write path, not ours;
  4. microseconds per step of each recurrence kernel (forward, backward) at T = 32, 128, 512 on 512 lines
     (cap 45 s), CUDA events around each call, the slope of a least-squares fit, beside the latency
     model's figure (brnnseg_kernels/plan.py) and cuDNN's nn.GRU/nn.LSTM on the same sequences: the
     FP32-core kernels (BRNNSEG_CUDA_RECURRENCE=fma) and the tensor-core ones (mma; bfloat16, and float32
     as TF32 up to hidden 64);
  5. the ReNet benchmark on the GPU shapes of the project's benchmark table (lanes, ade-s8, latency, hires;
     cap 50 s) against the permute + cuDNN block (with the cuDNN algorithm it asked for and ran, and both
     sides' time per step: cuda_renet.json), and the loss benchmark against the unfused composition
     (cap 25 s).
Writes DIR/selfcheck.json (every figure, the GPU, driver, torch, CUDA, cuDNN versions) and
DIR/selfcheck.md (the same as tables), plus each step's log. Without a GPU: exits 2 with one line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SANITIZER_TOOLS = ("memcheck", "racecheck", "initcheck", "synccheck")
STEP_T = (32, 128, 512)
STEP_LINES = 512
# Seconds each step may take; together at most the default budget (6 minutes with a prebuilt extension).
CAPS = {"tests": 110, "sanitizers": 100, "us-per-step": 45, "bench-renet": 50, "bench-loss": 25}
DEFAULT_BUDGET = 330.0
# The ReNet benchmark's GPU shapes (brnnseg_kernels/bench/workloads.py): one per hidden-size regime.
BENCH_SHAPES = ("lanes-64", "ade-s8-128", "latency-128", "ade-s16-256")


# ---- the workloads run in child processes ----------------------------------------------------------------

def workload_small(level: str = "full") -> int:
    """Every kernel variant once on small shapes (what the sanitizers watch). Exits non-zero on a wrong
    result. level "full" (memcheck): sequential at hidden 40 and 160 (W_hh in shared memory / through L2)
    and pair mode, for every (cell, recurrence, dtype); "medium" (synccheck, and initcheck after its probe:
    "probe"): pair mode in bfloat16 only; "tiny" (racecheck, the slowest): one sequential launch at hidden
    40 per (cell, recurrence, dtype). On the H200 the full workload took memcheck 25 s, initcheck and
    synccheck ~95 s, racecheck > 95 s."""
    import torch

    import brnnseg_kernels as bk

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if level == "probe":
        # The forward op's projections are a cuBLAS GEMM (positions x C) @ (C x 2*G*hid); for the bfloat16
        # LSTM at hidden 160 of the cases below: (2 x 63 x 5) @ (5 x 1280). If initcheck reports the torch
        # kernel that reads this product back, cuBLAS's writes are not tracked on this GPU (a tool limit:
        # every read of such a buffer is reported), and the same reports at our kernels' gx reads are that.
        a = torch.randn(2, 5, 63, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        b = torch.randn(1280, 5, device="cuda", dtype=torch.bfloat16)
        prod = torch.matmul(a, b.t())
        print("probe: bf16 GEMM", tuple(prod.shape), "read back:", float(prod.float().abs().sum()), flush=True)
    failures = 0
    cases = [(r, d) for r in ("fma", "mma") for d in (torch.float32, torch.bfloat16)]
    shapes = (("sequential", 40),) if level == "tiny" else (("sequential", 40), ("parallel", 24), ("sequential", 160))
    for cell, layer in (("gru", bk.BiGRU2d), ("lstm", bk.BiLSTM2d)):
        for recurrence, dtype in cases:
            os.environ["BRNNSEG_CUDA_RECURRENCE"] = recurrence  # read at every call
            for mode, hid in shapes:
                if recurrence == "mma" and hid > (64 if dtype == torch.float32 else 128):
                    continue  # no tensor-core plan: the same FP32-core launch as above
                if level in ("medium", "probe") and mode == "parallel" and dtype != torch.bfloat16:
                    continue
                m = layer(5, hid, mode=mode).cuda().to(dtype)
                x = torch.randn(2, 5, 7, 9, device="cuda", dtype=dtype, requires_grad=True)
                y = m(x)
                y.float().square().sum().backward()
                ref = layer(5, hid, mode=mode).double()
                ref.load_state_dict(m.state_dict())
                xr = x.detach().double().cpu().requires_grad_()
                yr = ref(xr)
                err = (y.double().cpu() - yr).abs().max().item()
                tol = (1e-4 if recurrence == "fma" else 2 * 2.0 ** -11 * hid ** 0.5) if dtype == torch.float32 else 5e-2
                print(f"{cell} {str(dtype)[6:]} {recurrence} {mode} hid {hid}: max error {err:.2e}", flush=True)
                if not err <= tol:
                    print(f"FAIL {cell} {dtype} {recurrence} {mode} hid {hid}: max error {err}")
                    failures += 1
    os.environ.pop("BRNNSEG_CUDA_RECURRENCE", None)
    x = torch.randn(2, 3, 37, 29, device="cuda", requires_grad=True)
    t = torch.rand(2, 3, 37, 29, device="cuda") > 0.6
    bk.functional.bce_dice_loss(x, t, pos_weight=10.0, boundary_weight=2.0, boundary_radius=1).backward()
    if level != "tiny":
        v = torch.randn(1, 2, 5, 6, 7, device="cuda", requires_grad=True)
        bk.functional.bce_dice_loss(v, torch.rand_like(v) > 0.5, boundary_weight=1.0).backward()
        z = torch.randn(2, 4, 19, 23, device="cuda", requires_grad=True)
        bk.functional.ce_dice_loss(z, torch.randint(0, 4, (2, 19, 23), device="cuda"), boundary_weight=1.0).backward()
    torch.cuda.synchronize()
    print("workload done, failures:", failures)
    return 1 if failures else 0


def workload_steps(out_path: str) -> int:
    """Microseconds per step: sweep ops over T = 16..512 on 512 lines, least-squares slope; cuDNN beside."""
    import torch

    import functools

    import brnnseg_kernels as bk
    from brnnseg_kernels import plan

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gpu = "h100" if torch.cuda.get_device_capability()[0] >= 9 else "a100"
    C = 16

    def time_ms(fn, reps=3):
        """Median GPU time of one call, CUDA events around it (host launch gaps included; the slope over T
        removes what does not grow with T). Fast: the whole step takes about its GPU time."""
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[len(times) // 2]

    def slope(ts, ms):
        n = len(ts)
        mt, mm = sum(ts) / n, sum(ms) / n
        return sum((t - mt) * (m - mm) for t, m in zip(ts, ms)) / sum((t - mt) ** 2 for t in ts) * 1e3  # us/step

    rows = []
    for cell in ("gru", "lstm"):
        g = bk.cells.spec(cell).gates
        op = functools.partial(torch.ops.brnnseg.sweep, cell)
        bop = functools.partial(torch.ops.brnnseg.sweep_backward, cell)
        for dtype_name in ("float32", "bfloat16"):
            dtype = getattr(torch, dtype_name)
            for hid in (40, 64, 128, 256):
                w = [torch.randn(2, g * hid, C, device="cuda", dtype=dtype) * 0.1,
                     torch.randn(2, g * hid, hid, device="cuda", dtype=dtype) * hid ** -0.5,
                     torch.zeros(2, g * hid, device="cuda", dtype=dtype), torch.zeros(2, g * hid, device="cuda", dtype=dtype)]
                rnn = getattr(torch.nn, cell.upper())(C, hid, batch_first=True, bidirectional=True).cuda().to(dtype)
                ref = []
                for T in STEP_T:
                    seq = torch.randn(STEP_LINES, T, C, device="cuda", dtype=dtype)
                    with torch.no_grad():
                        ref.append(time_ms(lambda: rnn(seq)))
                tf32 = dtype == torch.float32
                for recurrence in ("fma", "mma"):
                    launch = {k: plan.launch_plan(cell, dtype_name, hid, STEP_LINES, k == "bwd", gpu, recurrence="auto",
                                                  tf32=tf32) for k in ("fwd", "bwd")}
                    if recurrence == "mma" and not launch["fwd"].mma:
                        continue  # no tensor-core plan at this size
                    if recurrence == "fma":
                        launch = {k: plan.launch_plan(cell, dtype_name, hid, STEP_LINES, k == "bwd", gpu,
                                                      recurrence="fma") for k in ("fwd", "bwd")}
                    os.environ["BRNNSEG_CUDA_RECURRENCE"] = recurrence
                    torch.backends.cuda.matmul.allow_tf32 = tf32 and recurrence == "mma"
                    fwd, bwd = [], []
                    for T in STEP_T:
                        x = torch.randn(1, C, STEP_LINES, T, device="cuda", dtype=dtype)
                        y, ws = op(x, *w, 3, False, True)
                        gy = torch.randn_like(y)
                        fwd.append(time_ms(lambda: op(x, *w, 3, False, True)))
                        bwd.append(time_ms(lambda: bop(gy, x, w[0], w[1], y, ws, 3)))
                    torch.backends.cuda.matmul.allow_tf32 = False
                    for kernel, ms in (("fwd", fwd), ("bwd", bwd)):
                        est = plan.estimate(launch[kernel], gpu)
                        cal = plan.estimate_calibrated(launch[kernel], gpu)
                        rows.append(dict(cell=cell, dtype=dtype_name, hidden=hid, kernel=kernel, lines=STEP_LINES,
                                         recurrence=recurrence + ("(tf32)" if tf32 and recurrence == "mma" else ""),
                                         T=list(STEP_T), ms=ms, us_per_step=slope(STEP_T, ms),
                                         model_us_per_step=est.us_per_step, weights=launch[kernel].weights,
                                         calibrated_us_per_step=cal.us_per_step * cal.waves if cal else None,
                                         cudnn_fwd_us_per_step=slope(STEP_T, ref) if kernel == "fwd" else None))
                    print(f"{cell} {dtype_name} hid {hid} {recurrence}: fwd {rows[-2]['us_per_step']:.2f} us/step "
                          f"(model {rows[-2]['model_us_per_step']:.2f}, calibrated {rows[-2]['calibrated_us_per_step'] or 0:.2f}, "
                          f"cuDNN {rows[-2]['cudnn_fwd_us_per_step']:.2f}), bwd {rows[-1]['us_per_step']:.2f} (model "
                          f"{rows[-1]['model_us_per_step']:.2f}, calibrated {rows[-1]['calibrated_us_per_step'] or 0:.2f})",
                          flush=True)
    os.environ.pop("BRNNSEG_CUDA_RECURRENCE", None)
    with open(out_path, "w") as f:
        json.dump(rows, f, indent=1)
    return 0


# ---- the driver --------------------------------------------------------------------------------------------

class Run:
    def __init__(self, out: str, budget_s: float):
        self.out, self.deadline, self.steps = out, time.time() + budget_s, []

    def left(self) -> float:
        return self.deadline - time.time()

    def step(self, name, cmd, cap_s, env=None, log=None):
        """Runs cmd with a timeout of min(cap, time left); records status, time and the log's tail."""
        limit = min(cap_s, self.left() - 5)
        rec = dict(name=name, cmd=" ".join(cmd), status="skipped", rc=None, seconds=0.0, tail="")
        self.steps.append(rec)
        if limit < 10:
            rec["tail"] = "skipped: the self-check's time budget is spent"
            return rec
        log = log or os.path.join(self.out, f"{name}.log")
        t0 = time.time()
        with open(log, "w") as f:
            try:
                p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=f,
                                   stderr=subprocess.STDOUT, timeout=limit)
                rec["rc"] = p.returncode
                rec["status"] = "pass" if p.returncode == 0 else "fail"
            except subprocess.TimeoutExpired:
                rec["status"] = "timeout"
            except OSError as e:
                rec["status"], rec["tail"] = "error", str(e)
        rec["seconds"] = round(time.time() - t0, 1)
        rec["log"] = os.path.basename(log)
        with open(log, errors="replace") as f:
            rec["tail"] = rec["tail"] or f.read()[-3000:]
        print(f"[{rec['status']:>7}] {name} ({rec['seconds']} s)", flush=True)
        return rec


def environment():
    import torch

    env = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
               cudnn=torch.backends.cudnn.version(), gpu=torch.cuda.get_device_name(0),
               capability=".".join(map(str, torch.cuda.get_device_capability(0))),
               gpus=torch.cuda.device_count(), sm_count=torch.cuda.get_device_properties(0).multi_processor_count)
    try:
        env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        env["driver"] = "unknown"
    nvcc = shutil.which("nvcc")
    env["nvcc"] = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1] \
        if nvcc else None
    env["compute_sanitizer"] = shutil.which("compute-sanitizer")
    return env


def sanitize(run: Run, cap_s: float):
    """The four compute-sanitizer tools side by side over workload_small."""
    tool = run_env_tool()
    if tool is None:
        run.steps.append(dict(name="compute-sanitizer", status="skipped", tail="compute-sanitizer not found"))
        print("[skipped] compute-sanitizer: not found", flush=True)
        return
    limit = min(cap_s, run.left() - 5)
    procs = {}
    t0 = time.time()
    levels = {"racecheck": "tiny", "initcheck": "probe", "synccheck": "medium"}
    for t in SANITIZER_TOOLS:
        log = open(os.path.join(run.out, f"sanitizer-{t}.log"), "w")
        # Device frames only (host backtraces are 40 lines an error); enough errors printed to count them
        # per kernel.
        cmd = [tool, "--tool", t, "--error-exitcode", "99", "--print-limit", "5000", "--show-backtrace", "device",
               sys.executable, os.path.abspath(__file__), "_workload_small", levels.get(t, "full")]
        procs[t] = (subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": ROOT}), log, cmd)
    for t, (p, log, cmd) in procs.items():
        rec = dict(name=f"sanitizer-{t}", cmd=" ".join(cmd), log=f"sanitizer-{t}.log")
        try:
            p.wait(timeout=max(1.0, limit - (time.time() - t0)))
            rec["rc"] = p.returncode
            rec["status"] = "pass" if p.returncode == 0 else "fail"
        except subprocess.TimeoutExpired:
            p.kill()
            rec["status"] = "timeout"
        log.close()
        rec["seconds"] = round(time.time() - t0, 1)
        with open(os.path.join(run.out, rec["log"]), errors="replace") as f:
            text = f.read()
        if "Device not supported" in text or "not supported on this device" in text:
            rec["status"] = "refused"
        rec["tail"] = text[-3000:]
        rec["errors_by_kernel"] = sanitizer_errors_by_kernel(text)
        run.steps.append(rec)
        print(f"[{rec['status']:>7}] sanitizer {t} ({rec['seconds']} s)"
              + (f": {rec['errors_by_kernel']}" if rec["errors_by_kernel"] else ""), flush=True)
    with open(os.path.join(run.out, "sanitizer-summary.json"), "w") as f:
        json.dump({r["name"]: dict(status=r["status"], seconds=r.get("seconds"), errors_by_kernel=r.get("errors_by_kernel"))
                   for r in run.steps if r["name"].startswith("sanitizer-")}, f, indent=1)


def sanitizer_errors_by_kernel(text: str) -> dict:
    """{"<kernel>:<what>": count} from a compute-sanitizer log: each error's first "at <function>+<pc>"
    line (templates shortened to the name) and its headline ("Uninitialized __global__ memory read of
    size 2 bytes")."""
    import re

    counts: dict = {}
    what = None
    for line in text.splitlines():
        body = line.lstrip("= ").rstrip()
        if body.startswith(("Uninitialized", "Invalid", "Race", "Barrier", "Misaligned", "Out-of-range", "Warning",
                            "Error", "Potential", "Program hit")):
            what = body
        elif what and body.startswith("at "):
            fn = re.sub(r"\(.*", "", body[3:])
            fn = re.sub(r"<.*", "", fn).split()[-1] if fn.strip() else "?"
            key = f"{fn}: {what}"
            counts[key] = counts.get(key, 0) + 1
            what = None
    return counts


def run_env_tool():
    for cand in (shutil.which("compute-sanitizer"), "/usr/local/cuda/bin/compute-sanitizer",
                 "/usr/local/cuda/compute-sanitizer/compute-sanitizer"):
        if cand and os.path.isfile(cand):
            return cand
    return None


def write_report(out: str, env: dict, steps: list, step_rows: list):
    with open(os.path.join(out, "selfcheck.json"), "w") as f:
        json.dump(dict(environment=env, steps=steps, us_per_step=step_rows), f, indent=1)
    md = ["# GPU self-check", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env.items()]
    md += ["", "| step | status | seconds |", "|---|---|---|"]
    md += [f"| {s['name']} | {s['status']} | {s.get('seconds', '')} |" for s in steps]
    if step_rows:
        md += ["", f"Microseconds per step ({STEP_LINES} lines, slope over T = {STEP_T[0]}..{STEP_T[-1]}):", "",
               "| cell | dtype | hidden | recurrence | kernel | W_hh | measured us/step | paper model us/step | "
               "calibrated model us/step | cuDNN fwd us/step |",
               "|---|---|---|---|---|---|---|---|---|---|"]
        for r in step_rows:
            cud = "" if r["cudnn_fwd_us_per_step"] is None else f"{r['cudnn_fwd_us_per_step']:.2f}"
            md.append(f"| {r['cell']} | {r['dtype']} | {r['hidden']} | {r.get('recurrence', 'fma')} | {r['kernel']} | "
                      f"{r['weights']} | "
                      f"{r['us_per_step']:.2f} | {r['model_us_per_step']:.2f} | "
                      f"{'' if r.get('calibrated_us_per_step') is None else format(r['calibrated_us_per_step'], '.2f')} | "
                      f"{cud} |")
    for s in steps:
        if s["status"] not in ("pass",):
            md += ["", f"## {s['name']}: {s['status']}", "", "```", s.get("tail", "")[-1500:], "```"]
    with open(os.path.join(out, "selfcheck.md"), "w") as f:
        f.write("\n".join(md) + "\n")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_workload_small"]:
        return workload_small(argv[1] if len(argv) > 1 else "full")
    if argv[:1] == ["_workload_steps"]:
        return workload_steps(argv[1])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for selfcheck.json, selfcheck.md and the logs")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                   help="seconds for the whole run (default 330; the build, when asked for, gets 300 more)")
    p.add_argument("--no-build", action="store_true", help="use the extension already built in place")
    p.add_argument("--skip", nargs="*", default=[], choices=["tests", "sanitizers", "steps", "bench"])
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_selfcheck: no GPU visible (torch.cuda.is_available() is False); nothing to check here")
        return 2
    os.makedirs(args.out, exist_ok=True)
    run = Run(os.path.abspath(args.out), args.budget + (0 if args.no_build else 300))
    env = environment()
    print(json.dumps(env), flush=True)
    py = sys.executable
    pyenv = {"PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}
    if not args.no_build:
        arch = env["capability"]
        run.step("build", [py, "setup.py", "-q", "build_ext", "--inplace"], 300,
                 env={"TORCH_CUDA_ARCH_LIST": arch, "BRNNSEG_BUILD_SIM": "0", "NVCC_THREADS": "4"})
    if "tests" not in args.skip:
        xdist = ["-n", "8"] if _has("xdist") else []
        run.step("tests", [py, "-m", "pytest", "-q", "--no-header", "-p", "no:cacheprovider", *xdist,
                           "tests/test_sweep_cuda.py", "tests/test_cuda_backend.py", "tests/test_seg_loss.py",
                           "tests/test_ce_dice_loss.py"],
                 CAPS["tests"], env=pyenv)
    if "sanitizers" not in args.skip:
        sanitize(run, CAPS["sanitizers"])
    step_rows = []
    if "steps" not in args.skip:
        path = os.path.join(run.out, "us_per_step.json")
        run.step("us-per-step", [py, os.path.abspath(__file__), "_workload_steps", path], CAPS["us-per-step"],
                 env=pyenv)
        if os.path.exists(path):
            with open(path) as f:
                step_rows = json.load(f)
    if "bench" not in args.skip:
        run.step("bench-renet", [py, "-m", "brnnseg_kernels", "bench", "--device", "cuda", "--shapes", *BENCH_SHAPES,
                                 "--dtype", "float32", "bfloat16", "--repeat", "3", "--no-memory", "--csv",
                                 os.path.join(run.out, "cuda_renet.csv"), "--json",
                                 os.path.join(run.out, "cuda_renet.json"), "--plot",
                                 os.path.join(run.out, "cuda_renet.png")], CAPS["bench-renet"], env=pyenv)
        run.step("bench-loss", [py, "-m", "brnnseg_kernels", "bench", "--op", "loss", "--device", "cuda",
                                "--repeat", "5"], CAPS["bench-loss"], env=pyenv)
    write_report(run.out, env, run.steps, step_rows)
    bad = [s["name"] for s in run.steps if s["status"] not in ("pass", "skipped", "refused")]
    print(f"selfcheck: {len(run.steps) - len(bad)} of {len(run.steps)} steps passed or skipped; "
          f"report in {os.path.join(run.out, 'selfcheck.md')}" + (f"; not passed: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    sys.exit(main())
