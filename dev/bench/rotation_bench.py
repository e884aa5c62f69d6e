#!/usr/bin/env python3
"""Rotation throughput: 100 PostgreSQL users, one policy each, all due at once.

keyturn does the full protocol for each user: generate -> ALTER ROLE (as an admin whose
credential it reads from Vault KV) -> log in as the user with the new password -> promote in
Vault KV (CURRENT/PREVIOUS) -> patch the Kubernetes Secret -> annotate the Deployment, every
step audited (chained, fsynced). The anchor is OpenBao's own database secrets engine doing
`database/rotate-role` on the same 100 users of the same PostgreSQL (no verify, no
distribution).

One run starts, once: an OpenBao dev server, a PostgreSQL 15 (initdb in a temp dir, own port,
fsync=off as in the tests) with 100 login roles and an admin role with CREATEROLE, and the
Kubernetes API stand-in (`keyturn-kube-standin`). Then REPS repetitions, alternating:

  keyturn: fresh never-rotated state (new Vault paths, new policy names, a new namespace with
           the 100 Secrets pre-created holding the initial credential and 100 Deployments);
           `keyturn run --concurrency 32 --restart-window 0s` is started and timed from spawn
           to /readyz and to keyturn_rotations_total{outcome="rotated"} = 100 (polled every
           50 ms). Afterwards every Secret's password must log in to PostgreSQL as its user
           (psql), and every Deployment must carry keyturn.dev/version.
  anchor:  100 concurrent POST database/rotate-role/NAME (thread pool of 32, keep-alive
           connections) against static roles created once at set-up (rotation_period 24h,
           the connection with the plugin's default pool settings).

Usage: dev/bench-rotation.sh [REPS]   (expects release builds of keyturn and
keyturn-kube-standin; dev/bench-rotation.sh makes them)
"""
import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BAO = os.path.join(ROOT, ".keyturn", "bin", "bao")
KEYTURN = os.path.join(ROOT, "target", "release", "keyturn")
STANDIN = os.path.join(ROOT, "target", "release", "keyturn-kube-standin")
PGBIN = "/usr/lib/postgresql/15/bin"
REPS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
N = 100
THREADS = 32
TOKEN = "bench-root"
ADMIN = "bench_admin"
USERS = [f"bench_u{i:03d}" for i in range(N)]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def request(url, method="GET", body=None, headers=None, timeout=30, context=None):
    """(status, parsed JSON or None). Never raises on an HTTP error status. `context`: an
    ssl.SSLContext for an HTTPS server with a CA of its own (the Kubernetes stand-in)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, method=method, data=data,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            text = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        text, status = e.read(), e.code
    except Exception:
        return None, None
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text.decode(errors="replace")


def ok(result, what):
    status, body = result
    if status is None or status >= 300:
        sys.exit(f"{what}: HTTP {status}: {str(body)[:500]}")
    return body


class Vault:
    def __init__(self, addr):
        self.addr = addr

    def __call__(self, method, path, body=None):
        return request(f"{self.addr}/v1/{path}", method, body, {"X-Vault-Token": TOKEN})


class Kube:
    def __init__(self, url, token, ca_file):
        self.url, self.token = url, token
        # The stand-in serves HTTPS with a CA of its own (--ca-cert writes it).
        self.tls = ssl.create_default_context(cafile=ca_file)

    def __call__(self, method, path, body=None):
        return request(f"{self.url}{path}", method, body, {"Authorization": f"Bearer {self.token}"},
                       context=self.tls)


def parallel(fn, items, threads=THREADS):
    with ThreadPoolExecutor(threads) as ex:
        return list(ex.map(fn, items))


HZ = os.sysconf("SC_CLK_TCK")


def stat(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_s(pid):
    """CPU seconds of pid and its children, live and reaped (PostgreSQL's backends when pid
    is the postmaster)."""
    f = stat(pid)
    if f is None:
        return 0.0
    ticks = sum(int(x) for x in f[11:15])
    for child in os.listdir("/proc"):
        if child.isdigit() and (c := stat(child)) is not None and c[1] == str(pid):
            ticks += sum(int(x) for x in c[11:15])
    return ticks / HZ


def cpu_snapshot(ctx):
    return {name: cpu_s(pid) for name, pid in ctx["pids"].items()}


def cpu_delta(before, after):
    return {k: after[k] - before[k] for k in before}


def metric_sum(text, outcome):
    return sum(float(m) for m in re.findall(
        r'keyturn_rotations_total\{[^}]*outcome="' + outcome + r'"[^}]*\} (\S+)', text))


# ---------------------------------------------------------------- servers

def is_root():
    return os.geteuid() == 0


def as_pg_user(argv):
    """PostgreSQL refuses to run as root; then it runs as the Debian package's user."""
    if is_root():
        return ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--init-groups", "--", *argv]
    return argv


