"""Command line: ``python -m brnnseg_kernels info | bench | plan | tune | demo | train | predict``."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import torch


def _info(_args) -> int:
    import brnnseg_kernels as bk

    info = bk.build_info()
    print(f"brnnseg_kernels {bk.__version__}")
    print(f"torch           {torch.__version__} (CUDA {torch.version.cuda})")
    print(f"built against   torch {info.get('torch', '?')} (CUDA {info.get('torch_cuda')}, "
          f"C++11 ABI {info.get('cxx11_abi', '?')})")
    print(f"CUDA kernels    {'yes, archs ' + info.get('cuda_archs', '') if info.get('with_cuda') else 'no'}")
    print(f"GPU visible     {torch.cuda.is_available()}")
    print(f"CPU threads     {torch.get_num_threads()}")
    isa = bk.cpu_isa()
    bf16 = {"amx_bf16": "bfloat16 on AMX-BF16 tiles (edges on AVX512-BF16)",
            "avx512_bf16": "bfloat16 on AVX512-BF16"}.get(isa["bf16"])
    if bf16 is None:
        bf16 = "float32 (" + ("capped by BRNNSEG_CPU_ISA" if isa["avx512_bf16_cpu"] == "yes" else "no AVX512-BF16") + ")"
    amx = {"yes": "present" + (", not used (capped)" if isa["bf16"] != "amx_bf16" else ""),
           "refused": "present, refused by the OS (arch_prctl ARCH_REQ_XCOMP_PERM): not used"}.get(isa["amx_bf16"], "absent")
    print(f"CPU ISA         {isa['vector']}; bfloat16 sweeps' products in {bf16}; AMX-BF16 {amx}"
          + (f"; BRNNSEG_CPU_ISA={isa['cap']}" if isa["cap"] != "none" else ""))
    ops = sorted(n for n in dir(torch.ops.brnnseg) if hasattr(getattr(torch.ops.brnnseg, n), "default"))
    print(f"ops             {', '.join(ops)}")
    return 0


# Older --op names (the op stems are sweep, sequence and seg_loss).
_OP_ALIASES = {"renet": "sweep", "rnn": "sequence", "loss": "seg_loss"}


def _gemm_rates(device: str):
    """torch's float32 GEMM rate and, on the CPU, that of the GEMM our kernels call (GFLOP/s)."""
    from . import bench

    sgemm = bench.sgemm_gflops(device)
    cpu = device == "cpu"
    kgemm = bench.kernel_gemm_gflops() if cpu else float("nan")
    peak = bench.fma_peak_gflops() if cpu else float("nan")
    print(f"device {bench.device_name(device)}; float32 GEMM: torch.matmul 2048^2 {sgemm:.0f} GFLOP/s"
          + (f"; our kernels' GEMM on step-sized products (kGEMM, 128x256x512 per thread) {kgemm:.0f} GFLOP/s"
             f"; FMA peak {peak:.0f} GFLOP/s" if cpu else ""))
    return sgemm, kgemm, peak


