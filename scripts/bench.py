#!/usr/bin/env python3
"""`make bench`: minilb side by side with one server reached directly and with HAProxy.

Builds in release, starts everything on 127.0.0.1 (ports chosen by the OS), runs each workload
of issue 6 through `client bench --json` (the Rust load generator), prints one table with
ratios and says, for each target, met or not met. Every process it starts is stopped at the end,
on Ctrl-C too; nothing is written outside a temp folder except target/bench/results.json.

Environment: BENCH_SECONDS (default 2) is the length of each small-query run and BENCH_ROUNDS
(default 5) how many times each runs (medians are kept); BENCH_FILE_MIB
(default 1024) the size of the big file; BENCH_CONNECTIONS (default 10000) workload 3's count.
"""

import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release"
SECONDS = float(os.environ.get("BENCH_SECONDS", "2"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
FILE_ROUNDS = 3  # rounds of the big-file workload (3 GiB each)
FILE_MIB = int(os.environ.get("BENCH_FILE_MIB", "1024"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "10000"))
QUALITY_SECONDS = 10.0
QUALITY_TIMES = [0.01, 0.02, 0.04]  # workload 4's servers, fastest first
IDEAL = sum(1 / t for t in QUALITY_TIMES)  # 175 requests/s
QUERY = "SELECT Name FROM COLORS LIMIT 1"
START_TIMEOUT = 60.0  # seconds a process may take to start listening
RUN_TIMEOUT = 600.0  # seconds one `client bench` may take before it is stopped


def say(text):
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Processes: every one started here is recorded and stopped at the end.


class Procs:
    """The processes this bench started; `stop_all` ends them (SIGTERM, then SIGKILL)."""

    def __init__(self):
        self.running = []

    def start(self, args, log, **kw):
        out = open(log, "wb")
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, **kw
        )
        out.close()
        self.running.append(proc)
        return proc

    def stop(self, proc):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self):
        for proc in list(reversed(self.running)):
            self.stop(proc)


def wait_for(what, check, timeout=START_TIMEOUT, proc=None, log=None):
    """Polls `check()` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    text = Path(log).read_text(errors="replace")[-3000:] if log else ""
    raise RuntimeError(f"{what} did not start; its log ends with:\n{text}")


def listening_addr(log):
    """The `... listening on ADDR` line our programs print once ready, or None."""
    m = re.search(r"listening on (\S+)", Path(log).read_text(errors="replace"))
    return m.group(1) if m else None


def free_port():
    """A port free right now (for HAProxy, which cannot report a port 0 choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(addr):
    host, port = addr.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Memory and threads of a running process, from /proc.


def proc_status(pid):
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    except OSError:
        pass
    return fields


def kib(value):
    return int(value.split()[0]) if value else 0


class Watch:
    """Peak RSS (VmHWM, reset at the start) and peak thread count of one process during a run."""

    def __init__(self, pid):
        self.pid = pid
        self.peak_threads = 0
        self.peak_rss_kib = 0
        self.done = threading.Event()
        try:  # "5" resets the peak RSS (VmHWM), so the peak is this workload's only.
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self):
        while True:
            status = proc_status(self.pid)
            self.peak_threads = max(self.peak_threads, int(status.get("Threads", "0")))
            self.peak_rss_kib = max(self.peak_rss_kib, kib(status.get("VmRSS")))
            if self.done.wait(0.02):
                return

    def finish(self):
        self.done.set()
        self.thread.join()
        status = proc_status(self.pid)
        self.peak_rss_kib = max(self.peak_rss_kib, kib(status.get("VmHWM")))
        return {"rss_mib": self.peak_rss_kib / 1024, "threads": self.peak_threads}


# ---------------------------------------------------------------------------------------------
# The systems under test.