def start_postgres(work):
    d = f"{work}/pg"
    os.mkdir(d)
    su_password = "su-" + os.urandom(12).hex()
    with open(f"{d}/pw", "w") as f:
        f.write(su_password)
    if is_root():
        subprocess.run(["chown", "-R", "postgres:postgres", d], check=True)
        os.chmod(work, 0o711)  # the server user must reach its data directory
    out = subprocess.run(as_pg_user([f"{PGBIN}/initdb", "-D", f"{d}/data", "-U", "postgres", "-A",
                                     "scram-sha-256", "--no-sync", "-E", "UTF8", f"--pwfile={d}/pw"]),
                         capture_output=True, text=True)
    os.remove(f"{d}/pw")
    if out.returncode != 0:
        sys.exit(f"initdb failed: {out.stderr}")
    port = free_port()
    log = open(f"{d}/postgres.log", "w")
    proc = subprocess.Popen(as_pg_user([f"{PGBIN}/postgres", "-D", f"{d}/data", "-p", str(port),
                                        "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={d}",
                                        "-c", "fsync=off", "-c", "max_connections=200"]),
                            stdout=log, stderr=log)
    return proc, port, su_password


def psql(port, user, password, sql, check=True):
    env = {"PATH": os.environ.get("PATH", ""), "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"}
    out = subprocess.run([f"{PGBIN}/psql", "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", "postgres",
                          "-w", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql],
                         env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        sys.exit(f"psql as {user} failed: {out.stderr.strip()}")
    return out


def wait_for(cond, what, timeout=60, every=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(every)
    sys.exit(f"{what} did not come up within {timeout} s")


def stop(p, sig=signal.SIGTERM, timeout=60):
    if p is None or p.poll() is not None:
        return
    p.send_signal(sig)
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


# ---------------------------------------------------------------- one keyturn repetition

def policy_yaml(rep, i, pg_port):
    return (f"---\napiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: {{ name: r{rep}-u{i:03d} }}\n"
            f"spec:\n  every: 24h\n"
            f"  store: {{ vault-kv: {{ path: bench/r{rep}/u{i:03d} }} }}\n"
            f"  target:\n    postgres:\n      host: 127.0.0.1\n      port: {pg_port}\n      database: postgres\n"
            f"      admin: {{ vault-kv: {{ path: bench/pg-admin }} }}\n"
            f"      users: [{USERS[i]}]\n      strategy: single\n"
            f"  distribute:\n"
            f"    - kubernetes: {{ namespace: bench-r{rep}, secret: db-u{i:03d}, keys: {{ username: username, password: password }} }}\n"
            f"      restart: [ {{ kind: Deployment, name: app-{i:03d} }} ]\n")


def deployment(name):
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}}}}


def b64(s):
    return base64.b64encode(s.encode()).decode()