def _bench(args) -> int:
    from . import bench

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench --device cuda: no GPU is visible on this machine", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    args.op = _OP_ALIASES.get(args.op, args.op)
    if args.op == "models":
        print(f"device {bench.device_name('cpu')}; segmentation models, CPU")
        print(bench.report_models(bench.run_models(args.repeat, args.threads)))
        return 0
    if args.op == "sequence":
        if args.device != "cpu":
            print("bench --op sequence: the sequence kernels run on the CPU (CUDA runs torch's cuDNN path)",
                  file=sys.stderr)
            return 2
        sgemm, kgemm, peak = _gemm_rates("cpu")
        print("model with bidirectional nn.GRU/nn.LSTM (batch_first) vs the same after replace_rnns")
        rows = bench.run_rnn(args.shapes, args.cells, args.repeat, args.threads, not args.no_memory)
        print(bench.report(rows, sgemm, kgemm, peak))
        if args.csv:
            bench.write_csv(rows, args.csv, bench.device_name("cpu"), sgemm)
        return 0
    if args.op == "seg_loss":
        print(f"device {bench.device_name(args.device)}; fused loss vs unfused PyTorch, forward+backward")
        print(bench.report_loss(bench.run_loss(args.device, args.repeat, args.threads, not args.no_memory)))
        return 0
    if args.processes > 1:
        return _bench_processes(args)
    if args.child_json:  # one process of a --processes run: rows only, for the parent to aggregate
        torch.set_num_threads(args.threads)
        dtype = getattr(torch, (args.dtype or ["float32"])[0])
        rows = bench.run(args.device, args.shapes, args.cells, args.repeat, args.threads, False, dtype)
        with open(args.child_json, "w") as f:
            f.write(bench.rows_to_json(rows))
        return 0
    sgemm, kgemm, peak = _gemm_rates(args.device)
    if args.device == "cuda":
        print(f"TF32: matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32} "
              "(cuDNN RNNs use TF32 for float32 when allowed)")
    dtypes = args.dtype or bench.native_dtypes(args.device)
    # bfloat16 on the CPU: products on AMX tiles or AVX512-BF16 where it has them, whose roof is that unit's peak.
    bf16_peak = (bench.bf16_peak_gflops() if args.device == "cpu" and "bfloat16" in dtypes
                 else float("nan"))
    all_rows, records, cell_floor = [], [], {}
    for name in dtypes:
        dtype = getattr(torch, name)
        row_peak = bf16_peak if name == "bfloat16" and bf16_peak == bf16_peak else peak
        unit = "AMX-BF16 tiles" if name == "bfloat16" and args.device == "cpu" and \
            __import__("brnnseg_kernels").cpu_isa()["bf16"] == "amx_bf16" else "AVX512-BF16"
        print(f"-- {name}" + (f" (products on {unit}: % peak and roof against its product peak, "
                              f"{bf16_peak:.0f} GFLOP/s)" if row_peak is bf16_peak else ""))
        rec: list = []
        rows = bench.run(args.device, args.shapes, args.cells, args.repeat, args.threads, not args.no_memory, dtype,
                         cudnn_records=rec)
        cell_ms = None
        if args.device == "cpu":  # the gate math at its measured rate (state float32 in every dtype; bfloat16
            cell_ms = {}          # ops with bfloat16 products run it to bfloat16's accuracy)
            for shape_name, cell in {(r.shape, r.cell) for r in rows}:
                key = f"{shape_name} {cell} {name}"
                floor = cell_floor.get(key) or bench.cell_floor_ms(bench.CPU_SHAPES[shape_name], cell, args.threads,
                                                                   bf16_gates=row_peak is bf16_peak)
                cell_ms.update({(shape_name, cell, mode): ms for mode, ms in floor.items()})
                cell_floor[key] = floor
        print(bench.report(rows, sgemm, kgemm, row_peak, cell_ms))
        if rec:
            print(bench.report_cudnn(rec))
        records += rec
        if len(dtypes) > 1:
            rows = [dataclasses.replace(r, shape=f"{r.shape} {name}") for r in rows]
        all_rows += rows
        if args.csv:
            bench.write_csv(rows, args.csv, f"{bench.device_name(args.device)} {name}", sgemm)
            print(f"appended to {args.csv}")
    _save(args, [all_rows], f"ReNet block vs PyTorch, {bench.device_name(args.device)}, {'/'.join(dtypes)}",
          sgemm_gflops=sgemm, kernel_gemm_gflops=kgemm, fma_peak_gflops=peak, bf16_peak_gflops=bf16_peak,
          cpu_isa=(__import__("brnnseg_kernels").cpu_isa() if args.device == "cpu" else None), dtypes=dtypes,
          cell_floor_ms=cell_floor,
          **({"cudnn": records} if args.device == "cuda" else {}))
    return 0


def _save(args, runs, title, **extra) -> None:
    """--json (every figure and the machine) and --plot (speed-ups with the 1x line) of a ReNet run."""
    from . import bench

    if args.json:
        bench.write_json(args.json, runs, args.device, op=args.op, repeat=args.repeat, **extra)
        print(f"wrote {args.json}")
    if args.plot:
        bench.plot_speedups(runs, args.plot, title)
        print(f"wrote {args.plot}")


def _bench_processes(args) -> int:
    """The ReNet comparison in args.processes fresh processes, one after the other (no memory runs), per
    dtype of --dtype (default float32), then the spread of each side's time and of the speed-up over them."""
    import subprocess
    import tempfile

    from . import bench

    if args.op != "sweep" or args.device != "cpu":
        print("bench --processes: for --op renet --device cpu", file=sys.stderr)
        return 2
    all_runs = []
    for name in args.dtype or ["float32"]:
        runs = []
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.processes):
                out = os.path.join(tmp, f"run{i}.json")
                cmd = [sys.executable, "-m", "brnnseg_kernels", "bench", "--device", "cpu", "--repeat",
                       str(args.repeat), "--threads", str(args.threads), "--child-json", out, "--cells", *args.cells,
                       "--dtype", name]
                if args.shapes:
                    cmd += ["--shapes", *args.shapes]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    print(done.stderr[-2000:], file=sys.stderr)
                    return done.returncode
                with open(out) as f:
                    rows = bench.rows_from_json(f.read())
                runs.append(rows)
                print(f"{name}: process {i + 1}/{args.processes} done", file=sys.stderr)
        print(f"device {bench.device_name('cpu')}; ReNet block, {name}")
        print(bench.report_processes(runs))
        if args.csv:
            for rows in runs:
                bench.write_csv(rows, args.csv, bench.device_name("cpu") + f" {name}", float("nan"))
            print(f"appended to {args.csv}")
        named = [[dataclasses.replace(r, shape=f"{r.shape} {name}") for r in rows] for rows in runs]  # the JSON
        all_runs = [a + b for a, b in zip(all_runs, named)] if all_runs else named
    _save(args, all_runs, f"ReNet block vs PyTorch, {bench.device_name('cpu')}, {', '.join(args.dtype or ['float32'])}, "
                          f"{len(all_runs)} processes")
    return 0


