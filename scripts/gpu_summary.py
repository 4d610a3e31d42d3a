#!/usr/bin/env python3
"""Summary table of the GPU suite (scripts/gpu_suite.sh): test counts and the benchmark medians.

    python3 gpu_summary.py OUT_DIR     # reads OUT_DIR/gpus.txt, build.txt, test_gpu.json, bench_gpu.json

Standard library only (runs on the GPU machine as it is)."""
import json
import os
import re
import sys


def machine(path):
    if not os.path.exists(path):
        return "GPU: unknown (no gpus.txt)"
    lines = [l.strip() for l in open(path) if l.strip()]
    return "GPU: " + ("; ".join(lines) if lines else "unknown (gpus.txt is empty)")


def build(path):
    if not os.path.exists(path):
        return "build: unknown (no build.txt)"
    return "build: " + "; ".join(l.strip() for l in open(path) if l.strip())


def tests(path):
    if not os.path.exists(path):
        return "tests: no test_gpu.json (the tests step did not run or did not finish)"
    d = json.load(open(path))
    ran = skipped = failed = 0
    failures = []
    for suite in d.get("testsuites", []):
        for t in suite.get("testsuite", []):
            if t.get("result") == "SKIPPED" or t.get("status") == "NOTRUN":
                skipped += 1
                continue
            ran += 1
            if t.get("failures"):
                failed += 1
                failures.append(suite["name"] + "." + t["name"])
    lines = [f"tests: {ran} ran, {failed} failed, {skipped} skipped"]
    lines += [f"  FAILED {f}" for f in failures[:20]]
    return "\n".join(lines)


NAME = re.compile(r"BM_Gpu/(?P<v>[a-z0-9_]+)(?:/(?P<fmt>int4|nvfp4))?/v:\d+/K:(?P<K>\d+)/N:(?P<N>\d+)/M:(?P<M>\d+)")


def bench(path):
    if not os.path.exists(path):
        return "bench: no bench_gpu.json (the bench step did not run or did not finish)"
    d = json.load(open(path))
    ctx = d.get("context", {})
    rows, errors = {}, []
    for b in d.get("benchmarks", []):
        m = NAME.match(b.get("run_name", b["name"]))
        if not m:
            continue
        if b.get("error_occurred"):
            errors.append((b["name"], b.get("error_message")))
            continue
        if b.get("aggregate_name") != "median":
            continue
        key = (int(m["K"]), int(m["N"]), int(m["M"]))
        var = m["v"] + ("/" + m["fmt"] if m["fmt"] else "")
        scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[b.get("time_unit", "us")]
        rows.setdefault(key, {})[var] = dict(us=b["real_time"] * scale, tflops=b.get("TFLOP/s", float("nan")),
                                             x=b.get("x_bf16", float("nan")), err=b.get("rel_err", float("nan")))
    def us(r, v):
        return f"{r[v]['us']:9.1f}" if v in r else f"{'-':>9}"
    out = [f"bench: {len(rows)} shapes; host {ctx.get('host_name', '?')}; times are medians in microseconds",
           f"{'K':>6} {'N':>6} {'M':>5} | {'bf16':>9} {'fp8':>9} | {'int4':>9} {'x_bf16':>6} {'r0':>9} {'branch':>6} "
           f"{'unfused':>9} | {'nvfp4':>9} {'x_bf16':>6} | {'err_int4':>8}"]
    branch_worst, branch_measured = 0.0, False
    for key in sorted(rows):
        r = rows[key]
        fused, r0 = r.get("svdq_fused/int4"), r.get("svdq_fused_r0/int4")
        branch = (fused["us"] / r0["us"] - 1) * 100 if fused and r0 else float("nan")
        if branch == branch:
            branch_worst, branch_measured = max(branch_worst, branch), True
        nv = r.get("svdq_fused/nvfp4")
        out.append(f"{key[0]:>6} {key[1]:>6} {key[2]:>5} | {us(r, 'cublas_bf16')} {us(r, 'cublaslt_fp8')} | "
                   f"{us(r, 'svdq_fused/int4')} {fused['x'] if fused else float('nan'):6.2f} {us(r, 'svdq_fused_r0/int4')} "
                   f"{branch:5.1f}% {us(r, 'svdq_unfused/int4')} | {us(r, 'svdq_fused/nvfp4')} "
                   f"{nv['x'] if nv else float('nan'):6.2f} | {fused['err'] if fused else float('nan'):8.4f}")
    def x(key, v="svdq_fused/int4"):
        return rows.get(key, {}).get(v, {}).get("x", float("nan"))
    def speedup(v):
        return f"{v:.2f}x" if v == v else "not measured"
    out.append("targets (issue 9):")
    out.append(f"  K=N=3072, M=4096, fused int4 >= 1.0x cuBLAS BF16: {speedup(x((3072, 3072, 4096)))}")
    small = [x((3072, 12288, m)) for m in (1, 16, 64) if (3072, 12288, m) in rows]
    out.append(f"  (3072, 12288), M <= 64, >= 2.5x: " + (", ".join(speedup(v) for v in small) or "not measured"))
    out.append("  rank-32 branch <= 15% over rank 0: " +
               (f"worst {branch_worst:.1f}%" if branch_measured else "not measured"))
    # One line per distinct error message (every shape of a machine without a GPU fails alike).
    by_msg = {}
    for name, msg in errors:
        by_msg.setdefault(msg, []).append(name)
    for msg, names in list(by_msg.items())[:20]:
        out.append(f"  ERROR in {len(names)} benchmark(s), e.g. {names[0]}: {msg}")
    return "\n".join(out)


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    d = sys.argv[1]
    print(machine(os.path.join(d, "gpus.txt")))
    print(build(os.path.join(d, "build.txt")))
    print(tests(os.path.join(d, "test_gpu.json")))
    print(bench(os.path.join(d, "bench_gpu.json")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