def keyturn_rep(rep, ctx):
    vault, kube, pg_port, su_password, work = ctx["vault"], ctx["kube"], ctx["pg_port"], ctx["su"], ctx["work"]
    ns = f"bench-r{rep}"
    # Fresh, never-rotated state. The users get a known password again (the anchor changed
    # them), stored as CURRENT at the new paths and pre-created in the Secrets, as Helm would.
    initial = {u: f"init-r{rep}-{os.urandom(8).hex()}" for u in USERS}
    psql(pg_port, "postgres", su_password,
         "".join(f"ALTER ROLE {u} PASSWORD '{initial[u]}';" for u in USERS))
    parallel(lambda i: ok(vault("POST", f"secret/data/bench/r{rep}/u{i:03d}",
                                {"data": {"username": USERS[i], "password": initial[USERS[i]]}}),
                          "store the initial credential"), range(N))
    parallel(lambda i: ok(kube("POST", f"/api/v1/namespaces/{ns}/secrets",
                               {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"db-u{i:03d}"},
                                "type": "Opaque",
                                "data": {"username": b64(USERS[i]), "password": b64(initial[USERS[i]])}}),
                          "create Secret"), range(N))
    parallel(lambda i: ok(kube("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", deployment(f"app-{i:03d}")),
                          "create Deployment"), range(N))
    pdir = f"{work}/policies-r{rep}"
    os.mkdir(pdir)
    with open(f"{pdir}/bench.yaml", "w") as f:
        for i in range(N):
            f.write(policy_yaml(rep, i, pg_port))

    listen = f"127.0.0.1:{free_port()}"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": work, "VAULT_ADDR": vault.addr, "VAULT_TOKEN": TOKEN,
           "KUBECONFIG": ctx["kubeconfig"], "KEYTURN_POLICIES": pdir, "KEYTURN_HOLDER": "bench",
           "KEYTURN_AUDIT_FILE": f"{work}/audit-r{rep}.jsonl", "KEYTURN_AUDIT_HMAC_KEY_FILE": f"{work}/hmac.key",
           "KEYTURN_LOG": "warn"}
    logf = f"{work}/keyturn-r{rep}.log"
    log = open(logf, "w")
    cpu0 = cpu_snapshot(ctx)
    t0 = time.perf_counter()
    daemon = subprocess.Popen([KEYTURN, "run", "--listen", listen, "--concurrency", "32", "--restart-window", "0s"],
                              env=env, stdout=log, stderr=log)
    ctx["daemon"] = daemon
    try:
        def died():
            if daemon.poll() is not None:
                sys.exit(f"keyturn run exited {daemon.returncode}: {open(logf).read()[-3000:]}")
        while True:  # start-up, polled finely: it is short
            if request(f"http://{listen}/readyz", timeout=2)[0] == 200:
                break
            died()
            if time.perf_counter() - t0 > 120:
                sys.exit("keyturn run never became ready")
            time.sleep(0.005)
        t_ready = time.perf_counter()
        while True:
            _, text = request(f"http://{listen}/metrics", timeout=5)
            text = text if isinstance(text, str) else ""
            if metric_sum(text, "rotated") >= N:
                break
            bad = {o: metric_sum(text, o) for o in ("failed", "error", "busy")}
            if any(bad.values()):
                sys.exit(f"keyturn repetition {rep}: {bad}; log: {open(logf).read()[-3000:]}")
            died()
            if time.perf_counter() - t0 > 600:
                sys.exit(f"keyturn repetition {rep}: only {metric_sum(text, 'rotated'):.0f} of {N} rotated in 600 s")
            time.sleep(0.05)
        t_done = time.perf_counter()
        cpu = cpu_delta(cpu0, cpu_snapshot(ctx))
        cpu["keyturn"] = cpu_s(daemon.pid)
    finally:
        stop(daemon)
        ctx["daemon"] = None

    # The audit log's own clock: first rotate.create to last rotate.done.
    times = {}
    for line in open(f"{work}/audit-r{rep}.jsonl"):
        ev = json.loads(line)
        if ev.get("action") in ("rotate.create", "rotate.done"):
            t = datetime.fromisoformat(ev["time"].replace("Z", "+00:00")).timestamp()
            times.setdefault(ev["action"], []).append(t)
    if len(times.get("rotate.done", [])) != N:
        sys.exit(f"keyturn repetition {rep}: {len(times.get('rotate.done', []))} rotate.done audit events, not {N}")
    span = max(times["rotate.done"]) - min(times["rotate.create"])

    # Every Secret logs in as its user with a new password; every Deployment was annotated.
    def check(i):
        s = ok(kube("GET", f"/api/v1/namespaces/{ns}/secrets/db-u{i:03d}"), "read Secret")
        user = base64.b64decode(s["data"]["username"]).decode()
        password = base64.b64decode(s["data"]["password"]).decode()
        if user != USERS[i] or password == initial[USERS[i]]:
            return f"db-u{i:03d}: not rotated (user {user})"
        out = psql(pg_port, user, password, "SELECT current_user", check=False)
        if out.returncode != 0 or out.stdout.strip() != user:
            return f"db-u{i:03d}: the Secret's password does not log in as {user}: {out.stderr.strip()}"
        d = ok(kube("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/app-{i:03d}"), "read Deployment")
        ann = ((d["spec"]["template"].get("metadata") or {}).get("annotations") or {})
        if not ann.get("keyturn.dev/version"):
            return f"app-{i:03d}: no keyturn.dev/version annotation"
        return None
    problems = [p for p in parallel(check, range(N), threads=8) if p]
    if problems:
        sys.exit(f"keyturn repetition {rep} verification failed:\n  " + "\n  ".join(problems[:10]))
    return {"startup": t_ready - t0, "total": t_done - t0, "after_ready": t_done - t_ready, "span": span, "cpu": cpu}


