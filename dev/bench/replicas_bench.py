#!/usr/bin/env python3
"""Sharded daemon replicas at scale: 100,000 `generated` policies shared by 4 `keyturn run`
replicas through membership Leases on the Kubernetes API stand-in, against one OpenBao.

Set-up. The policies are written as policy FILES (1,000 a file, one directory): M of them
(200 by default) rotate `every: 1m` (window 30s), the rest `every: 24h` (window 1h). A
never-rotated policy is due at once (`Schedule::next_due(None)` is the Unix epoch), and
100,000 immediate rotations would measure the burst, not the replicas. So, before any
daemon starts, every policy's KV v2 entries are seeded straight through OpenBao's HTTP API
(many threads, keep-alive): CURRENT at `secret/data/keyturn/NAME` ({value}) and the state
record at `secret/data/keyturn-state/keyturn/NAME` with `last_rotation_id`,
`last_started_at` = now (spread over the last minute for the per-minute ones) and
`last_outcome` = ok: exactly what a completed rotation leaves there. OpenBao therefore
holds a state for every policy, and each replica's start-up scan reads them all (its
owned share; two KV reads a policy): that read is part of "time until owned".

Phases, one run, one OpenBao dev server, one stand-in:
  B. R replicas (`--membership-namespace`, `--membership-lease 15s`, each with its own
     holder, audit file and listen port) start at once. Time until every policy is owned
     (the replicas' `keyturn_daemon_policies_owned` gauges, as each logs them, sum to N,
     every replica sees R members and answers /readyz) and until every owned policy is
     scanned and queued (its `keyturn_next_rotation_timestamp_seconds` series exists).
     Then, idle: VmRSS and VmHWM of each replica. Then a steady window: fire delay of the
     per-minute slots (the daemon's own "slot fired" debug lines, p50/p99) and store
     requests per rotation (`keyturn_store_requests_total` over `keyturn_rotations_total`
     outcome="rotated", both summed over the replicas). Then `kill -9` of one replica: time
     until the survivors' owned gauges sum to N again, and until their gained policies are
     scanned.
  C. One replica without membership over the same N policies: RSS (before and after one
     /metrics scrape) and, over a window of the same length, store requests per rotation
     and fire delay of the same per-minute policies.
  D. One replica without membership over N/R of them: RSS.
  E. One replica with membership, alone in a namespace of its own, over N/R of them: RSS.
     C - D is the cost of N - N/R policies loaded and owned; a replica of B (N loaded, ~N/R
     owned) against E (N/R loaded and owned, the same Kubernetes client and membership) is
     the cost of N - N/R policies loaded only. Every policy is parsed and kept by every
     replica; only an owned one is scanned, queued and has metric series.

Every process runs in its own process group, killed on any exit; the temp dir is removed.

The anchors (External Secrets Operator, Vault Secrets Operator) need a Kubernetes cluster
and cannot run here; their figures are quoted beside keyturn's.

Usage: dev/bench-replicas.sh [POLICIES [REPLICAS]]   (default 100000 4; expects release
builds of keyturn and keyturn-kube-standin, which the wrapper makes). BENCH_WINDOW_S sets
the steady windows (default 150; at least 60 for any per-minute slot to fall in them).
The daemons get the environment the keyturn image sets (its Containerfile's ENV lines: the
allocator's options), as the chart's pods do; MALLOC_* and MIMALLOC_* variables set here pass
through and win (allocator experiments).
BENCH_KEYTURN names the keyturn binary to run (the wrapper sets it to the image's static
binary with BENCH_STATIC=1). A full run takes about 10 minutes on 2 cores, a smoke run
(`dev/bench-replicas.sh 4000 4`) about 3.
"""
import concurrent.futures
import datetime
import http.client
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BAO = os.path.join(ROOT, ".keyturn", "bin", "bao")
KEYTURN = os.environ.get("BENCH_KEYTURN") or os.path.join(ROOT, "target", "release", "keyturn")
STANDIN = os.path.join(ROOT, "target", "release", "keyturn-kube-standin")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
R = int(sys.argv[2]) if len(sys.argv) > 2 else 4
M = min(200, max(1, N // 20))  # per-minute policies
PER_FILE = 1000
LEASE_S = 15
CONTAINERFILE = os.path.join(ROOT, "images", "keyturn.Containerfile")
NAMESPACE = "keyturn-bench"
TOKEN = "bench-root"
HZ = os.sysconf("SC_CLK_TCK")
WINDOW_S = int(os.environ.get("BENCH_WINDOW_S", "150"))  # steady window, B and C
DEADLINE_S = 900  # a hang, not a speed
# "slot fired" (each fire delay) is a debug line of keyturn_agent::daemon; ownership changes are info.
LOG = "warn,keyturn_agent::daemon=debug"


class Interrupted(Exception):
    pass


def on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


def image_env():
    """The ENV lines of the keyturn image (one NAME=VALUE each, as that file writes them)."""
    env = {}
    for line in open(CONTAINERFILE):
        m = re.match(r"ENV ([A-Za-z_][A-Za-z0-9_]*)=(\S+)\s*$", line)
        if m:
            env[m.group(1)] = m.group(2)
    return env


# What the daemons run with beyond the bench's own variables: the image's, then the caller's.
DAEMON_ENV = {**image_env(),
              **{k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "MIMALLOC_"))}}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def get(url, timeout=10):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except Exception:
        return None, ""