def _plan(args) -> int:
    from . import bench, plan

    if args.measured:
        import json

        with open(args.measured) as f:
            print(plan.calibration_table(json.load(f), args.gpu))
        return 0
    shapes = {k: v for k, v in bench.GPU_SHAPES.items() if not args.shapes or k in args.shapes}
    print(plan.plan_table(args.gpu, shapes, cells=args.cells, dtypes=args.dtype, recurrence=args.recurrence,
                          tf32=args.tf32, model=args.model))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:  # their own parsers (argparse's REMAINDER drops leading options)
        from .demo.run import main as demo_main

        return demo_main(argv[1:])
    if argv[:1] == ["tune"]:
        from .tuning.measure import main as tune_main

        return tune_main(argv[1:])
    if argv[:1] in (["train"], ["predict"]):
        from .demo import user

        return (user.train_main if argv[0] == "train" else user.predict_main)(argv[1:])
    from . import cells

    p = argparse.ArgumentParser(prog="python -m brnnseg_kernels")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="versions and what this build contains")
    b = sub.add_parser("bench", help="ReNet layers vs the nn.GRU/nn.LSTM block, the fused loss, or the drop-in RNNs")
    b.add_argument("--op", choices=["sweep", "sequence", "seg_loss", "models", *_OP_ALIASES], default="sweep",
                   help="sweep: the ReNet layers (the sweep ops); sequence: the drop-in nn.GRU/LSTM/RNN "
                        "(replace_rnns); seg_loss: the fused loss; models: parameter counts and CPU times of the "
                        "segmentation models. Older names: renet, rnn, loss")
    b.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    b.add_argument("--shapes", nargs="*", help="shape names (default: all for the device)")
    b.add_argument("--cells", nargs="*", default=["gru", "lstm"], choices=list(cells.names()),
                   help="cell families (rows of brnnseg_kernels.cells)")
    b.add_argument("--repeat", type=int, default=7)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    b.add_argument("--dtype", nargs="*", choices=["float32", "float16", "bfloat16"],
                   help="ReNet benchmark dtypes (default: float32 and the half types the device runs natively: "
                        "on CUDA float16, and bfloat16 from sm_80; on the CPU those with AVX512/AMX BF16 or FP16)")
    b.add_argument("--csv", help="append results to this CSV file")
    b.add_argument("--processes", type=int, default=1,
                   help="ReNet on the CPU: run the comparison in this many fresh processes and report the "
                        "spread of times and speed-ups (both sides can settle into a different speed per process)")
    b.add_argument("--json", help="ReNet: write every figure and the machine's description to this JSON file")
    b.add_argument("--plot", help="ReNet: write a chart of the speed-ups (with the 1x line) to this PNG file")
    b.add_argument("--child-json", help=argparse.SUPPRESS)  # rows of one --processes child
    pl = sub.add_parser("plan", help="the CUDA sweeps' launch plan and modelled time per step on a GPU, for the "
                                     "GPU benchmark shapes (runs anywhere)")
    pl.add_argument("--gpu", choices=["h100", "h200", "a100"], default="h100")
    pl.add_argument("--shapes", nargs="*", help="GPU shape names (default: all)")
    pl.add_argument("--cells", nargs="*", default=["gru", "lstm"], choices=list(cells.names()))
    pl.add_argument("--dtype", nargs="*", default=["float32", "bfloat16"], choices=["float32", "float16", "bfloat16"])
    pl.add_argument("--recurrence", choices=["auto", "fma", "mma", "tf32x3"], default="auto",
                    help="as BRNNSEG_CUDA_RECURRENCE: the planner's choice, the FP32-core or the tensor-core "
                         "kernels (float32 as TF32, or as 3xTF32)")
    pl.add_argument("--tf32", action="store_true", help="as torch.backends.cuda.matmul.allow_tf32 (float32 on "
                                                         "tensor cores where a plan exists)")
    pl.add_argument("--measured", metavar="JSON", help="instead: the calibrated model's per-step budget beside "
                    "every row of a gpu_selfcheck.py us_per_step.json (e.g. benchmarks/results/2026-12-04-h200/)")
    pl.add_argument("--model", choices=["calibrated", "paper"], default="calibrated",
                    help="time per step: the model calibrated on the H200's measurements (sm_90; the paper model "
                         "where none exists) or the paper model")
    sub.add_parser("demo", help="train a BRNN-U-Net and a plain U-Net on built-in tasks and compare them "
                                "(python -m brnnseg_kernels demo --help)")
    sub.add_parser("train", help="train on your own images: --data DIR with images/ and masks/ "
                                 "(python -m brnnseg_kernels train --help)")
    sub.add_parser("predict", help="write predicted masks: --checkpoint CKPT --input DIR --out DIR")
    sub.add_parser("tune", help="on a GPU: measure our CUDA kernels against the cuDNN block, the table the "
                                "backend choice reads (--out FILE; python -m brnnseg_kernels tune --help)")
    args = p.parse_args(argv)
    return {"info": _info, "bench": _bench, "plan": _plan}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