# ---------------------------------------------------------------- the anchor

def anchor_setup(vault, pg_port, admin_password):
    ok(vault("POST", "sys/mounts/database", {"type": "database"}), "enable the database engine")
    ok(vault("POST", "database/config/benchpg", {
        "plugin_name": "postgresql-database-plugin",
        "connection_url": f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{pg_port}/postgres?sslmode=disable",
        "username": ADMIN, "password": admin_password, "allowed_roles": "*"}), "configure the connection")
    # Creating a static role rotates its password once.
    parallel(lambda u: ok(vault("POST", f"database/static-roles/{u}",
                                {"db_name": "benchpg", "username": u, "rotation_period": "24h"}),
                          f"create static role {u}"), USERS)


def anchor_rep(vault_port, ctx):
    import threading
    local = threading.local()

    def rotate(u):
        c = getattr(local, "conn", None)
        if c is None:
            c = local.conn = http.client.HTTPConnection("127.0.0.1", vault_port, timeout=60)
        c.request("POST", f"/v1/database/rotate-role/{u}", headers={"X-Vault-Token": TOKEN})
        r = c.getresponse()
        body = r.read()
        return r.status, body

    with ThreadPoolExecutor(THREADS) as ex:
        cpu0 = cpu_snapshot(ctx)
        t0 = time.perf_counter()
        results = list(ex.map(rotate, USERS))
        wall = time.perf_counter() - t0
        cpu = cpu_delta(cpu0, cpu_snapshot(ctx))
    bad = [(u, s, b[:200]) for u, (s, b) in zip(USERS, results) if s >= 300]
    if bad:
        sys.exit(f"anchor: rotate-role failed: {bad[:5]}")
    return wall, cpu