def status_kib(pid, field):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ticks(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except OSError:
        return 0


def mib(kib):
    return kib / 1024


def names():
    """The per-minute policies first, then the daily ones."""
    return [f"m{i:04d}" for i in range(M)] + [f"p{i:06d}" for i in range(M, N)]


def write_policies(directory, policy_names):
    os.makedirs(directory, exist_ok=True)
    for start in range(0, len(policy_names), PER_FILE):
        with open(f"{directory}/policies-{start // PER_FILE:04d}.yaml", "w") as f:
            for n in policy_names[start:start + PER_FILE]:
                sched = "every: 1m\n  window: 30s" if n.startswith("m") else "every: 24h\n  window: 1h"
                f.write(f"---\napiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: {n} }}\n"
                        f"spec:\n  {sched}\n  store: {{ vault-kv: {{ path: keyturn/{n} }} }}\n"
                        f"  target: {{ generated: {{}} }}\n")


def seed(port, policy_names):
    """CURRENT and a completed rotation's state record for every policy, as a rotation
    leaves them; 16 threads, one keep-alive connection each."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def worker(chunk):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        hdr = {"X-Vault-Token": TOKEN, "Content-Type": "application/json"}
        for n in chunk:
            at = now - datetime.timedelta(seconds=random.uniform(0, 60)) if n.startswith("m") else now
            for path, data in (
                (f"keyturn/{n}", {"value": secrets.token_urlsafe(24)}),
                (f"keyturn-state/keyturn/{n}", {"last_rotation_id": str(uuid.uuid4()),
                                                "last_started_at": at.isoformat(),
                                                "last_outcome": "ok"}),
            ):
                c.request("POST", f"/v1/secret/data/{path}", json.dumps({"data": data}), hdr)
                r = c.getresponse()
                body = r.read()
                if r.status != 200:
                    raise RuntimeError(f"seeding {path}: {r.status} {body[:200]!r}")
        c.close()

    threads = 16
    chunks = [policy_names[i::threads] for i in range(threads)]
    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        for f in [ex.submit(worker, c) for c in chunks]:
            f.result()


class Proc:
    """A child in its own process group, its output in a file."""

    def __init__(self, argv, env, log_path, stdout=None):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.p = subprocess.Popen(argv, env=env, stdout=stdout or self.log, stderr=self.log,
                                  start_new_session=True)
        self.pid = self.p.pid
        self.offset = 0
        self.partial = ""

    def alive(self):
        return self.p.poll() is None

    def kill(self, sig=signal.SIGKILL):
        if self.p.poll() is None:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout=60):
        self.kill(signal.SIGTERM)
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.p.wait()

    def new_lines(self):
        """The JSON log lines written since the last call."""
        with open(self.log_path) as f:
            f.seek(self.offset)
            chunk = f.read()
        self.offset += len(chunk.encode())
        self.partial += chunk
        *complete, self.partial = self.partial.split("\n")
        out = []
        for line in complete:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def tail(self):
        try:
            return open(self.log_path).read()[-3000:]
        except OSError:
            return ""


class Daemon(Proc):
    def __init__(self, work, name, addr, policies, kubeconfig=None, namespace=NAMESPACE):
        os.makedirs(f"{work}/{name}", exist_ok=True)
        self.name = name
        self.listen = f"127.0.0.1:{free_port()}"
        env = {"PATH": os.environ.get("PATH", ""), "HOME": f"{work}/{name}", "VAULT_ADDR": addr,
               "VAULT_TOKEN": TOKEN, "KEYTURN_POLICIES": policies, "KEYTURN_HOLDER": name,
               "KEYTURN_AUDIT_FILE": f"{work}/{name}/audit.jsonl",
               "KEYTURN_AUDIT_HMAC_KEY_FILE": f"{work}/hmac.key",
               "KEYTURN_LOG": LOG, "KEYTURN_LOG_FORMAT": "json"}
        env.update(DAEMON_ENV)
        if kubeconfig:
            env.update({"KUBECONFIG": kubeconfig, "KEYTURN_MEMBERSHIP_NAMESPACE": namespace,
                        "KEYTURN_MEMBERSHIP_LEASE": f"{LEASE_S}s"})
        super().__init__([KEYTURN, "run", "--listen", self.listen], env, f"{work}/{name}/daemon.log")
        self.owned = None  # as last logged
        self.first_owned = None
        self.members = None
        self.fired = []  # (log time, policy, delay_ms)

    def read_log(self):
        for ev in self.new_lines():
            msg = ev.get("msg") or ev.get("message") or ""
            if msg in ("policies owned by this replica", "daemon replicas changed; policies rebalanced"):
                self.owned = int(ev["owned"])
                if self.first_owned is None:
                    self.first_owned = self.owned
                if "members" in ev:
                    self.members = int(ev["members"])
            elif msg == "slot fired":
                self.fired.append((ev.get("time", ""), str(ev.get("policy", "")), float(ev["delay_ms"])))

    def ready(self):
        return get(f"http://{self.listen}/readyz", timeout=2)[0] == 200

    def scrape(self):
        code, text = get(f"http://{self.listen}/metrics", timeout=120)
        if code != 200:
            raise RuntimeError(f"{self.name}: /metrics answered {code}")
        return text

    def rss(self):
        return status_kib(self.pid, "VmRSS"), status_kib(self.pid, "VmHWM")


def counts(text):
    """What the store and rotation counters, the membership gauges and the queued policies'
    series say (one pass over the lines: an exposition of 100,000 policies is ~1M lines)."""
    c = {"store": 0.0, "rotated": 0.0, "already": 0.0, "busy": 0.0, "failed": 0.0, "queued": 0,
         "owned": 0.0, "members": 0.0, "bytes": len(text)}
    outcome = {'outcome="rotated"': "rotated", 'outcome="already-done"': "already",
               'outcome="busy"': "busy", 'outcome="failed"': "failed", 'outcome="error"': "failed"}
    for line in text.split("\n"):
        if line.startswith("keyturn_next_rotation_timestamp_seconds{"):
            c["queued"] += 1
        elif line.startswith("keyturn_rotations_total{"):
            value = float(line.rsplit(" ", 1)[1])
            if value:
                for k, key in outcome.items():
                    if k in line:
                        c[key] += value
        elif line.startswith("keyturn_store_requests_total{"):
            c["store"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("keyturn_daemon_policies_owned "):
            c["owned"] = float(line.split()[1])
        elif line.startswith("keyturn_daemon_members "):
            c["members"] = float(line.split()[1])
    return c


def wait_idle(daemons, settle_s=1.0, max_ticks_pct=5, deadline_s=300):
    """Until every daemon used under `max_ticks_pct`% of a core for `settle_s`."""
    end = time.time() + deadline_s
    while time.time() < end:
        before = [cpu_ticks(d.pid) for d in daemons]
        time.sleep(settle_s)
        used = [(cpu_ticks(d.pid) - b) / HZ / settle_s * 100 for d, b in zip(daemons, before)]
        if max(used) < max_ticks_pct:
            return
    raise RuntimeError("daemons never went idle")


def check_alive(daemons):
    for d in daemons:
        if not d.alive():
            raise RuntimeError(f"{d.name} exited {d.p.returncode}: {d.tail()}")


def quantiles(values):
    if not values:
        return float("nan"), float("nan")
    v = sorted(values)
    return statistics.median(v), v[min(len(v) - 1, int(len(v) * 0.99))]


def fired_in(daemons, t_from, t_to):
    """Per-minute slots fired between two wall-clock times (the log's RFC 3339 `time`)."""
    lo = datetime.datetime.fromtimestamp(t_from, datetime.timezone.utc)
    hi = datetime.datetime.fromtimestamp(t_to, datetime.timezone.utc)
    out = []
    for d in daemons:
        for t, policy, delay in d.fired:
            m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", t)
            if not m:
                continue
            at = datetime.datetime.fromisoformat(m.group(1) + "." + (m.group(2) or "0")[:6].ljust(6, "0")
                                                 + (m.group(3).replace("Z", "+00:00")))
            if policy.startswith("m") and lo <= at <= hi:
                out.append(delay)
    return out


def steady_window(daemons, seconds):
    """Store requests per rotation and fire delays over `seconds` of steady running."""
    before = [counts(d.scrape()) for d in daemons]
    t0 = time.time()
    while time.time() < t0 + seconds:
        time.sleep(1)
        check_alive(daemons)
        for d in daemons:
            d.read_log()
    after = [counts(d.scrape()) for d in daemons]
    t1 = time.time()
    for d in daemons:
        d.read_log()
    delta = {k: sum(a[k] - b[k] for a, b in zip(after, before)) for k in ("store", "rotated", "already", "busy", "failed")}
    return delta, fired_in(daemons, t0, t1)


def single(work, addr, name, policies, window_s, kubeconfig=None):
    """One replica (without membership, or alone in a namespace of its own): RSS before and
    after a /metrics scrape, and optionally a steady window."""
    d = Daemon(work, name, addr, policies, kubeconfig, namespace=f"{NAMESPACE}-{name}")
    try:
        t0 = time.perf_counter()
        while not d.ready():
            check_alive([d])
            if time.perf_counter() - t0 > DEADLINE_S:
                raise RuntimeError(f"{name} never became ready")
            time.sleep(0.2)
        ready_s = time.perf_counter() - t0
        wait_idle([d])
        rss_pre, hwm_pre = d.rss()
        c = counts(d.scrape())
        time.sleep(1)
        rss_post, hwm_post = d.rss()
        res = {"ready_s": ready_s, "rss_pre": rss_pre, "hwm_pre": hwm_pre, "rss_post": rss_post,
               "hwm_post": hwm_post, "metrics_bytes": c["bytes"], "owned": c["owned"]}
        if window_s:
            res["delta"], res["fired"] = steady_window([d], window_s)
            res["hwm_end"] = d.rss()[1]
        return res
    finally:
        d.stop()


def main():
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    for b in (KEYTURN, STANDIN):
        if not os.path.exists(b):
            sys.exit(f"{b} missing: dev/bench-replicas.sh builds it")
    if N < R * 10 or R < 2:
        sys.exit("usage: dev/bench-replicas.sh [POLICIES [REPLICAS]]: at least 2 replicas and 10 policies each")
    work = tempfile.mkdtemp(prefix="keyturn-bench-replicas-")
    procs = []
    t_start = time.perf_counter()
    try:
        with open(f"{work}/hmac.key", "wb") as f:
            f.write(os.urandom(32))
        all_names = names()
        write_policies(f"{work}/policies", all_names)
        write_policies(f"{work}/policies-share", all_names[:N // R])

        bao_port = free_port()
        addr = f"http://127.0.0.1:{bao_port}"
        bao = Proc([BAO, "server", "-dev", f"-dev-listen-address=127.0.0.1:{bao_port}",
                    f"-dev-root-token-id={TOKEN}", "-dev-no-store-token", "-log-level=error"],
                   {**os.environ, "HOME": work}, f"{work}/bao.log")
        procs.append(bao)
        kubeconfig = f"{work}/kubeconfig"
        standin = Proc([STANDIN, "--listen", "127.0.0.1:0", "--kubeconfig", kubeconfig],
                       {"PATH": os.environ.get("PATH", ""), "HOME": work}, f"{work}/standin.log",
                       stdout=subprocess.PIPE)
        procs.append(standin)
        standin_url = standin.p.stdout.readline().decode().strip()
        if not standin_url.startswith("https://"):
            raise RuntimeError(f"the stand-in did not start: {standin.tail()}")
        for _ in range(400):
            if get(f"{addr}/v1/sys/health")[0] == 200:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"OpenBao did not start: {bao.tail()}")

        t0 = time.perf_counter()
        seed(bao_port, all_names[M:] + all_names[:M])
        seed_s = time.perf_counter() - t0
        print(f"seeded {N} policies' CURRENT and state in {seed_s:.1f} s", file=sys.stderr)

        # B. R replicas.
        reps = []
        t0 = time.perf_counter()
        for i in range(R):
            reps.append(Daemon(work, f"replica-{i}", addr, f"{work}/policies", kubeconfig))
            procs.append(reps[-1])
        while True:
            check_alive(reps)
            for d in reps:
                d.read_log()
            if (all(d.owned is not None for d in reps) and sum(d.owned for d in reps) == N
                    and all(d.members in (None, R) for d in reps) and all(d.ready() for d in reps)):
                break
            if time.perf_counter() - t0 > DEADLINE_S:
                raise RuntimeError(f"policies never all owned: {[(d.owned, d.members) for d in reps]}")
            time.sleep(0.25)
        owned_s = time.perf_counter() - t0
        owned_at_start = [d.owned for d in reps]
        initially_owned = [d.first_owned for d in reps]
        hwm_startup = [d.rss()[1] for d in reps]
        wait_idle(reps)
        idle_s = time.perf_counter() - t0
        rss_b_pre = [d.rss() for d in reps]
        scraped = [counts(d.scrape()) for d in reps]
        while (sum(c["queued"] for c in scraped) != N or sum(c["owned"] for c in scraped) != N
               or any(c["members"] != R for c in scraped)):
            if time.perf_counter() - t0 > DEADLINE_S:
                raise RuntimeError(f"owned policies never all queued: {scraped}")
            time.sleep(2)
            check_alive(reps)
            scraped = [counts(d.scrape()) for d in reps]
        scanned_s = time.perf_counter() - t0
        time.sleep(1)
        rss_b = [d.rss() for d in reps]
        metrics_b = max(c["bytes"] for c in scraped)
        owned_b = [int(c["owned"]) for c in scraped]

        delta_b, fired_b = steady_window(reps, WINDOW_S)
        rss_b_end = [d.rss() for d in reps]

        # Rebalance after kill -9 of one replica.
        victim, survivors = reps[-1], reps[:-1]
        for d in survivors:
            d.read_log()
        t_kill = time.perf_counter()
        victim.kill()
        victim.p.wait()
        while True:
            check_alive(survivors)
            for d in survivors:
                d.read_log()
            if sum(d.owned for d in survivors) == N:
                break
            if time.perf_counter() - t_kill > 300:
                raise RuntimeError(f"survivors never took every policy: {[d.owned for d in survivors]}")
            time.sleep(0.1)
        rebalance_s = time.perf_counter() - t_kill
        while True:
            scraped = [counts(d.scrape()) for d in survivors]
            if sum(c["queued"] for c in scraped) == N:
                break
            if time.perf_counter() - t_kill > 300:
                raise RuntimeError(f"gained policies never all queued: {scraped}")
            time.sleep(0.5)
        rebalance_queued_s = time.perf_counter() - t_kill
        rss_survivors = [d.rss() for d in survivors]
        owned_survivors = [d.owned for d in survivors]
        for d in survivors:
            d.stop()

        # C and D: one replica without membership, all N policies, then N/R of them.
        res_c = single(work, addr, "single-all", f"{work}/policies", WINDOW_S)
        res_d = single(work, addr, "single-share", f"{work}/policies-share", 0)
        res_e = single(work, addr, "solo-share", f"{work}/policies-share", 0, kubeconfig)

        # Report.
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
        p50_b, p99_b = quantiles(fired_b)
        p50_c, p99_c = quantiles(res_c["fired"])
        per_rot_b = delta_b["store"] / delta_b["rotated"] if delta_b["rotated"] else float("nan")
        dc = res_c["delta"]
        per_rot_c = dc["store"] / dc["rotated"] if dc["rotated"] else float("nan")
        share = N // R
        rss_max = max(r for r, _ in rss_b)
        hwm_max = max(h for _, h in rss_b)
        w = 52
        print(f"machine: {os.cpu_count()} cores, {cpu}; load average {open('/proc/loadavg').read().split()[:3]} at the end")
        print(f"command: dev/bench-replicas.sh {N} {R}  ({M} policies every 1m/window 30s, the rest every 24h; "
              f"files of {PER_FILE}; OpenBao dev server; stand-in API server; --membership-lease {LEASE_S}s; "
              f"--concurrency 16; audit to a file per replica (fsync); steady windows {WINDOW_S} s)")
        print(f"keyturn binary: {KEYTURN} ({os.path.getsize(KEYTURN) / 1e6:.1f} MB); daemon environment "
              f"beyond the bench's own: {' '.join(f'{k}={v}' for k, v in sorted(DAEMON_ENV.items())) or 'none'}")
        print(f"seeding CURRENT + state of {N} policies: {seed_s:.1f} s (not part of any figure)")
        print(f"{'':{w}}{'keyturn':>16}  {'target':>14}  anchor (not run here)")
        print(f"{'RSS per replica, idle, all owned: VmRSS max, MiB':{w}}{mib(rss_max):>16.1f}  {'<= 64 @ ' + str(share):>14}  "
              f"ESO ~220 MiB @ 1,800 ExternalSecrets; VSO up to 426 MiB @ 60; neither shards")
        print(f"{'  VmHWM (peak) max, MiB':{w}}{mib(hwm_max):>16.1f}")
        print(f"{'  per replica VmRSS / VmHWM, MiB (owned)':{w}}  " + ", ".join(
            f"{mib(r):.0f}/{mib(h):.0f} ({o})" for (r, h), o in zip(rss_b, owned_b)))
        print(f"{'  same before the first /metrics scrape, MiB':{w}}  " + ", ".join(
            f"{mib(r):.0f}/{mib(h):.0f}" for r, h in rss_b_pre))
        print(f"{'  after the steady window, MiB':{w}}  " + ", ".join(
            f"{mib(r):.0f}/{mib(h):.0f}" for r, h in rss_b_end))
        print(f"{'start -> every policy owned (gauges sum to N), s':{w}}{owned_s:>16.1f}")
        print(f"{'  owned first (each replica), then':{w}}  {initially_owned} -> {owned_at_start}")
        print(f"{'start -> all owned policies scanned + queued, s':{w}}{scanned_s:>16.1f}  "
              f"{'':>14}  (idle at {idle_s:.1f} s; checked by scrape)")
        print(f"{'kill -9 one replica -> survivors own all, s':{w}}{rebalance_s:>16.1f}  {'<= ' + str(LEASE_S + 5):>14}")
        print(f"{'  -> gained policies scanned + queued, s':{w}}{rebalance_queued_s:>16.1f}  {'':>14}  "
              f"survivors own {owned_survivors}, VmRSS/VmHWM MiB "
              + ", ".join(f"{mib(r):.0f}/{mib(h):.0f}" for r, h in rss_survivors))
        print(f"{'fire delay p50 / p99, ms, ' + str(R) + ' replicas (' + str(len(fired_b)) + ' slots)':{w}}"
              f"{p50_b:>7.1f} / {p99_b:<7.1f}  {'p99 <= 1000':>14}")
        print(f"{'fire delay p50 / p99, ms, 1 replica (' + str(len(res_c['fired'])) + ' slots)':{w}}"
              f"{p50_c:>7.1f} / {p99_c:<7.1f}")
        print(f"{'store requests per rotation, ' + str(R) + ' replicas':{w}}{per_rot_b:>16.2f}  {'<= 1 replica':>14}  "
              f"({delta_b['store']:.0f} / {delta_b['rotated']:.0f} rotated; already-done {delta_b['already']:.0f}, "
              f"busy {delta_b['busy']:.0f}, failed/error {delta_b['failed']:.0f})")
        print(f"{'store requests per rotation, 1 replica':{w}}{per_rot_c:>16.2f}  {'':>14}  "
              f"({dc['store']:.0f} / {dc['rotated']:.0f} rotated; already-done {dc['already']:.0f}, "
              f"busy {dc['busy']:.0f}, failed/error {dc['failed']:.0f})")
        print("memory, one replica without membership (VmRSS before / after one /metrics scrape; VmHWM after):")
        for label, res, n in (("C", res_c, N), ("D", res_d, share),
                              ("E (with membership, alone)", res_e, share)):
            print(f"  {label}: {n:>7} loaded + owned: {mib(res['rss_pre']):7.1f} / {mib(res['rss_post']):7.1f} MiB, "
                  f"VmHWM {mib(res['hwm_post']):7.1f} MiB; ready after {res['ready_s']:.1f} s; "
                  f"/metrics {res['metrics_bytes'] / 1e6:.1f} MB")
        # Per policy: C - D is (N - share) more policies, loaded and owned; a replica of B
        # against E (both with membership, both owning about a share) is (N - share) more
        # policies loaded only. Before any scrape: the exposition's buffers are apart.
        # A replica that first owned more than its share (it saw fewer members at start)
        # keeps part of that start-up's memory; one that owned its share from the start is
        # the clean comparison with E, when there is one.
        clean = [r for (r, _), d in zip(rss_b_pre, reps) if d.first_owned is not None and d.first_owned <= 1.05 * share]
        both = (res_c["rss_pre"] - res_d["rss_pre"]) * 1024 / (N - share)
        b_ref, which = (min(clean), "a replica that owned only its share from the start") if clean else \
            (statistics.median(r for r, _ in rss_b_pre), "the median replica")
        loaded = (b_ref - res_e["rss_pre"]) * 1024 / (N - share)
        print(f"  bytes per policy loaded and owned (C-D): {both:.0f}; per policy loaded only "
              f"({which} of B, before its first scrape, - E): {loaded:.0f}; so per owned policy ~{both - loaded:.0f}; "
              f"membership + Kubernetes client (E-D): {mib(res_e['rss_pre'] - res_d['rss_pre']):.1f} MiB")
        print(f"  /metrics per owned policy: {res_c['metrics_bytes'] / N:.0f} bytes of text; biggest replica "
              f"exposition {metrics_b / 1e6:.1f} MB")
        print(f"total bench time {time.perf_counter() - t_start:.0f} s")
    finally:
        for p in reversed(procs):
            p.kill()
        for p in procs:
            try:
                p.p.wait(timeout=30)
            except Exception:
                pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except Interrupted as e:
        sys.exit(f"interrupted: {e}")
