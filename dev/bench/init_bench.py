#!/usr/bin/env python3
"""keyturn-init against `bao agent`: 50 KV v2 secrets via AppRole into a tmpfs directory.

Both run against the same OpenBao dev server, in the same run, alternating, so the machine's
noise hits both alike. Reports medians of wall time and peak RSS (from wait4's rusage, per
child), their ratios, and the raw server time for the 50 reads as the floor.

Usage: dev/bench-init.sh [RUNS]   (this file is its driver; it expects a release build)
"""
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BAO = os.path.join(ROOT, ".keyturn", "bin", "bao")
INIT = os.path.join(ROOT, "target", "release", "keyturn-init")
N_SECRETS = 50
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 15
TOKEN = "bench-root"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def api(addr, method, path, body=None, token=TOKEN):
    req = urllib.request.Request(
        f"{addr}/v1/{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"X-Vault-Token": token, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        text = r.read()
    return json.loads(text) if text else None


def run_measured(argv, env, rss_file):
    """Runs argv; returns (wall seconds, peak RSS MiB) of that program.

    Peak RSS comes from GNU time, not from wait4 here: Linux carries a process's RSS high-water
    mark across exec, so a child forked from this Python process would report Python's RSS.
    GNU time's own forked child is about 1-2 MiB before exec; /bin/true's figure is printed as
    that floor."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file, *argv], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{argv[0]} exited {p.returncode}:\n{p.stderr.decode(errors='replace')}")
    with open(rss_file) as f:
        kib = int(f.read().split()[-1])
    return wall, kib / 1024.0


def main():
    if not os.path.exists(INIT):
        sys.exit(f"{INIT} missing: run `cargo build --release -p keyturn-init` (dev/bench-init.sh does)")
    shm = tempfile.mkdtemp(prefix="keyturn-bench-", dir="/dev/shm")
    port = free_port()
    addr = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [BAO, "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}",
         f"-dev-root-token-id={TOKEN}", "-dev-no-store-token", "-log-level=error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HOME": shm},
    )
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{addr}/v1/sys/health")
                break
            except Exception:
                time.sleep(0.05)
        # Same identity for both: an AppRole that may read the bench secrets.
        api(addr, "POST", "sys/auth/approle", {"type": "approle"})
        api(addr, "PUT", "sys/policies/acl/bench", {"policy": 'path "secret/data/bench/*" { capabilities = ["read"] }'})
        api(addr, "POST", "auth/approle/role/bench", {"token_policies": ["bench"], "token_ttl": "10m"})
        role_id = api(addr, "GET", "auth/approle/role/bench/role-id")["data"]["role_id"]
        secret_id = api(addr, "POST", "auth/approle/role/bench/secret-id")["data"]["secret_id"]
        for i in range(N_SECRETS):
            api(addr, "POST", f"secret/data/bench/s{i}",
                {"data": {"username": f"user{i}", "password": f"pw-{i}-" + "x" * 24, "host": "db.internal"}})
        with open(f"{shm}/role-id", "w") as f:
            f.write(role_id)
        with open(f"{shm}/secret-id", "w") as f:
            f.write(secret_id)

        # keyturn-init: one manifest, 50 secrets, the password field of each as a raw file.
        manifest = {
            "vault": {"auth": "approle", "role-id-file": f"{shm}/role-id", "secret-id-file": f"{shm}/secret-id"},
            "secrets": [{"path": f"secret/data/bench/s{i}", "file": f"s{i}", "format": "raw", "key": "password"}
                        for i in range(N_SECRETS)],
        }
        with open(f"{shm}/manifest.json", "w") as f:
            json.dump(manifest, f)
        # bao agent: the equivalent config, one template per secret, exit after auth.
        templates = "".join(
            f'template {{\n  contents = "{{{{ with secret \\"secret/data/bench/s{i}\\" }}}}{{{{ .Data.data.password }}}}{{{{ end }}}}"\n'
            f'  destination = "{shm}/agent-out/s{i}"\n  perms = "0400"\n}}\n'
            for i in range(N_SECRETS))
        with open(f"{shm}/agent.hcl", "w") as f:
            f.write(f"""
exit_after_auth = true
vault {{ address = "{addr}" }}
auto_auth {{
  method "approle" {{
    config = {{
      role_id_file_path = "{shm}/role-id"
      secret_id_file_path = "{shm}/secret-id"
      remove_secret_id_file_after_reading = false
    }}
  }}
}}
template_config {{ exit_on_retry_failure = true }}
{templates}""")

        key = os.path.join(shm, "audit.key")
        with open(key, "wb") as f:
            f.write(os.urandom(32))
        base_env = {"PATH": os.environ.get("PATH", ""), "HOME": shm, "VAULT_ADDR": addr}
        kt_env = {**base_env, "KEYTURN_AUDIT_HMAC_KEY_FILE": key}
        kt, ag = [], []
        for r in range(RUNS):
            for name in (["keyturn", "agent"] if r % 2 == 0 else ["agent", "keyturn"]):
                if name == "keyturn":
                    out = f"{shm}/kt-out"
                    shutil.rmtree(out, ignore_errors=True)
                    os.mkdir(out)
                    env = {**kt_env, "KEYTURN_AUDIT_FILE": f"{shm}/audit-{r}.jsonl"}
                    kt.append(run_measured([INIT, "--manifest", f"{shm}/manifest.json", "--out", out], env, f"{shm}/rss"))
                    assert len(os.listdir(out)) == N_SECRETS, "keyturn-init wrote the wrong number of files"
                else:
                    out = f"{shm}/agent-out"
                    shutil.rmtree(out, ignore_errors=True)
                    os.mkdir(out)
                    ag.append(run_measured([BAO, "agent", f"-config={shm}/agent.hcl", "-log-level=error"], base_env, f"{shm}/rss"))
                    assert len(os.listdir(out)) == N_SECRETS, "bao agent wrote the wrong number of files"
        same = all(open(f"{shm}/kt-out/s{i}").read() == open(f"{shm}/agent-out/s{i}").read() for i in range(N_SECRETS))
        assert same, "keyturn-init and bao agent rendered different contents"

        # The floor: the server's own time for 50 reads over one keep-alive connection.
        tok = api(addr, "POST", "auth/approle/login", {"role_id": role_id, "secret_id": secret_id}, token="")["auth"]["client_token"]
        import http.client
        floors = []
        for _ in range(RUNS):
            c = http.client.HTTPConnection("127.0.0.1", port)
            t0 = time.perf_counter()
            for i in range(N_SECRETS):
                c.request("GET", f"/v1/secret/data/bench/s{i}", headers={"X-Vault-Token": tok})
                c.getresponse().read()
            floors.append(time.perf_counter() - t0)
            c.close()

        # The same 50 reads, 16 at a time (keyturn-init's concurrency), each thread on its
        # own keep-alive connection: what the server needs when the client costs nothing.
        import threading
        from concurrent.futures import ThreadPoolExecutor
        local = threading.local()

        def read(i):
            c = getattr(local, "c", None)
            if c is None:
                c = local.c = http.client.HTTPConnection("127.0.0.1", port)
            c.request("GET", f"/v1/secret/data/bench/s{i}", headers={"X-Vault-Token": tok})
            c.getresponse().read()

        concurrent_floors = []
        for _ in range(RUNS):
            with ThreadPoolExecutor(16) as ex:
                t0 = time.perf_counter()
                list(ex.map(read, range(N_SECRETS)))
                concurrent_floors.append(time.perf_counter() - t0)

        med = statistics.median
        kt_wall, kt_rss = med(w for w, _ in kt), med(m for _, m in kt)
        ag_wall, ag_rss = med(w for w, _ in ag), med(m for _, m in ag)
        size = os.path.getsize(INIT) / (1024 * 1024)
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
        print(f"machine: {os.cpu_count()} cores, {cpu}; OpenBao {subprocess.run([BAO, 'version'], capture_output=True, text=True).stdout.split()[1]}")
        print(f"workload: login (AppRole) + {N_SECRETS} KV v2 reads + write to tmpfs; {RUNS} runs each, alternating; medians")
        print(f"{'':24}{'wall ms':>10}{'peak RSS MiB':>14}")
        print(f"{'bao agent':24}{ag_wall * 1000:>10.1f}{ag_rss:>14.1f}")
        print(f"{'keyturn-init':24}{kt_wall * 1000:>10.1f}{kt_rss:>14.1f}")
        print(f"{'ratio (agent/keyturn)':24}{ag_wall / kt_wall:>9.1f}x{ag_rss / kt_rss:>13.1f}x")
        print(f"{'floor: 50 raw reads':24}{med(floors) * 1000:>10.1f}   (one after another, one connection)")
        print(f"{'floor: 50 raw reads':24}{med(concurrent_floors) * 1000:>10.1f}   (16 at a time; no login, no revoke, no process)")
        true_rss = run_measured(["/bin/true"], base_env, f"{shm}/rss")[1]
        print(f"{'floor: /bin/true':24}{'':>10}{true_rss:>14.1f}")
        print(f"keyturn-init release binary: {size:.1f} MiB")
        print("reproduce: dev/bench-init.sh " + str(RUNS))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(shm, ignore_errors=True)


if __name__ == "__main__":
    main()
