#!/usr/bin/env python3
"""Per-request cost of the balancer, side by side with HAProxy on the same servers: system
calls (by name for the ones the findings in docs/BENCHMARKS.md discuss), CPU (task-clock) and
context switches, counted by `perf stat -p` over one `client bench` run after a warm-up.

Usage: scripts/per-request.py WORKERS CLIENTS REQUESTS [new]   (`new`: a connection per request)
Environment: MINILB_BASELINE, a folder with another build's `loadbalancer` (e.g. the code
before a change), measured alternately with this tree's release build, twice each.
"""
import os, shutil, signal, subprocess, sys, tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as b

EVENTS = ",".join(["raw_syscalls:sys_enter", "task-clock", "context-switches"] + [
    f"syscalls:sys_enter_{s}" for s in ("setsockopt", "recvfrom", "fcntl", "close", "clone3", "futex")])


def count(pid, addr, clients, requests, mode):
    b.bench(addr, "--clients", clients, "--requests", max(2000, requests // 10), *mode)
    out = Path(tempfile.mktemp())
    perf = subprocess.Popen(["perf", "stat", "-x,", "-e", EVENTS, "-p", str(pid), "-o", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    b.wait_for("perf", lambda: b.perf_attached(perf.pid), timeout=5)
    r = b.bench(addr, "--clients", clients, "--requests", requests, *mode)
    perf.send_signal(signal.SIGINT)
    perf.wait()
    n, per = r["requests"], {}
    text = out.read_text()
    out.unlink()
    for line in text.splitlines():
        f = line.split(",")
        if len(f) > 2 and f[0].replace(".", "").isdigit():
            per[f[2].split(":")[-1].replace("sys_enter_", "")] = float(f[0]) / n
    per["cpu_us"] = per.pop("task-clock", 0) * 1000
    lat = r["latency_ms"]
    return "req/s %.0f  p50 %.3f ms  p99 %.3f ms  errors %d | %s" % (
        r["requests_per_s"], lat["p50"], lat["p99"], r["error_count"],
        "  ".join(f"{k} {v:.2f}" for k, v in per.items()))


def main():
    workers, clients, requests = map(int, sys.argv[1:4])
    mode = ["--new-connection"] if sys.argv[4:] == ["new"] else []
    b.HAPROXY = b.find_haproxy()[0]
    builds = [("minilb", b.BIN)]
    if os.environ.get("MINILB_BASELINE"):
        builds = [("baseline", Path(os.environ["MINILB_BASELINE"]).resolve()), ("minilb", b.BIN)] * 2
    procs = b.Procs()
    work = Path(tempfile.mkdtemp(prefix="minilb-per-request-"))
    try:
        b.ONLY = set()
        b.make_data(work)
        cluster = b.Cluster(procs, work, "p", [0, 0, 0], workers)
        release = b.BIN
        for name, folder in builds:
            b.BIN = folder
            proc, addr = cluster.start_minilb()
            b.BIN = release
            print(f"{name:10} {count(proc.pid, addr, clients, requests, mode)}", flush=True)
            procs.stop(proc)
        if b.HAPROXY:
            balance = "first" if workers == 1 or mode else "roundrobin"
            proc, addr = cluster.start_haproxy(balance)
            print(f"{'haproxy':10} {count(proc.pid, addr, clients, requests, mode)}", flush=True)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
