#!/usr/bin/env python3
"""`make bench`: minilb side by side with one server reached directly and with HAProxy.

Builds in release, starts everything on 127.0.0.1 (ports chosen by the OS), runs each workload
of issue 6 through `client bench --json` (the Rust load generator), prints one table with
ratios and says, for each target, met or not met. Every process it starts is stopped at the end,
on Ctrl-C too; nothing is written outside a temp folder except target/bench/results.json.

Environment: BENCH_SECONDS (default 2) is the length of each small-query run and BENCH_ROUNDS
(default 5) how many times each runs (medians are kept); BENCH_FILE_MIB
(default 1024) the size of the big file; BENCH_CONNECTIONS (default 10000) workload 3's count;
BENCH_ONLY (default all) a comma-separated list of the workloads to run: small, file, many,
quality (issue 6), w8, unequal, seed (issue 15; `workers` names all three).
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
# Issue 15's workloads: 3 servers x 8 workers of 0 ms, and the quality servers with 4 workers each.
W8_WORKERS = 8
UNEQUAL_WORKERS = 4
UNEQUAL_CLIENTS = 48
UNEQUAL_IDEAL = UNEQUAL_WORKERS * IDEAL  # 700 requests/s
GROUPS = {"small", "file", "many", "quality", "w8", "unequal", "seed"}
ONLY = set(os.environ.get("BENCH_ONLY", ",".join(GROUPS)).replace("workers", "w8,unequal,seed").split(","))


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


class Cost:
    """CPU time and context switches of one process (all its threads, also those started and
    ended meanwhile) during a run: `perf stat` attached to it, or its /proc CPU times alone
    when perf cannot run here."""

    def __init__(self, pid, work):
        self.pid, self.out = pid, work / f"perf-{pid}.csv"
        self.cpu_before = cpu_seconds(pid)
        self.perf = None
        if shutil.which("perf"):
            self.perf = subprocess.Popen(
                ["perf", "stat", "-x,", "-e", "task-clock,context-switches", "-p", str(pid),
                 "-o", self.out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:  # counting starts once perf holds its event descriptors
                wait_for("perf stat", lambda: perf_attached(self.perf.pid), timeout=5, proc=self.perf)
            except RuntimeError:
                self.stop_perf()

    def stop_perf(self):
        if self.perf and self.perf.poll() is None:
            self.perf.send_signal(signal.SIGINT)
            try:
                self.perf.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.perf.kill()
                self.perf.wait(timeout=15)

    def finish(self, requests):
        cpu = cpu_seconds(self.pid) - self.cpu_before
        self.stop_perf()
        counts = {}
        if self.perf and self.out.exists():
            for line in self.out.read_text().splitlines():
                fields = line.split(",")
                if len(fields) > 2 and fields[0].replace(".", "").isdigit():
                    counts[fields[2]] = float(fields[0])
        if "task-clock" in counts:
            cpu = counts["task-clock"] / 1000  # msec -> s, finer than /proc's 10 ms ticks
        n = max(1, requests)
        switches = counts.get("context-switches")
        return {"cpu_us_per_req": cpu * 1e6 / n,
                "switches_per_req": None if switches is None else switches / n}


def cpu_seconds(pid):
    """utime + stime of the whole process, ended threads included (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def perf_attached(perf_pid):
    try:
        fds = Path(f"/proc/{perf_pid}/fd").iterdir()
        return any("perf_event" in os.readlink(fd) for fd in fds)
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# The systems under test.


class Cluster:
    """Servers of the given processing times, with their own servers file."""

    def __init__(self, procs, work, name, times, workers=1):
        self.procs, self.work, self.name, self.workers = procs, work, name, workers
        self.servers_file = work / f"servers-{name}.json"
        self.servers_file.write_text("[]\n")
        self.addrs = []
        for i, t in enumerate(times, start=1):
            log = work / f"server-{name}-{i}.log"
            proc = procs.start(
                [BIN / "server", str(i), "0", str(t), "--servers-file", self.servers_file,
                 "--db", "database.json", "--files", "files"]
                # Only with workers, so the 1-worker cells also run on servers without the flag.
                + (["--workers", str(workers)] if workers > 1 else []),
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

    def start_haproxy(self, balance, bind_options=""):
        """HAProxy doing minilb's job: `first` with maxconn = the servers' workers, fastest listed
        first; or `roundrobin` with no maxconn. `bind_options` are added to its listener (e.g.
        `ssl crt FILE` to terminate TLS). Its config lives in the temp folder; the system
        service is never involved."""
        port = free_port()
        servers = "\n".join(
            f"    server s{i} {addr}" + (f" maxconn {self.workers}" if balance == "first" else "")
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
    bind 127.0.0.1:{port} {bind_options}
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


def costed(proc, work, addr, *args):
    """A bench run while counting `proc`'s CPU time and context switches per request."""
    cost = Cost(proc.pid, work)
    result = bench(addr, *args)
    result["cost"] = cost.finish(result["requests"])
    return result


def spread(addrs, clients, *args):
    """The servers reached directly, `clients[i]` clients on `addrs[i]`, all at once: what they
    give without a proxy. Latencies are the worst server's."""
    runs = [subprocess.Popen([BIN / "client", "bench", "--json", "--lb", addr, "--clients",
                              str(n), *map(str, args)], stdout=subprocess.PIPE, text=True)
            for addr, n in zip(addrs, clients) if n > 0]
    outs = [json.loads(r.communicate(timeout=RUN_TIMEOUT)[0]) for r in runs]
    errors = {}
    for o in outs:
        for code, n in o["errors"].items():
            errors[code] = errors.get(code, 0) + n
    return {
        "requests_per_s": sum(o["requests_per_s"] for o in outs),
        "ok": sum(o["ok"] for o in outs),
        "requests": sum(o["requests"] for o in outs),
        "error_count": sum(o["error_count"] for o in outs),
        "errors": errors,
        "latency_ms": {k: max(o["latency_ms"][k] for o in outs) for k in ("p50", "p99")},
        "fairness": None,
        "per_server": [o["requests_per_s"] for o in outs],
    }


def split(clients, servers):
    """`clients` shared as evenly as can be among `servers`."""
    return [clients // servers + (i < clients % servers) for i in range(servers)]


def median_run(runs):
    """One run's numbers, each the median over `runs` (requests/s, every latency, fairness), so
    one disturbed round on this shared machine moves none of them."""
    def median(values):
        return sorted(values)[len(values) // 2]

    result = dict(sorted(runs, key=lambda r: r["requests_per_s"])[len(runs) // 2])
    result["latency_ms"] = {k: median([r["latency_ms"][k] for r in runs])
                            for k in runs[0]["latency_ms"]}
    if runs[0]["fairness"] is not None:  # None for the servers driven directly
        result["fairness"] = median([r["fairness"] for r in runs])
    # Errors are never a median: every failed request of every round counts.
    result["error_count"] = sum(r["error_count"] for r in runs)
    result["errors"] = {}
    for r in runs:
        for code, n in r["errors"].items():
            result["errors"][code] = result["errors"].get(code, 0) + n
    result["rounds_requests_per_s"] = [r["requests_per_s"] for r in runs]
    if "cost" in runs[0]:
        result["cost"] = {k: median([r["cost"][k] for r in runs]) if runs[0]["cost"][k] is not None
                          else None for k in runs[0]["cost"]}
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
    if "file" not in ONLY:
        return
    say(f"Writing a {FILE_MIB} MiB file in {work}...")
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


def interleaved(label, systems, clients, *args):
    """Each system once per round, ROUNDS rounds, so a load swing on this shared machine hits
    every column alike; per system, the median of each number over the rounds. `systems` maps
    a name to a function running `client bench` with `clients` and `args` against it."""
    runs = {name: [] for name in systems}
    for n in range(ROUNDS):
        for name, run in systems.items():
            say(f"{label} -> {name} (round {n + 1} of {ROUNDS})")
            runs[name].append(run(clients, *args))
    return {name: median_run(r) for name, r in runs.items()}


def query_args(mode):
    return ["--duration", SECONDS, "--request", QUERY] + (["--new-connection"] if mode == "new" else [])


def run_all(procs, work):
    results = {}
    if ONLY & {"small", "file", "many"}:
        run_one_server(procs, work, results)
    if "quality" in ONLY:
        # 4. Balancing quality: three unequal servers, 32 persistent clients.
        three = Cluster(procs, work, "three", QUALITY_TIMES)
        results["quality"] = quality(three, 32, "4. balancing quality")
    if ONLY & {"w8", "unequal"} and not has_workers():
        say("Skipping the workloads with workers: `server` has no --workers flag")
        ONLY.difference_update({"w8", "unequal"})
    if "w8" in ONLY:
        results["w8"] = run_queries(procs, work, "w8", W8_WORKERS,
                                    [("persistent", 1), ("persistent", 32), ("persistent", 256), ("new", 32)])
    if "unequal" in ONLY:
        unequal = Cluster(procs, work, "unequal", QUALITY_TIMES, UNEQUAL_WORKERS)
        results["unequal"] = quality(unequal, UNEQUAL_CLIENTS, "6. unequal servers with workers")
    if "seed" in ONLY:
        results["seed"] = run_queries(procs, work, "seed", 1, [("persistent", 32)])
    return results


def run_one_server(procs, work, results):
    """Workloads 1 to 3 (issue 6), on one server of 0 ms."""
    one = Cluster(procs, work, "one", [0])
    direct = one.addrs[0]
    lb, lb_addr = one.start_minilb()
    targets = {"direct": (None, direct), "minilb": (lb, lb_addr)}
    if HAPROXY:
        targets["haproxy-first"] = one.start_haproxy("first")
        targets["haproxy-rr"] = one.start_haproxy("roundrobin")

    # 1. Small query: per-connection and persistent, 1 and 32 clients.
    if "small" in ONLY:
        results["small"] = {}
        for mode in ("new", "persistent"):
            for clients in (1, 32):
                systems = {name: (lambda n, *a, addr=addr: bench(addr, "--clients", n, *a))
                           for name, (_, addr) in targets.items()
                           if not (name == "haproxy-rr" and mode == "new")}
                results["small"][f"{mode}-{clients}"] = interleaved(
                    f"1. small query, {mode} connection, {clients} clients", systems, clients,
                    *query_args(mode))

    # 2. The big file, three times, one client; rounds interleaved as above, median MB/s kept,
    # with the highest peak RSS of all rounds.
    if "file" in ONLY:
        names = [name for name in targets if name != "haproxy-rr"]
        rounds = {name: [] for name in names}
        for n in range(FILE_ROUNDS):
            for name in names:
                proc, addr = targets[name]
                say(f"2. {FILE_MIB} MiB file x3 -> {name} (round {n + 1} of {FILE_ROUNDS})")
                rounds[name].append(measured(proc, addr, "--clients", 1, "--requests", 3,
                                             "--request", "file big.bin"))
        results["file"] = {}
        for name, runs in rounds.items():
            median = dict(sorted(runs, key=lambda r: r["mb_per_s"])[len(runs) // 2])
            median["rounds_mb_per_s"] = [r["mb_per_s"] for r in runs]
            median["error_count"] = sum(r["error_count"] for r in runs)
            if targets[name][0] is not None:
                median["process"] = {"rss_mib": max(r["process"]["rss_mib"] for r in runs)}
            results["file"][name] = median

    # 3. Many connections open at once, then one request each.
    if "many" in ONLY:
        results["many"] = {}
        for name, (proc, addr) in targets.items():
            if name == "haproxy-rr":
                continue
            say(f"3. {CONNECTIONS} connections at once, one request each -> {name}")
            results["many"][name] = measured(proc, addr, "--clients", CONNECTIONS, "--requests",
                                             CONNECTIONS, "--connect-first", "--request", QUERY)
    for name, (proc, _) in targets.items():
        if proc is not None:
            procs.stop(proc)


def run_queries(procs, work, name, workers, cells):
    """Small queries on three servers of 0 ms with `workers` each, for each (mode, clients) of
    `cells`: minilb and HAProxy, with their CPU time and context switches per request, and the
    servers driven directly with the clients spread over them."""
    cluster = Cluster(procs, work, name, [0, 0, 0], workers)
    started = {"minilb": cluster.start_minilb()}
    if HAPROXY:
        started["haproxy-first"] = cluster.start_haproxy("first")
        started["haproxy-rr"] = cluster.start_haproxy("roundrobin")
    results = {}
    for mode, clients in cells:
        # HAProxy first (maxconn = workers) for new connections and for the 1-worker servers
        # (minilb's own job); roundrobin for persistent connections on servers with workers.
        haproxy = "haproxy-first" if mode == "new" or workers == 1 else "haproxy-rr"
        systems = {"direct": lambda n, *a: spread(cluster.addrs, split(n, len(cluster.addrs)), *a)}
        for system in ("minilb", haproxy):
            if system in started:
                proc, addr = started[system]
                systems[system] = lambda n, *a, proc=proc, addr=addr: costed(
                    proc, work, addr, "--clients", n, *a)
        results[f"{mode}-{clients}"] = interleaved(
            f"{name}: 3 servers x {workers} workers, {mode} connection, {clients} clients",
            systems, clients, *query_args(mode))
    for proc, _ in started.values():
        procs.stop(proc)
    return results


def quality(cluster, clients, label):
    """Balancing quality on unequal servers: `clients` persistent clients for QUALITY_SECONDS
    through minilb and HAProxy, and the servers' own ceiling (each kept busy directly by one
    client per worker, all at once; their processing time is a sleep, which overshoots)."""
    started = {"minilb": cluster.start_minilb()}
    if HAPROXY:
        started["haproxy-first"] = cluster.start_haproxy("first")
        started["haproxy-rr"] = cluster.start_haproxy("roundrobin")
    results = {}
    for name, (proc, addr) in started.items():
        say(f"{label}, {clients} persistent clients for {QUALITY_SECONDS:.0f} s -> {name}")
        results[name] = bench(addr, "--clients", clients, "--duration", QUALITY_SECONDS,
                              "--request", QUERY)
        cluster.procs.stop(proc)
    say(f"{label}: the servers' own ceiling, driven directly")
    results["direct"] = spread(cluster.addrs, [cluster.workers] * len(cluster.addrs), "--duration",
                               QUALITY_SECONDS, "--request", QUERY)
    return results


def has_workers():
    """Whether this build's `server` takes --workers (issue 15)."""
    out = subprocess.run([BIN / "server", "--help"], capture_output=True, text=True).stdout
    return "--workers" in out


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

    def query_rows(prefix, group, workers=None):
        for cell, cells in results.get(group, {}).items():
            mode, clients = cell.split("-")
            label = f"{prefix}, {'new conn' if mode == 'new' else 'persistent'}, {clients} cl"
            compare = "haproxy-first" if mode == "new" or workers == 1 else "haproxy-rr"
            row(f"{label}: req/s", cells, rps, 0, compare)
            row(f"{label}: p50 ms", cells, p50, 3, compare)
            row(f"{label}: p99 ms", cells, p99, 3, compare)
            row(f"{label}: errors", cells, lambda r: r["error_count"], 0, compare)
            if clients != "1":
                row(f"{label}: fairness", cells, lambda r: r["fairness"], 3, compare)
            if workers is not None:
                row(f"{label}: CPU us/req", cells, lambda r: r.get("cost", {}).get("cpu_us_per_req"), 1, compare)
                row(f"{label}: ctx switches/req", cells, lambda r: r.get("cost", {}).get("switches_per_req"), 2, compare)

    def quality_rows(prefix, q, ideal):
        row(f"{prefix}: req/s", q, rps, 1)
        row(f"{prefix}: achieved/ideal({ideal:.0f})", q, lambda r: r["requests_per_s"] / ideal, 3)
        row(f"{prefix}: Jain's fairness", q, lambda r: r["fairness"], 3)
        row(f"{prefix}: p99 ms", q, p99, 1)

    query_rows("1 query", "small")
    if "file" in results:
        f = results["file"]
        row(f"2 file {FILE_MIB} MiB x3: MB/s", f, lambda r: r["mb_per_s"], 0)
        row("2 file: errors", f, lambda r: r["error_count"], 0)
        row("2 file: balancer peak RSS MiB", f, lambda r: r.get("process", {}).get("rss_mib"), 1)
    if "many" in results:
        m = results["many"]
        row(f"3 {CONNECTIONS} conns: answered OK", m, lambda r: r["ok"], 0)
        row(f"3 {CONNECTIONS} conns: errors", m, lambda r: r["error_count"], 0)
        row(f"3 {CONNECTIONS} conns: connect errors", m, lambda r: r["errors"].get("connect", 0), 0)
        row(f"3 {CONNECTIONS} conns: p99 ms", m, p99, 1)
        row(f"3 {CONNECTIONS} conns: peak RSS MiB", m, lambda r: r.get("process", {}).get("rss_mib"), 1)
        row(f"3 {CONNECTIONS} conns: peak threads", m, lambda r: r.get("process", {}).get("threads"), 0)
    if "quality" in results:
        quality_rows("4 quality", results["quality"], IDEAL)
    query_rows(f"5 3x{W8_WORKERS} workers", "w8", W8_WORKERS)
    if "unequal" in results:
        quality_rows(f"6 3x{UNEQUAL_WORKERS} workers, {UNEQUAL_CLIENTS} cl", results["unequal"], UNEQUAL_IDEAL)
    query_rows("7 3x1 worker", "seed", 1)

    widths = [max(len(r[i]) for r in rows + [["workload"] + HEADS]) for i in range(len(HEADS) + 1)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(["workload"] + HEADS, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def targets(results):
    """Each target of issues 6 and 15: (label, met: bool or None when it cannot be judged,
    evidence)."""
    out = []
    if "small" in results:
        out += small_targets(results["small"])

    if "file" in results:
        f = results["file"]
        if "haproxy-first" in f:
            r = f["minilb"]["mb_per_s"] / f["haproxy-first"]["mb_per_s"]
            out.append(("2 MB/s >= 0.9x HAProxy", r >= 0.9, f"{r:.2f}x"))
        else:
            out.append(("2 MB/s >= 0.9x HAProxy", None, "no HAProxy"))
        rss = f["minilb"]["process"]["rss_mib"]
        out.append(("2 balancer RSS < 32 MiB while streaming", rss < 32, f"{rss:.1f} MiB"))

    if "many" in results:
        m = results["many"]["minilb"]
        out.append((f"3 all {CONNECTIONS} answered, no error", m["ok"] == CONNECTIONS and m["error_count"] == 0,
                    f"{m['ok']} OK, errors {m['errors'] or 'none'}"))
        rss = m["process"]["rss_mib"]
        out.append(("3 balancer RSS <= 200 MiB", rss <= 200, f"{rss:.1f} MiB, {m['process']['threads']} threads"))

    if "quality" in results:
        out += quality_targets("4", results["quality"], IDEAL)

    def vs(cell, haproxy, key, label, better):
        """minilb over HAProxy on `key` in `cell`, judged by `better(ratio)`."""
        if haproxy not in cell:
            return (label, None, "no HAProxy")
        r = key(cell["minilb"]) / key(cell[haproxy])
        return (label, better(r), f"{r:.2f}x")

    rps = lambda r: r["requests_per_s"]
    p50 = lambda r: r["latency_ms"]["p50"]
    p99 = lambda r: r["latency_ms"]["p99"]
    cpu = lambda r: r["cost"]["cpu_us_per_req"]
    at_least, at_most = (lambda r: r >= 1), (lambda r: r <= 1)
    if "w8" in results:
        w = results["w8"]
        c32, c256, c1, new = w["persistent-32"], w["persistent-256"], w["persistent-1"], w["new-32"]
        out.append(vs(c32, "haproxy-rr", rps, "5 32 cl on workers: req/s >= 1.0x rr", at_least))
        out.append(vs(c32, "haproxy-rr", p99, "5 32 cl on workers: p99 <= rr", at_most))
        out.append(vs(c256, "haproxy-rr", rps, "5 256 cl on workers: req/s >= 1.0x rr", at_least))
        out.append(("5 256 cl on workers: no errors", c256["minilb"]["error_count"] == 0,
                    f"{c256['minilb']['error_count']} errors"))
        out.append(vs(c1, "haproxy-rr", p50, "5 1 cl on workers: p50 <= HAProxy's", at_most))
        out.append(vs(new, "haproxy-first", rps, "5 new conn 32 cl: req/s >= first", at_least))
        out.append(vs(new, "haproxy-first", p99, "5 new conn 32 cl: p99 <= first", at_most))
        out.append(vs(c32, "haproxy-rr", cpu, "5 32 cl on workers: CPU/req <= HAProxy", at_most))
    if "unequal" in results:
        out += quality_targets("6", results["unequal"], UNEQUAL_IDEAL)
    if "seed" in results:
        s = results["seed"]["persistent-32"]
        out.append(vs(s, "haproxy-first", rps, "7 32 cl on 1-worker: req/s >= first", at_least))
        out.append(("7 32 cl on 1-worker: fairness >= 0.9", s["minilb"]["fairness"] >= 0.9,
                    f"{s['minilb']['fairness']:.3f}"))
    return out


def small_targets(small):
    out = []

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
    return out


def quality_targets(n, q, ideal):
    r = q["minilb"]["requests_per_s"] / ideal
    others = ", ".join(f"{name} {q[name]['requests_per_s'] / ideal:.3f}" for name in q if name != "minilb")
    others = others.replace("direct", "servers' ceiling")
    fair = q["minilb"]["fairness"]
    fairs = ", ".join(f"{name} {q[name]['fairness']:.3f}" for name in q if name not in ("minilb", "direct"))
    return [(f"{n} >= 0.97 of the ideal", r >= 0.97, f"{r:.3f}" + (f" ({others})" if others else "")),
            (f"{n} Jain's fairness >= 0.9", fair >= 0.9, f"{fair:.3f}" + (f" ({fairs})" if fairs else ""))]


def main():
    global HAPROXY
    if len(sys.argv) > 1:  # no options: the environment variables above are the knobs
        print(__doc__.strip())
        return 0 if sys.argv[1] in ("-h", "--help") else 2
    if ONLY - GROUPS:
        say(f"BENCH_ONLY: unknown workloads {', '.join(sorted(ONLY - GROUPS))}; known: "
            f"{', '.join(sorted(GROUPS))}, workers")
        return 2
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
          f"small queries: medians of {ROUNDS} interleaved runs of {SECONDS:g} s (errors: all runs); ratios are minilb over HAProxy (first, maxconn "
          f"= the servers' workers; roundrobin for persistent connections on servers with workers) "
          f"and over direct; CPU and context switches: the proxy process's, per request")
    print()
    print(table(results))
    print("(direct column of workloads 4 to 7: the three servers driven directly at once, the "
          "clients spread over them; in 4 and 6 one client per worker, their ceiling)")
    print()
    print("targets (issues 6 and 15)")
    for label, met, evidence in targets(results):
        verdict = "n/a" if met is None else ("met" if met else "NOT MET")
        print(f"  {label:<44} {verdict:<8} {evidence}")
    print(f"\nraw numbers: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