class Cluster:
    """Servers of the given processing times, with their own servers file."""

    def __init__(self, procs, work, name, times):
        self.procs, self.work, self.name = procs, work, name
        self.servers_file = work / f"servers-{name}.json"
        self.servers_file.write_text("[]\n")
        self.addrs = []
        for i, t in enumerate(times, start=1):
            log = work / f"server-{name}-{i}.log"
            proc = procs.start(
                [BIN / "server", str(i), "0", str(t), "--servers-file", self.servers_file,
                 "--db", "database.json", "--files", "files"],
                log, cwd=work, env=quiet_env(),
            )
            self.addrs.append(wait_for(f"server {i}", lambda: listening_addr(log), proc=proc, log=log))

    def start_minilb(self):
        log = self.work / f"loadbalancer-{self.name}.log"
        proc = self.procs.start(
            [BIN / "loadbalancer", "--port", "0", "--admin-port", "0",
             "--servers-file", self.servers_file],
            log, cwd=self.work, env=quiet_env(),
        )
        addr = wait_for("loadbalancer", lambda: listening_addr(log), proc=proc, log=log)
        return proc, addr

    def start_haproxy(self, balance):
        """HAProxy doing minilb's job: `first` with maxconn 1 per server, fastest listed first;
        or `roundrobin` with no maxconn. Its config lives in the temp folder; the system
        service is never involved."""
        port = free_port()
        servers = "\n".join(
            f"    server s{i} {addr}" + (" maxconn 1" if balance == "first" else "")
            for i, addr in enumerate(self.addrs, start=1)
        )
        config = self.work / f"haproxy-{self.name}-{balance}.cfg"
        config.write_text(f"""global
    nbthread 1
    maxconn 5000

defaults
    mode tcp
    maxconn 5000
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout queue 60s

frontend clients
    bind 127.0.0.1:{port}
    default_backend servers

backend servers
    balance {balance}
{servers}
""")
        log = self.work / f"haproxy-{self.name}-{balance}.log"
        proc = self.procs.start([HAPROXY, "-db", "-f", config], log, cwd=self.work)
        addr = f"127.0.0.1:{port}"
        wait_for("haproxy", lambda: accepts(addr), proc=proc, log=log)
        return proc, addr


def quiet_env():
    # Warnings only: per-request logging is a feature for students, not part of the hot path
    # being compared (HAProxy here logs nothing either).
    return dict(os.environ, RUST_LOG="warn")


