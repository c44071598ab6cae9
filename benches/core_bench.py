#!/usr/bin/env python3
"""Runner-core benchmark (issue 2): no-op run of a 50-stage pipeline whose first stage
reads a 1 GiB input, and first-time hashing throughput of that file, beside DVC and b3sum
in the same run.

    python3 benches/core_bench.py [--size-mib 1024] [--stages 50] [--repeats 10]

Needs: a release build (cargo build --release), `b3sum` on PATH (cargo install b3sum) and
`dvc` on PATH (pip install dvc); missing peers are reported as skipped.
Prints a Markdown table.
"""
import argparse, os, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, "target", "release", "runner")


def timed(cmd, cwd, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def manifest(stages):
    out = ['[pipeline]\nname = "bench"\n',
           '[stages.s0]\nkind = "shell"\ncmd = "head -c 64 ${inputs.big} > o"\n'
           'inputs = { big = "big.bin" }\nouts = ["o"]\n']
    for i in range(1, stages):
        out.append(f'[stages.s{i}]\nkind = "shell"\ncmd = "cat ${{inputs.prev}} > o"\n'
                   f'inputs.prev = {{ stage = "s{i-1}", output = "o" }}\nouts = ["o"]\n')
    return "\n".join(out)


def dvc_yaml(stages):
    out = ["stages:",
           "  s0:\n    cmd: head -c 64 big.bin > o0\n    deps: [big.bin]\n    outs: [o0]"]
    for i in range(1, stages):
        out.append(f"  s{i}:\n    cmd: cat o{i-1} > o{i}\n    deps: [o{i-1}]\n    outs: [o{i}]")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--stages", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="adjq-bench-")
    big = os.path.join(work, "big.bin")
    with open(big, "wb") as f:
        chunk = os.urandom(1 << 20)
        for i in range(a.size_mib):
            f.write(chunk[i % 7:] + chunk[: i % 7])
    rows = []
    threads = os.cpu_count()

    # Hashing: file in page cache for all (one warm-up read each).
    subprocess.run(["cat", big], stdout=subprocess.DEVNULL, check=True)
    gib = a.size_mib / 1024
    t_ours = timed([RUNNER, "hash", big], work, 3)
    rows.append(("hash 1 GiB (page-cached), runner hash", t_ours, f"{gib / t_ours:.2f} GiB/s"))
    if shutil.which("b3sum"):
        t_b3 = timed(["b3sum", big], work, 3)
        rows.append((f"hash, b3sum ({threads} threads)", t_b3, f"{gib / t_b3:.2f} GiB/s"))
        rows.append(("hash throughput ratio runner/b3sum", None, f"{t_b3 / t_ours:.2f}x"))
    else:
        rows.append(("hash, b3sum", None, "skipped: b3sum not on PATH"))

    # runner: first run (hashes 1 GiB, runs 50 stages), then no-op runs.
    with open(os.path.join(work, "m.toml"), "w") as f:
        f.write(manifest(a.stages))
    t_first = timed([RUNNER, "run", "m.toml", "-j", "2"], work, 1)
    t_noop = timed([RUNNER, "run", "m.toml"], work, a.repeats)
    rows.append((f"runner: first run, {a.stages} stages + hashing", t_first, ""))
    rows.append((f"runner: no-op run, {a.stages} stages (median of {a.repeats})", t_noop, ""))

    if shutil.which("dvc"):
        dwork = os.path.join(work, "dvc")
        os.makedirs(dwork)
        os.link(big, os.path.join(dwork, "big.bin"))
        subprocess.run(["git", "init", "-q"], cwd=dwork, check=True)
        subprocess.run(["dvc", "init", "-q"], cwd=dwork, check=True)
        with open(os.path.join(dwork, "dvc.yaml"), "w") as f:
            f.write(dvc_yaml(a.stages))
        t_dfirst = timed(["dvc", "repro", "-q"], dwork, 1)
        t_dnoop = timed(["dvc", "repro", "-q"], dwork, max(3, a.repeats // 2))
        rows.append((f"dvc: first repro, {a.stages} stages", t_dfirst, ""))
        rows.append((f"dvc: no-op repro, {a.stages} stages (median)", t_dnoop, ""))
        rows.append(("no-op speedup runner vs dvc", None, f"{t_dnoop / t_noop:.1f}x"))
    else:
        rows.append(("dvc", None, "skipped: dvc not on PATH"))

    print(f"| measurement | seconds | note |\n|---|---|---|")
    for name, secs, note in rows:
        print(f"| {name} | {'' if secs is None else f'{secs:.3f}'} | {note} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
