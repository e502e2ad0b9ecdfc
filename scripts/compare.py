#!/usr/bin/env python3
"""make compare: the same load against each balancing policy, on one cluster of unequal servers,
printed side by side, so a student sees what ordering by power buys and what it costs.

The cluster: servers of 10, 20 and 40 ms, and a fourth that takes 80 ms but declares 10 ms (a
wrong declaration, which only the `measured` policy sees through). Fewer clients than servers,
so that which idle server a policy prefers decides the result. Then the same on servers with
`--workers` (issue 15), with as many clients per server as workers, when `server` has the flag.
Load generation is `client bench` (Rust); this script only starts processes and prints the tables.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BIN, ROOT, Procs, bench, has_workers, listening_addr, quiet_env, say, wait_for  # noqa: E402

POLICIES = ["power", "measured", "round-robin", "least-connections", "two-choices"]
# (id, real processing time, declared processing time)
SERVERS = [(1, 0.01, None), (2, 0.02, None), (3, 0.04, None), (4, 0.08, 0.01)]
CLIENTS = int(os.environ.get("COMPARE_CLIENTS", "3"))
SECONDS = float(os.environ.get("COMPARE_SECONDS", "5"))
WORKERS = int(os.environ.get("COMPARE_WORKERS", "4"))  # per server, in the second table
QUERY = "SELECT Name FROM COLORS LIMIT 1"


def make_data(work):
    import shutil
    (work / "files").mkdir()
    shutil.copy(ROOT / "data" / "colors.csv", work / "colors.csv")
    (work / "database.json").write_text('{"path": "colors.db", "writable": false}\n')


def start_cluster(procs, work, workers):
    servers_file = work / f"servers-{workers}.json"
    servers_file.write_text("[]\n")
    for sid, real, declared in SERVERS:
        log = work / f"server-{sid}-{workers}.log"
        args = [BIN / "server", str(sid), "0", str(real), "--servers-file", servers_file,
                "--db", "database.json", "--files", "files"]
        if workers > 1:
            args += ["--workers", str(workers)]
        if declared is not None:
            args += ["--declared-time", str(declared)]
        proc = procs.start(args, log, cwd=work, env=quiet_env())
        wait_for(f"server {sid}", lambda: listening_addr(log), proc=proc, log=log)
    return servers_file


def run_policy(procs, work, servers_file, policy, clients):
    log = work / f"loadbalancer-{policy}-{servers_file.stem}.log"
    proc = procs.start(
        [BIN / "loadbalancer", "--port", "0", "--admin-port", "0", "--servers-file",
         servers_file, "--policy", policy],
        log, cwd=work, env=quiet_env(),
    )
    addr = wait_for("loadbalancer", lambda: listening_addr(log), proc=proc, log=log)
    result = bench(addr, "--clients", clients, "--duration", SECONDS, "--request", QUERY)
    procs.stop(proc)
    return result


def table(results):
    heads = ["policy", "req/s", "p50 ms", "p99 ms", "errors"] + [
        f"s{sid} {real * 1000:.0f} ms" + ("*" if declared else "") for sid, real, declared in SERVERS
    ]
    rows = []
    for policy, r in results.items():
        total = max(1, r["ok"])
        shares = [f"{100 * r['servers'].get(str(sid), 0) / total:.0f}%" for sid, _, _ in SERVERS]
        rows.append([policy, f"{r['requests_per_s']:.1f}", f"{r['latency_ms']['p50']:.1f}",
                     f"{r['latency_ms']['p99']:.1f}", str(r["error_count"])] + shares)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(heads)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(heads), line(["-" * w for w in widths])] + [line(row) for row in rows]
    return "\n".join(out)


def main():
    if len(sys.argv) > 1:
        print(__doc__.strip())
        print("\nUsage: make compare  (COMPARE_CLIENTS, COMPARE_SECONDS, COMPARE_WORKERS in the environment)")
        return 0
    import subprocess
    import tempfile
    say("compare: building (release)...")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    sections = [1] + ([WORKERS] if WORKERS > 1 and has_workers() else [])
    procs = Procs()
    results = {}
    try:
        with tempfile.TemporaryDirectory(prefix="minilb-compare-") as tmp:
            work = Path(tmp)
            make_data(work)
            for workers in sections:
                servers_file = start_cluster(procs, work, workers)
                clients = CLIENTS * workers
                results[workers] = {}
                for policy in POLICIES:
                    say(f"compare: {policy}: {clients} clients on persistent connections for "
                        f"{SECONDS:g} s, servers of {workers} worker(s)")
                    results[workers][policy] = run_policy(procs, work, servers_file, policy, clients)
                procs.stop_all()
    finally:
        procs.stop_all()
    for workers, by_policy in results.items():
        clients = CLIENTS * workers
        # Best possible: the fastest servers' workers always busy, one client each.
        ideal, left = 0.0, clients
        for real in sorted(real for _, real, _ in SERVERS):
            ideal += min(workers, left) / real
            left -= min(workers, left)
        print(f"{clients} clients, one request at a time each, {SECONDS:g} s per policy; servers of "
              f"{workers} worker(s): "
              + ", ".join(f"{sid}: {real * 1000:.0f} ms" + (f" (declares {d * 1000:.0f} ms)" if d else "")
                          for sid, real, d in SERVERS))
        print(f"best possible: {ideal:.0f} req/s (the fastest servers' workers always busy)\n")
        print(table(by_policy))
        print()
    if len(sections) == 1:
        print("servers with workers: not shown, this `server` has no --workers flag")
    print("* declares a processing time it does not keep; only `measured` notices.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