def bench(addr, *args):
    """Runs `client bench --json` against `addr` and returns its JSON."""
    cmd = [BIN / "client", "bench", "--json", "--lb", addr, *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"client bench failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout)


def median_run(runs):
    """One run's numbers, each the median over `runs` (requests/s, every latency, fairness), so
    one disturbed round on this shared machine moves none of them."""
    def median(values):
        return sorted(values)[len(values) // 2]

    result = dict(sorted(runs, key=lambda r: r["requests_per_s"])[len(runs) // 2])
    result["latency_ms"] = {k: median([r["latency_ms"][k] for r in runs])
                            for k in runs[0]["latency_ms"]}
    result["fairness"] = median([r["fairness"] for r in runs])
    # Errors are never a median: every failed request of every round counts.
    result["error_count"] = sum(r["error_count"] for r in runs)
    result["errors"] = {}
    for r in runs:
        for code, n in r["errors"].items():
            result["errors"][code] = result["errors"].get(code, 0) + n
    result["rounds_requests_per_s"] = [r["requests_per_s"] for r in runs]
    return result


def measured(proc, addr, *args):
    """A bench run while watching `proc`'s memory and threads."""
    watch = Watch(proc.pid) if proc is not None else None
    result = bench(addr, *args)
    if watch:
        result["process"] = watch.finish()
    return result


# ---------------------------------------------------------------------------------------------
# Setup: HAProxy, the data folder, the open-files limit.


def find_haproxy():
    """HAProxy's path, installing Debian's package when missing; None and a reason otherwise."""
    path = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if path:
        return path, None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "haproxy is not installed and this is not root with apt-get: apt-get install haproxy"
    say("Installing HAProxy (apt-get install -y haproxy; its system service is kept stopped)...")
    # Debian starts a package's service on install unless policy-rc.d says no (exit 101).
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for attempt in ("install", "update", "install"):
            args = ["apt-get", "-y", "-q", "install", "haproxy"] if attempt == "install" else ["apt-get", "-q", "update"]
            ok = subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                timeout=900).returncode == 0
            if ok and attempt == "install":
                break
    finally:
        if ours:
            policy.unlink()
    path = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    return (path, None) if path else (None, "apt-get install haproxy failed")


def make_data(work):
    (work / "files").mkdir()
    shutil.copy(ROOT / "data" / "colors.csv", work / "colors.csv")
    for f in (ROOT / "data" / "files").iterdir():
        shutil.copy(f, work / "files" / f.name)
    (work / "database.json").write_text('{"path": "colors.db", "writable": false}\n')
    # Real bytes, not a sparse file: 1 MiB of random data repeated.
    block = os.urandom(1 << 20)
    with open(work / "files" / "big.bin", "wb") as f:
        for _ in range(FILE_MIB):
            f.write(block)


def raise_open_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "?")
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    haproxy = "-"
    if HAPROXY:
        out = subprocess.run([HAPROXY, "-v"], capture_output=True, text=True).stdout
        haproxy = out.splitlines()[0] if out else "?"
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "rustc": rustc,
        "haproxy": haproxy, "load_before": os.getloadavg()[0],
    }


# ---------------------------------------------------------------------------------------------
# The workloads.

HAPROXY = None


def run_all(procs, work):
    results = {"small": {}, "file": {}, "many": {}, "quality": {}}
    one = Cluster(procs, work, "one", [0])
    direct = one.addrs[0]
    lb, lb_addr = one.start_minilb()
    targets = {"direct": (None, direct), "minilb": (lb, lb_addr)}
    if HAPROXY:
        targets["haproxy-first"] = one.start_haproxy("first")
        targets["haproxy-rr"] = one.start_haproxy("roundrobin")

    # 1. Small query: per-connection and persistent, 1 and 32 clients. The targets take turns
    # within each round, so a load swing on this shared machine hits every column alike; each
    # cell keeps, per target, the median of each number over the rounds.
    for mode in ("new", "persistent"):
        for clients in (1, 32):
            cell = f"{mode}-{clients}"
            rounds = {name: [] for name in targets if not (name == "haproxy-rr" and mode == "new")}
            for n in range(ROUNDS):
                for name in rounds:
                    say(f"1. small query, {mode} connection, {clients} clients -> {name} "
                        f"(round {n + 1} of {ROUNDS})")
                    args = ["--clients", clients, "--duration", SECONDS, "--request", QUERY]
                    if mode == "new":
                        args.append("--new-connection")
                    rounds[name].append(bench(targets[name][1], *args))
            results["small"][cell] = {name: median_run(runs) for name, runs in rounds.items()}

    # 2. The big file, three times, one client; rounds interleaved as above, median MB/s kept,
    # with the highest peak RSS of all rounds.
    names = [name for name in targets if name != "haproxy-rr"]
    rounds = {name: [] for name in names}
    for n in range(FILE_ROUNDS):
        for name in names:
            proc, addr = targets[name]
            say(f"2. {FILE_MIB} MiB file x3 -> {name} (round {n + 1} of {FILE_ROUNDS})")
            rounds[name].append(measured(proc, addr, "--clients", 1, "--requests", 3,
                                         "--request", "file big.bin"))
    for name, runs in rounds.items():
        median = dict(sorted(runs, key=lambda r: r["mb_per_s"])[len(runs) // 2])
        median["rounds_mb_per_s"] = [r["mb_per_s"] for r in runs]
        median["error_count"] = sum(r["error_count"] for r in runs)
        if targets[name][0] is not None:
            median["process"] = {"rss_mib": max(r["process"]["rss_mib"] for r in runs)}
        results["file"][name] = median

    # 3. Many connections open at once, then one request each.
    for name, (proc, addr) in targets.items():
        if name == "haproxy-rr":
            continue
        say(f"3. {CONNECTIONS} connections at once, one request each -> {name}")
        results["many"][name] = measured(proc, addr, "--clients", CONNECTIONS, "--requests",
                                         CONNECTIONS, "--connect-first", "--request", QUERY)
    for name, (proc, _) in targets.items():
        if proc is not None:
            procs.stop(proc)

    # 4. Balancing quality: three unequal servers, 32 persistent clients.
    three = Cluster(procs, work, "three", QUALITY_TIMES)
    quality = {"minilb": three.start_minilb()}
    if HAPROXY:
        quality["haproxy-first"] = three.start_haproxy("first")
        quality["haproxy-rr"] = three.start_haproxy("roundrobin")
    for name, (proc, addr) in quality.items():
        say(f"4. balancing quality, 32 persistent clients for {QUALITY_SECONDS:.0f} s -> {name}")
        results["quality"][name] = bench(addr, "--clients", 32, "--duration", QUALITY_SECONDS,
                                         "--request", QUERY)
    say("4. the servers' own ceiling: each driven directly by one client, all at once")
    results["quality"]["direct"] = servers_ceiling(three.addrs)
    return results


def servers_ceiling(addrs):
    """What the servers can do at most: each one kept busy by its own client, all at the same
    time. Their processing time is a sleep, and a sleep overshoots; this shows by how much."""
    cmds = [[BIN / "client", "bench", "--json", "--lb", addr, "--clients", "1", "--duration",
             str(QUALITY_SECONDS), "--request", QUERY] for addr in addrs]
    runs = [subprocess.Popen(c, stdout=subprocess.PIPE, text=True) for c in cmds]
    outs = [json.loads(r.communicate(timeout=RUN_TIMEOUT)[0]) for r in runs]
    return {
        "requests_per_s": sum(o["requests_per_s"] for o in outs),
        "fairness": None,
        "latency_ms": {"p99": max(o["latency_ms"]["p99"] for o in outs)},
        "per_server": [o["requests_per_s"] for o in outs],
    }


# ---------------------------------------------------------------------------------------------
# The table and the targets.

COLUMNS = ["direct", "minilb", "haproxy-first", "haproxy-rr"]
HEADS = ["direct", "minilb", "HAProxy first", "HAProxy rr", "minilb/HAProxy", "minilb/direct"]


def fmt(value, digits):
    return "-" if value is None else f"{value:,.{digits}f}"


def table(results):
    rows = []

    def row(label, cells, key, digits, haproxy="haproxy-first"):
        values = {c: (key(cells[c]) if c in cells else None) for c in COLUMNS}
        m, h, d = values["minilb"], values.get(haproxy), values["direct"]
        ratio_h = m / h if m is not None and h else None
        ratio_d = m / d if m is not None and d else None
        rows.append([label] + [fmt(values[c], digits) for c in COLUMNS]
                    + [fmt(ratio_h, 2), fmt(ratio_d, 2)])

    rps = lambda r: r["requests_per_s"]
    p50 = lambda r: r["latency_ms"]["p50"]
    p99 = lambda r: r["latency_ms"]["p99"]
    for cell, cells in results["small"].items():
        mode, clients = cell.split("-")
        label = f"1 query, {'new conn' if mode == 'new' else 'persistent'}, {clients} cl"
        compare = "haproxy-first" if mode == "new" else "haproxy-rr"
        row(f"{label}: req/s", cells, rps, 0, compare)
        row(f"{label}: p50 ms", cells, p50, 3, compare)
        row(f"{label}: p99 ms", cells, p99, 3, compare)
        row(f"{label}: errors", cells, lambda r: r["error_count"], 0, compare)
        if clients != "1":
            row(f"{label}: fairness", cells, lambda r: r["fairness"], 3, compare)
    f = results["file"]
    row(f"2 file {FILE_MIB} MiB x3: MB/s", f, lambda r: r["mb_per_s"], 0)
    row("2 file: errors", f, lambda r: r["error_count"], 0)
    row("2 file: balancer peak RSS MiB", f, lambda r: r.get("process", {}).get("rss_mib"), 1)
    m = results["many"]
    row(f"3 {CONNECTIONS} conns: answered OK", m, lambda r: r["ok"], 0)
    row(f"3 {CONNECTIONS} conns: errors", m, lambda r: r["error_count"], 0)
    row(f"3 {CONNECTIONS} conns: connect errors", m, lambda r: r["errors"].get("connect", 0), 0)
    row(f"3 {CONNECTIONS} conns: p99 ms", m, p99, 1)
    row(f"3 {CONNECTIONS} conns: peak RSS MiB", m, lambda r: r.get("process", {}).get("rss_mib"), 1)
    row(f"3 {CONNECTIONS} conns: peak threads", m, lambda r: r.get("process", {}).get("threads"), 0)
    q = results["quality"]
    row("4 quality: req/s", q, rps, 1)
    row(f"4 quality: achieved/ideal({IDEAL:.0f})", q, lambda r: r["requests_per_s"] / IDEAL, 3)
    row("4 quality: Jain's fairness", q, lambda r: r["fairness"], 3)
    row("4 quality: p99 ms", q, p99, 1)

    widths = [max(len(r[i]) for r in rows + [["workload"] + HEADS]) for i in range(len(HEADS) + 1)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(["workload"] + HEADS, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def targets(results):
    """Each target of issue 6: (label, met: bool or None when it cannot be judged, evidence)."""
    out = []
    small = results["small"]

    def compare(cell):
        return small[cell].get("haproxy-first" if cell.startswith("new") else "haproxy-rr")

    cells = [c for c in small if compare(c)]
    if cells:
        worst = min(cells, key=lambda c: small[c]["minilb"]["requests_per_s"] / compare(c)["requests_per_s"])
        r = small[worst]["minilb"]["requests_per_s"] / compare(worst)["requests_per_s"]
        out.append(("1 minilb req/s >= HAProxy in every cell", r >= 1, f"worst cell {worst}: {r:.2f}x"))
        worst = max(cells, key=lambda c: small[c]["minilb"]["latency_ms"]["p99"] / compare(c)["latency_ms"]["p99"])
        r = small[worst]["minilb"]["latency_ms"]["p99"] / compare(worst)["latency_ms"]["p99"]
        out.append(("1 minilb p99 <= HAProxy in every cell", r <= 1, f"worst cell {worst}: {r:.2f}x"))
    else:
        out.append(("1 minilb vs HAProxy", None, "no HAProxy"))
    ratios = {c: small[c]["minilb"]["latency_ms"]["p50"] / small[c]["direct"]["latency_ms"]["p50"]
              for c in ("new-1", "persistent-1")}
    out.append(("1 p50 at 1 client <= 2.2x direct", all(r <= 2.2 for r in ratios.values()),
                ", ".join(f"{c}: {r:.2f}x" for c, r in ratios.items())))

    f = results["file"]
    if "haproxy-first" in f:
        r = f["minilb"]["mb_per_s"] / f["haproxy-first"]["mb_per_s"]
        out.append(("2 MB/s >= 0.9x HAProxy", r >= 0.9, f"{r:.2f}x"))
    else:
        out.append(("2 MB/s >= 0.9x HAProxy", None, "no HAProxy"))
    rss = f["minilb"]["process"]["rss_mib"]
    out.append(("2 balancer RSS < 32 MiB while streaming", rss < 32, f"{rss:.1f} MiB"))

    m = results["many"]["minilb"]
    out.append((f"3 all {CONNECTIONS} answered, no error", m["ok"] == CONNECTIONS and m["error_count"] == 0,
                f"{m['ok']} OK, errors {m['errors'] or 'none'}"))
    rss = m["process"]["rss_mib"]
    out.append(("3 balancer RSS <= 200 MiB", rss <= 200, f"{rss:.1f} MiB, {m['process']['threads']} threads"))

    q = results["quality"]
    r = q["minilb"]["requests_per_s"] / IDEAL
    others = ", ".join(f"{n} {q[n]['requests_per_s'] / IDEAL:.3f}" for n in q if n != "minilb")
    others = others.replace("direct", "servers' ceiling")
    out.append(("4 >= 0.97 of the ideal", r >= 0.97, f"{r:.3f}" + (f" ({others})" if others else "")))
    fair = q["minilb"]["fairness"]
    others = ", ".join(f"{n} {q[n]['fairness']:.3f}" for n in q if n not in ("minilb", "direct"))
    out.append(("4 Jain's fairness >= 0.9", fair >= 0.9, f"{fair:.3f}" + (f" ({others})" if others else "")))
    return out


def main():
    global HAPROXY
    if len(sys.argv) > 1:  # no options: the environment variables above are the knobs
        print(__doc__.strip())
        return 0 if sys.argv[1] in ("-h", "--help") else 2
    limit = raise_open_files()
    say("Building (release)...")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    HAPROXY, why = find_haproxy()
    if why:
        say(f"HAProxy column left empty: {why}")
    info = machine()
    say(f"open-files limit {limit}; load average {info['load_before']:.2f}")

    procs = Procs()
    # SIGTERM and SIGHUP end the run like Ctrl-C, through the `finally` below.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    work = Path(tempfile.mkdtemp(prefix="minilb-bench-"))
    started = time.monotonic()
    try:
        say(f"Writing a {FILE_MIB} MiB file in {work}...")
        make_data(work)
        results = run_all(procs, work)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        say(f"bench: {e}")
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    info["load_after"] = os.getloadavg()[0]
    info["minutes"] = (time.monotonic() - started) / 60
    out = ROOT / "target" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"machine": info, "results": results}, indent=1))

    print(f"minilb bench: {info['nproc']} cores ({info['cpu']}), Linux {info['kernel']}, "
          f"{info['rustc']}, {info['haproxy']}")
    print(f"load average {info['load_before']:.2f} before, {info['load_after']:.2f} after; "
          f"small queries: medians of {ROUNDS} interleaved runs of {SECONDS:g} s (errors: all runs); ratios are minilb over HAProxy (first, maxconn 1 "
          f"per server; roundrobin for persistent connections) and over direct")
    print()
    print(table(results))
    print("(workload 4's direct column: the three servers each kept busy by its own client at "
          "once, their ceiling)")
    print()
    print("targets (issue 6)")
    for label, met, evidence in targets(results):
        verdict = "n/a" if met is None else ("met" if met else "NOT MET")
        print(f"  {label:<42} {verdict:<8} {evidence}")
    print(f"\nraw numbers: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
