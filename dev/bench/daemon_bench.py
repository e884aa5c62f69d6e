#!/usr/bin/env python3
"""The rotation daemon at scale: `keyturn run` with 10,000 `generated` policies on OpenBao.

Phases, all in one run against one OpenBao dev server:
  1. burst: 10,000 never-rotated policies are all due at once; rotations/s for the first
     1,000 and for all 10,000 (full protocol: create, set, test, promote, audited).
  2. idle: the daemon restarted over the 10,000 rotated policies (nothing due for 24 h):
     peak RSS after start-up, and CPU used over 60 s with nothing due.
  3. fire delay: 100 per-minute policies added by hot reload; how late each slot fires
     after its jittered start time (p50/p99 over the slots that fall in the window).

The anchors (External Secrets Operator, Vault Secrets Operator) need a Kubernetes cluster and
cannot run here; their figures are quoted from DESIGN.md beside keyturn's.

Usage: dev/bench-daemon.sh [POLICIES]   (expects a release build)
"""
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BAO = os.path.join(ROOT, ".keyturn", "bin", "bao")
KEYTURN = os.path.join(ROOT, "target", "release", "keyturn")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
TOKEN = "bench-root"
HZ = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def http(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except Exception:
        return None, ""


def rotated(metrics_url):
    _, text = http(metrics_url)
    return sum(float(m) for m in re.findall(r'keyturn_rotations_total\{[^}]*outcome="rotated"\} (\S+)', text))


def cpu_ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])  # utime + stime


def status_kib(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def write_policies(path, names, spec):
    with open(path, "w") as f:
        for n in names:
            f.write(f"---\napiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: {n} }}\nspec:\n{spec}"
                    f"  store: {{ vault-kv: {{ path: keyturn/{n} }} }}\n  target: {{ generated: {{}} }}\n")


def start_daemon(work, addr, listen, log_name, extra_log=""):
    env = {"PATH": os.environ.get("PATH", ""), "HOME": work, "VAULT_ADDR": addr, "VAULT_TOKEN": TOKEN,
           "KEYTURN_POLICIES": f"{work}/policies", "KEYTURN_HOLDER": "bench",
           "KEYTURN_AUDIT_FILE": f"{work}/audit.jsonl", "KEYTURN_AUDIT_HMAC_KEY_FILE": f"{work}/hmac.key",
           "KEYTURN_LOG": "warn" + extra_log}
    # Allocator tuning experiments pass through (e.g. MALLOC_ARENA_MAX=2).
    env.update({k: v for k, v in os.environ.items() if k.startswith("MALLOC_")})
    log = open(f"{work}/{log_name}", "w")
    p = subprocess.Popen([KEYTURN, "run", "--listen", listen, "--concurrency", "32"], env=env, stdout=log, stderr=log)
    for _ in range(6000):
        if http(f"http://{listen}/readyz")[0] == 200:
            return p
        if p.poll() is not None:
            sys.exit(f"keyturn run exited {p.returncode}: {open(f'{work}/{log_name}').read()[-2000:]}")
        time.sleep(0.05)
    sys.exit("keyturn run never became ready")


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)


def main():
    if not os.path.exists(KEYTURN):
        sys.exit(f"{KEYTURN} missing: dev/bench-daemon.sh builds it")
    work = tempfile.mkdtemp(prefix="keyturn-bench-daemon-")
    os.mkdir(f"{work}/policies")
    with open(f"{work}/hmac.key", "wb") as f:
        f.write(os.urandom(32))
    port = free_port()
    addr = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([BAO, "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}",
                               f"-dev-root-token-id={TOKEN}", "-dev-no-store-token", "-log-level=error"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HOME": work})
    daemon = None
    try:
        for _ in range(200):
            if http(f"{addr}/v1/sys/health")[0] == 200:
                break
            time.sleep(0.05)
        listen = f"127.0.0.1:{free_port()}"
        metrics = f"http://{listen}/metrics"

        # 1. burst
        write_policies(f"{work}/policies/bulk.yaml", [f"p{i:05d}" for i in range(N)], "  every: 24h\n")
        daemon = start_daemon(work, addr, listen, "burst.log")
        t0 = time.perf_counter()
        first_1000 = None
        while True:
            done = rotated(metrics)
            if first_1000 is None and done >= min(1000, N):
                first_1000 = time.perf_counter() - t0
            if done >= N:
                break
            if daemon.poll() is not None:
                sys.exit("daemon died during the burst")
            time.sleep(0.2)
        burst_all = time.perf_counter() - t0
        stop(daemon)

        # 2. idle
        daemon = start_daemon(work, addr, listen, "idle.log", ",keyturn_agent::daemon=debug")
        time.sleep(2)
        rss_after_start = status_kib(daemon.pid, "VmRSS") / 1024
        c0, w0 = cpu_ticks(daemon.pid), time.perf_counter()
        time.sleep(60)
        idle_cpu_s = (cpu_ticks(daemon.pid) - c0) / HZ
        idle_wall = time.perf_counter() - w0
        hwm = status_kib(daemon.pid, "VmHWM") / 1024

        # 3. fire delay: 100 per-minute policies with a 30 s window, by hot reload. Their
        #    never-rotated first slot is catch-up work and the daemon does not log its delay;
        #    every logged delay is a real per-minute slot.
        write_policies(f"{work}/policies/minutely.yaml", [f"m{i:03d}" for i in range(100)],
                       "  schedule: \"* * * * *\"\n  window: 30s\n")
        deadline = time.time() + 240
        while time.time() < deadline:
            fired = [l for l in open(f"{work}/idle.log") if "slot fired" in l and '"policy":"m' in l]
            if len(fired) >= 200:
                break
            time.sleep(1)
        hwm_final = status_kib(daemon.pid, "VmHWM") / 1024
        stop(daemon)
        daemon = None
        scheduled = sorted(json.loads(l)["delay_ms"] for l in open(f"{work}/idle.log")
                           if "slot fired" in l and '"policy":"m' in l)
        p50 = statistics.median(scheduled) if scheduled else float("nan")
        p99 = scheduled[min(len(scheduled) - 1, int(len(scheduled) * 0.99))] if scheduled else float("nan")
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")

        print(f"machine: {os.cpu_count()} cores, {cpu}; load {open('/proc/loadavg').read().split()[0]}")
        print(f"daemon: keyturn run --concurrency 32, {N} generated policies, OpenBao dev server, audit to a file (fsync)")
        print(f"{'':44}{'keyturn':>14}{'anchor (DESIGN.md, not run here)':>36}")
        print(f"{'burst: first ' + str(min(1000, N)) + ' due at once, rot/s':44}{min(1000, N) / first_1000:>14.0f}")
        print(f"{'burst: all ' + str(N) + ' due at once, rot/s':44}{N / burst_all:>14.0f}")
        print(f"{'RSS after start-up, MiB':44}{rss_after_start:>14.1f}{'ESO ~220 MiB @ 1,800; VSO 426 MiB @ 60':>36}")
        print(f"{'peak RSS (VmHWM) idle phase, MiB':44}{hwm:>14.1f}")
        print(f"{'peak RSS incl. per-minute phase, MiB':44}{hwm_final:>14.1f}")
        print(f"{'CPU while idle, % of one core':44}{100 * idle_cpu_s / idle_wall:>14.3f}")
        print(f"{'fire delay p50 / p99, ms (' + str(len(scheduled)) + ' slots)':44}{p50:>7.1f} / {p99:<6.1f}")
        print(f"reproduce: dev/bench-daemon.sh {N}")
    finally:
        if daemon is not None:
            daemon.kill()
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