def anchor_check(vault, pg_port):
    u = USERS[N // 2]
    creds = ok(vault("GET", f"database/static-creds/{u}"), "read static creds")["data"]
    out = psql(pg_port, u, creds["password"], "SELECT current_user", check=False)
    if out.stdout.strip() != u:
        sys.exit(f"anchor: the static role's password does not log in as {u}: {out.stderr.strip()}")


# ---------------------------------------------------------------- PostgreSQL's own costs

def scram_verifier(password):
    """A SCRAM-SHA-256 verifier as PostgreSQL stores it (4096 iterations, its default)."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 4096)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b = lambda x: base64.b64encode(x).decode()
    return f"SCRAM-SHA-256$4096:{b(salt)}${b(hashlib.sha256(client_key).digest())}:{b(server_key)}"


def pg_costs(ctx):
    """PostgreSQL's CPU for the two statements a rotation costs it, measured alone on the same
    server: ALTER ROLE with a verifier (what keyturn sends; the anchor's plaintext ALTER costs
    the server about the same, as PostgreSQL hashes it) and one SCRAM login (keyturn's verify).
    Returns ms per ALTER (its session's own login included, spread over the 100) and per
    login."""
    port, su, pid = ctx["pg_port"], ctx["su"], ctx["pids"]["postgres"]
    passwords = {u: "cost-" + os.urandom(12).hex() for u in USERS}
    settle = 1.0  # a backend's CPU is counted once the postmaster has reaped it
    time.sleep(settle)
    c0 = cpu_s(pid)
    psql(port, "postgres", su, "".join(f"ALTER ROLE {u} PASSWORD '{scram_verifier(passwords[u])}';" for u in USERS))
    time.sleep(settle)
    c1 = cpu_s(pid)
    for u in USERS:
        psql(port, u, passwords[u], "SELECT 1")
    time.sleep(settle)
    c2 = cpu_s(pid)
    return (c1 - c0) * 1000 / N, (c2 - c1) * 1000 / N


# ---------------------------------------------------------------- main

def main():
    for b in (KEYTURN, STANDIN, BAO):
        if not os.path.exists(b):
            sys.exit(f"{b} missing: dev/bench-rotation.sh builds and installs it")
    load_start = open("/proc/loadavg").read().split()[:3]
    work = tempfile.mkdtemp(prefix="keyturn-bench-rotation-")
    ctx = {"work": work, "daemon": None}
    procs = []
    try:
        with os.fdopen(os.open(f"{work}/hmac.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(os.urandom(32))
        vault_port = free_port()
        vault = Vault(f"http://127.0.0.1:{vault_port}")
        bao = subprocess.Popen([BAO, "server", "-dev", f"-dev-listen-address=127.0.0.1:{vault_port}",
                                f"-dev-root-token-id={TOKEN}", "-dev-no-store-token", "-log-level=error"],
                               stdout=subprocess.DEVNULL, stderr=open(f"{work}/bao.log", "w"),
                               env={**os.environ, "HOME": work})
        procs.append((bao, signal.SIGTERM))
        pg, pg_port, su_password = start_postgres(work)
        procs.append((pg, signal.SIGINT))  # SIGINT: PostgreSQL's fast shutdown
        kubeconfig = f"{work}/kubeconfig"
        kube_ca = f"{work}/kube-ca.pem"
        standin = subprocess.Popen([STANDIN, "--listen", "127.0.0.1:0", "--kubeconfig", kubeconfig,
                                    "--ca-cert", kube_ca],
                                   stdout=subprocess.PIPE, stderr=open(f"{work}/standin.log", "w"), text=True)
        procs.append((standin, signal.SIGTERM))
        kube_url = standin.stdout.readline().strip()
        if not kube_url.startswith("http"):
            sys.exit(f"keyturn-kube-standin did not start: {open(f'{work}/standin.log').read()[-2000:]}")
        kube_token = re.search(r"^\s*token: (\S+)", open(kubeconfig).read(), re.M).group(1)
        kube = Kube(kube_url, kube_token, kube_ca)

        wait_for(lambda: request(f"{vault.addr}/v1/sys/health", timeout=2)[0] == 200, "OpenBao")
        wait_for(lambda: psql(pg_port, "postgres", su_password, "SELECT 1", check=False).returncode == 0,
                 "PostgreSQL", every=0.2)
        admin_password = "admin-" + os.urandom(16).hex()
        psql(pg_port, "postgres", su_password,
             f"CREATE ROLE {ADMIN} LOGIN CREATEROLE PASSWORD '{admin_password}';"
             + "".join(f"CREATE ROLE {u} LOGIN;" for u in USERS))
        ok(vault("POST", "secret/data/bench/pg-admin", {"data": {"username": ADMIN, "password": admin_password}}),
           "store the admin credential")
        ctx.update(vault=vault, kube=kube, pg_port=pg_port, su=su_password, kubeconfig=kubeconfig,
                   pids={"openbao": bao.pid, "postgres": pg.pid, "k8s stand-in": standin.pid})
        anchor_setup(vault, pg_port, admin_password)

        kt, an = [], []
        for rep in range(1, REPS + 1):
            kt.append(keyturn_rep(rep, ctx))
            an.append(anchor_rep(vault_port, ctx))
            anchor_check(vault, pg_port)
            print(f"rep {rep}: keyturn {N / kt[-1]['total']:6.0f} rot/s incl. start-up "
                  f"({N / kt[-1]['after_ready']:.0f} after /readyz, start-up {kt[-1]['startup'] * 1000:.0f} ms); "
                  f"anchor {N / an[-1][0]:6.0f} rot/s", file=sys.stderr)

        alter_ms, login_ms = pg_costs(ctx)
        med = statistics.median
        k_total = N / med(r["total"] for r in kt)
        k_ready = N / med(r["after_ready"] for r in kt)
        k_span = N / med(r["span"] for r in kt)
        a_cpu = {k: med(c[k] for _, c in an) for k in an[0][1]}
        k_cpu = {k: med(r["cpu"][k] for r in kt) for k in kt[0]["cpu"]}
        an = [w for w, _ in an]
        a_rate = N / med(an)
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
        bao_version = subprocess.run([BAO, "version"], capture_output=True, text=True).stdout.split()[1]
        pg_version = re.search(r"\d+\.\d+", subprocess.run([f"{PGBIN}/postgres", "--version"], capture_output=True,
                                                           text=True).stdout).group(0)
        load_end = open("/proc/loadavg").read().split()[:3]
        print(f"machine: {os.cpu_count()} cores, {cpu}; load {' '.join(load_start)} at start, {' '.join(load_end)} at end")
        print(f"servers: OpenBao {bao_version} dev (in memory), PostgreSQL {pg_version} (fsync=off), Kubernetes API stand-in; all on loopback")
        print(f"workload: {N} PostgreSQL users, one policy each, all due at once; {REPS} repetitions, alternating; medians")
        print("  keyturn: keyturn run --concurrency 32 --restart-window 0s; generate, ALTER ROLE as an admin read from Vault KV,")
        print("           verify login, promote in Vault KV, patch Secret, annotate Deployment; audit chained + fsynced")
        print(f"  anchor:  OpenBao database/rotate-role on static roles ({THREADS} concurrent clients); no verify, no distribution")
        print(f"{'':52}{'rot/s':>8}{'wall ms':>10}")
        print(f"{'anchor: OpenBao database/rotate-role':52}{a_rate:>8.0f}{med(an) * 1000:>10.0f}")
        print(f"{'keyturn: spawn -> 100 rotated (incl. start-up)':52}{k_total:>8.0f}{med(r['total'] for r in kt) * 1000:>10.0f}")
        print(f"{'keyturn: /readyz -> 100 rotated (excl. start-up)':52}{k_ready:>8.0f}{med(r['after_ready'] for r in kt) * 1000:>10.0f}")
        print(f"{'keyturn: first create -> last done (audit clock)':52}{k_span:>8.0f}{med(r['span'] for r in kt) * 1000:>10.0f}")
        print(f"{'keyturn start-up: spawn -> /readyz':52}{'':>8}{med(r['startup'] for r in kt) * 1000:>10.0f}")
        fmt = lambda c: ", ".join(f"{k} {v:.2f}" for k, v in c.items())
        print(f"CPU s per repetition (medians), keyturn: {fmt(k_cpu)}")
        print(f"CPU s per repetition (medians), anchor:  {fmt(a_cpu)}")
        print(f"PostgreSQL CPU per rotation: anchor {a_cpu['postgres'] * 1000 / N:.1f} ms, keyturn {k_cpu['postgres'] * 1000 / N:.1f} ms; "
              f"measured alone: ALTER ROLE {alter_ms:.1f} ms, SCRAM login {login_ms:.1f} ms "
              "(the anchor's rotation is one ALTER; keyturn's is one ALTER plus its verify login)")
        print(f"ratio keyturn/anchor: {k_total / a_rate:.2f}x incl. start-up, {k_ready / a_rate:.2f}x excl. (target >= 1x)")
        print(f"verified: every repetition, all {N} Secrets log in to PostgreSQL as their user (psql) and all {N} "
              "Deployments carry keyturn.dev/version")
        print(f"reproduce: dev/bench-rotation.sh {REPS}")
    finally:
        if ctx.get("daemon") is not None:
            ctx["daemon"].kill()
            ctx["daemon"].wait()
        for p, sig in reversed(procs):
            stop(p, sig, timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
