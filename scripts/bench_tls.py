#!/usr/bin/env python3
"""minilb's TLS listener against HAProxy terminating TLS (`bind ... ssl crt`), with the same
throwaway certificate and the same server behind both (`make bench-tls`).

Rows: 1 persistent client (p50), 32 clients with a new connection each, so a handshake per
request (req/s and p99), and a 256 MiB file (MB/s). Each cell is the median of BENCH_ROUNDS
interleaved runs of BENCH_SECONDS s. Reuses scripts/bench.py's helpers (processes, servers,
HAProxy install, `client bench`). Knobs: BENCH_SECONDS (2), BENCH_ROUNDS (3), BENCH_FILE_MIB
(256).
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("BENCH_FILE_MIB", "256")
os.environ.setdefault("BENCH_ROUNDS", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as b  # noqa: E402  (after the knobs above, which it reads at import)

QUERY = b.QUERY


def start_minilb(cluster, certs):
    log = cluster.work / "loadbalancer-tls.log"
    proc = cluster.procs.start(
        [b.BIN / "loadbalancer", "--port", "0", "--admin-port", "0", "--tls-port", "0",
         "--tls-cert", certs / "cert.pem", "--tls-key", certs / "key.pem", "--no-plain",
         "--servers-file", cluster.servers_file],
        log, cwd=cluster.work, env=b.quiet_env(),
    )
    def tls_addr():
        m = re.search(r"listening for TLS on (\S+)", Path(log).read_text(errors="replace"))
        return m.group(1) if m else None
    return proc, b.wait_for("loadbalancer", tls_addr, proc=proc, log=log)


def run_all(procs, work, certs):
    cluster = b.Cluster(procs, work, "tls", [0])
    targets = {"minilb": start_minilb(cluster, certs)}
    if b.HAPROXY:
        targets["haproxy"] = cluster.start_haproxy("first", f"ssl crt {certs / 'cert+key.pem'}")
    tls = ["--tls", "--ca", certs / "ca.pem"]
    workloads = {
        "persistent-1": ["--clients", 1, "--duration", b.SECONDS, "--request", QUERY],
        "new-32": ["--clients", 32, "--duration", b.SECONDS, "--request", QUERY,
                   "--new-connection"],
        "file": ["--clients", 1, "--requests", 1, "--request", "file big.bin"],
    }
    results = {}
    for work_name, args in workloads.items():
        rounds = {name: [] for name in targets}
        for n in range(b.ROUNDS):
            for name, (_, addr) in targets.items():
                b.say(f"{work_name} -> {name} (round {n + 1} of {b.ROUNDS})")
                rounds[name].append(b.bench(addr, *tls, *args))
        results[work_name] = {name: b.median_run(runs) for name, runs in rounds.items()}
        for name, runs in rounds.items():
            results[work_name][name]["mb_per_s"] = sorted(r["mb_per_s"] for r in runs)[len(runs) // 2]
    return results


def report(results):
    rows = [
        ("1 persistent client: p50 ms", "persistent-1", lambda r: r["latency_ms"]["p50"], 3, False),
        ("32 clients, new TLS connection each: req/s", "new-32", lambda r: r["requests_per_s"], 0, True),
        ("32 clients, new TLS connection each: p99 ms", "new-32", lambda r: r["latency_ms"]["p99"], 2, False),
        (f"{b.FILE_MIB} MiB file: MB/s", "file", lambda r: r["mb_per_s"], 0, True),
    ]
    print(f"{'TLS workload':<46} {'minilb':>10} {'HAProxy':>10} {'ratio':>7}  target")
    for label, work, get, digits, higher in rows:
        cell = results[work]
        mine = get(cell["minilb"])
        theirs = get(cell["haproxy"]) if "haproxy" in cell else None
        ratio = mine / theirs if theirs else None
        met = None if ratio is None else (ratio >= 1.0 if higher else ratio <= 1.0)
        errors = sum(c["error_count"] for c in cell.values())
        print(f"{label:<46} {mine:>10.{digits}f} "
              f"{'-' if theirs is None else f'{theirs:.{digits}f}':>10} "
              f"{'-' if ratio is None else f'{ratio:.2f}x':>7}  "
              f"{'n/a' if met is None else ('met' if met else 'NOT MET')}"
              f"{f'  ({errors} errors)' if errors else ''}")


def main():
    if len(sys.argv) > 1:
        print(__doc__.strip())
        return 0 if sys.argv[1] in ("-h", "--help") else 2
    b.raise_open_files()
    b.say("Building (release)...")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bins", "--examples"],
                   cwd=b.ROOT, check=True)
    b.HAPROXY, why = b.find_haproxy()
    if why:
        b.say(f"HAProxy column left empty: {why}")
    procs = b.Procs()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    work = Path(tempfile.mkdtemp(prefix="minilb-bench-tls-"))
    try:
        b.say(f"Writing a {b.FILE_MIB} MiB file and certificates in {work}...")
        b.make_data(work)
        certs = work / "certs"
        subprocess.run([b.BIN / "examples" / "make-certs", certs], check=True,
                       stdout=subprocess.DEVNULL)
        results = run_all(procs, work, certs)
    except KeyboardInterrupt:
        b.say("interrupted")
        return 130
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        b.say(f"bench-tls: {e}")
        return 1
    finally:
        procs.stop_all()
    print(f"medians of {b.ROUNDS} interleaved runs of {b.SECONDS:g} s; one server (0 s) "
          f"behind both; ratio is minilb over HAProxy")
    report(results)
    subprocess.run(["rm", "-rf", str(work)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
