#!/usr/bin/env python3
"""An init burst like a node drain: 100 pods' init containers start at once against one OpenBao.

100 concurrent `keyturn-init` processes against 100 concurrent `bao agent` processes
(`exit_after_auth = true`), each process logging in with AppRole and rendering the same 5 KV v2
secrets through one template each into a tmpfs directory of its own. Each set of 100 is held
at a gate until all 100 are spawned, then released together. Both sets run against the same
OpenBao dev server in the same run, alternating, so the machine's noise hits both alike.

Measured per set: the time from the gate opening until the last of the 100 exits (every
expected file is then checked, content included), and the sum of the 100 peak RSS values.
Reports medians over RUNS, their ratios, and the design's targets.

Usage: dev/bench-burst.sh [RUNS]   (this file is its driver; it expects a release build)
"""
import json
import os
import platform
import resource
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
PODS = 100
N_SECRETS = 5
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
TOKEN = "bench-root"
# The design's targets for this workload: all-ready at least 5x sooner, at least
# 8x less memory.
TARGET_SPEED = 5.0
TARGET_MEMORY = 8.0
# Holds each child at exec until the gate opens: `read` returns when the parent closes the
# child's stdin pipe. The shell then execs the program in place (same pid, so GNU time's
# wait4 sees the program's own exit and rusage).
GATE = 'read _ || :; exec "$0" "$@"'


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


def template(i):
    """The template both sides render for secret i (Vault Agent syntax, which keyturn-init
    reads too)."""
    return (f'{{{{ with secret "secret/data/burst/s{i}" }}}}'
            "postgres://{{ .Data.data.username }}:{{ .Data.data.password }}"
            "@{{ .Data.data.host }}:5432/app{{ end }}")


def expected(i):
    return f"postgres://user{i}:pw-{i}-{'x' * 24}@db{i}.internal:5432/app"


def waiting_in_gate(pids):
    """How many of the GNU time processes `pids` have a child blocked in the gate's `read`."""
    n = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                kids = f.read().split()
            for kid in kids:
                with open(f"/proc/{kid}/stat") as f:
                    stat = f.read()
                # The shell asleep (state S): it sleeps only in the gate's read.
                comm = stat[stat.index("(") + 1:stat.rindex(")")]
                if comm == "sh" and stat.rsplit(")", 1)[1].split()[0] == "S":
                    n += 1
        except FileNotFoundError:
            pass
    return n


def busy_share(seconds):
    """The share of all CPUs' time spent busy (anything but idle and iowait) over `seconds`."""
    def sample():
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]
    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def cpu_seconds(pid):
    """User + system CPU seconds of a running process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def burst(argvs, envs, logs, rss_files, server_pid):
    """Spawns every argv held at the gate, opens the gate, reaps all.

    Returns (seconds from the gate opening to the last exit, each child's seconds to its
    exit, each child's peak RSS in MiB, the children's CPU seconds, the server's CPU seconds
    meanwhile). Peak RSS comes from GNU time, one per child: a child
    forked by this Python process would report Python's RSS, since Linux carries the RSS
    high-water mark across exec; GNU time's own fork is about 1 MiB before exec, and the gate's
    `sh` about as much (the /bin/true floor printed covers both)."""
    pids, gates = [], []
    for argv, env, log, rss in zip(argvs, envs, logs, rss_files):
        r, w = os.pipe()
        err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        pid = os.posix_spawn(
            "/usr/bin/time",
            ["/usr/bin/time", "-f", "%M", "-o", rss, "/bin/sh", "-c", GATE, *argv],
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, r, 0),
                (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, err, 2),
            ],
        )
        os.close(r)
        os.close(err)
        pids.append(pid)
        gates.append(w)
    deadline = time.monotonic() + 60
    while waiting_in_gate(pids) < len(pids):
        if time.monotonic() > deadline:
            sys.exit("the children did not all reach the gate within 60 s")
        time.sleep(0.05)
    done = {}
    cpu = 0.0
    server0 = cpu_seconds(server_pid)
    t0 = time.perf_counter()
    for w in gates:
        os.close(w)
    while len(done) < len(pids):
        pid, status, usage = os.wait4(-1, 0)
        if pid not in pids:
            sys.exit(f"process {pid} (the OpenBao server) exited during the burst")
        done[pid] = (time.perf_counter() - t0, os.waitstatus_to_exitcode(status))
        # GNU time's rusage includes the program it waited for.
        cpu += usage.ru_utime + usage.ru_stime
    server_cpu = cpu_seconds(server_pid) - server0
    wall = max(t for t, _ in done.values())
    for pid, log in zip(pids, logs):
        code = done[pid][1]
        if code != 0:
            with open(log, errors="replace") as f:
                sys.exit(f"a child exited {code}:\n{f.read()}")
    rss = []
    for path in rss_files:
        with open(path) as f:
            rss.append(int(f.read().split()[-1]) / 1024.0)
    return wall, sorted(t for t, _ in done.values()), rss, cpu, server_cpu


def check_outputs(dirs):
    for d in dirs:
        for i in range(N_SECRETS):
            path = os.path.join(d, f"s{i}.url")
            with open(path) as f:
                got = f.read()
            assert got == expected(i), f"{path} holds the wrong content"


def main():
    if not os.path.exists(INIT):
        sys.exit(f"{INIT} missing: run `cargo build --release -p keyturn-init` (dev/bench-burst.sh does)")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * PODS + 256:
        sys.exit(f"open-file limit {soft} is too low for {PODS} children and the server (raise ulimit -n)")
    shm = tempfile.mkdtemp(prefix="keyturn-burst-", dir="/dev/shm")
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
        # Same identity for every process of both sides: one AppRole, one secret id with
        # unlimited uses (kubernetes auth would need the API stand-in as token reviewer; AppRole
        # is one login request on both sides, so it costs both the same).
        api(addr, "POST", "sys/auth/approle", {"type": "approle"})
        api(addr, "PUT", "sys/policies/acl/burst", {"policy": 'path "secret/data/burst/*" { capabilities = ["read"] }'})
        api(addr, "POST", "auth/approle/role/burst", {"token_policies": ["burst"], "token_ttl": "10m", "secret_id_num_uses": 0})
        role_id = api(addr, "GET", "auth/approle/role/burst/role-id")["data"]["role_id"]
        secret_id = api(addr, "POST", "auth/approle/role/burst/secret-id")["data"]["secret_id"]
        for i in range(N_SECRETS):
            api(addr, "POST", f"secret/data/burst/s{i}",
                {"data": {"username": f"user{i}", "password": f"pw-{i}-" + "x" * 24, "host": f"db{i}.internal"}})
        with open(f"{shm}/role-id", "w") as f:
            f.write(role_id)
        with open(f"{shm}/secret-id", "w") as f:
            f.write(secret_id)

        # keyturn-init: one manifest for all 100 (the output directory is a flag).
        manifest = {
            "vault": {"auth": "approle", "role-id-file": f"{shm}/role-id", "secret-id-file": f"{shm}/secret-id"},
            "secrets": [{"path": f"secret/data/burst/s{i}", "file": f"s{i}.url", "template": template(i)}
                        for i in range(N_SECRETS)],
        }
        with open(f"{shm}/manifest.json", "w") as f:
            json.dump(manifest, f)
        # bao agent: the same templates, one config per process (destinations differ).
        for p in range(PODS):
            templates = "".join(
                f"template {{\n  contents = {json.dumps(template(i))}\n"
                f'  destination = "{shm}/ag-{p}/s{i}.url"\n  perms = "0400"\n}}\n'
                for i in range(N_SECRETS))
            with open(f"{shm}/agent-{p}.hcl", "w") as f:
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
        rss_files = [f"{shm}/rss-{p}" for p in range(PODS)]
        logs = [f"{shm}/log-{p}" for p in range(PODS)]

        def fresh(prefix):
            dirs = [f"{shm}/{prefix}-{p}" for p in range(PODS)]
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
                os.mkdir(d)
            return dirs

        kt, ag = [], []
        # How busy the machine is with everything else, over 2 s before the first burst (the
        # load average would not do: each burst's 100 runnable processes dominate it for a
        # minute after).
        busy = busy_share(2.0)
        for r in range(RUNS):
            for name in (["keyturn", "agent"] if r % 2 == 0 else ["agent", "keyturn"]):
                if name == "keyturn":
                    dirs = fresh("kt")
                    argvs = [[INIT, "--manifest", f"{shm}/manifest.json", "--out", d] for d in dirs]
                    envs = [{**base_env, "KEYTURN_AUDIT_HMAC_KEY_FILE": key,
                             "KEYTURN_AUDIT_FILE": f"{shm}/audit-{r}-{p}.jsonl"} for p in range(PODS)]
                    kt.append(burst(argvs, envs, logs, rss_files, server.pid))
                else:
                    dirs = fresh("ag")
                    argvs = [[BAO, "agent", f"-config={shm}/agent-{p}.hcl", "-log-level=error"] for p in range(PODS)]
                    ag.append(burst(argvs, [base_env] * PODS, logs, rss_files, server.pid))
                check_outputs(dirs)
                # Let the server settle (and the machine reclaim 100 processes) before the
                # other side starts.
                time.sleep(1)

        # Floor: the same launch, gate and measurement with /bin/true in each child.
        floor = burst([["/bin/true"]] * PODS, [base_env] * PODS, logs, rss_files, server.pid)

        med = statistics.median
        kt_wall, ag_wall = med(w for w, *_ in kt), med(w for w, *_ in ag)
        kt_mid, ag_mid = med(med(e) for _, e, *_ in kt), med(med(e) for _, e, *_ in ag)
        kt_mem, ag_mem = med(sum(m) for _, _, m, *_ in kt), med(sum(m) for _, _, m, *_ in ag)
        kt_max, ag_max = med(max(m) for _, _, m, *_ in kt), med(max(m) for _, _, m, *_ in ag)
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
        print(f"machine: {os.cpu_count()} cores, {cpu}; OpenBao {subprocess.run([BAO, 'version'], capture_output=True, text=True).stdout.split()[1]}; "
              f"CPU busy with other work before the run: {busy * 100:.0f} %")
        print(f"workload: {PODS} processes at once, each AppRole login + {N_SECRETS} KV v2 secrets, one template each, "
              f"into its own tmpfs dir; {RUNS} runs per side, alternating; medians")
        print(f"{'':26}{'all ready ms':>14}{'median exit ms':>16}{'sum peak RSS MiB':>18}{'max one MiB':>13}")
        print(f"{'bao agent':26}{ag_wall * 1000:>14.0f}{ag_mid * 1000:>16.0f}{ag_mem:>18.0f}{ag_max:>13.1f}")
        print(f"{'keyturn-init':26}{kt_wall * 1000:>14.0f}{kt_mid * 1000:>16.0f}{kt_mem:>18.0f}{kt_max:>13.1f}")
        print(f"{'ratio (agent/keyturn)':26}{ag_wall / kt_wall:>13.1f}x{ag_mid / kt_mid:>15.1f}x{ag_mem / kt_mem:>17.1f}x{ag_max / kt_max:>12.1f}x")
        print(f"{'target':26}{TARGET_SPEED:>13.0f}x{'':>16}{TARGET_MEMORY:>17.0f}x  "
              f"({'met' if ag_wall / kt_wall >= TARGET_SPEED else 'NOT met'} / {'met' if ag_mem / kt_mem >= TARGET_MEMORY else 'NOT met'})")
        kt_cpu, ag_cpu = med(c for *_, c, _ in kt), med(c for *_, c, _ in ag)
        kt_srv, ag_srv = med(c for *_, c in kt), med(c for *_, c in ag)
        print(f"CPU seconds per burst: bao agent processes {ag_cpu:.2f} + server {ag_srv:.2f}; "
              f"keyturn-init processes {kt_cpu:.2f} + server {kt_srv:.2f}")
        print(f"{'floor: /bin/true x100':26}{floor[0] * 1000:>14.0f}{med(floor[1]) * 1000:>16.0f}{sum(floor[2]):>18.0f}{max(floor[2]):>13.1f}")
        print(f"per run, all ready ms: agent {[round(w * 1000) for w, *_ in ag]}, keyturn {[round(w * 1000) for w, *_ in kt]}")
        print(f"per run, sum peak RSS MiB: agent {[round(sum(m)) for _, _, m, *_ in ag]}, keyturn {[round(sum(m)) for _, _, m, *_ in kt]}")
        print("reproduce: dev/bench-burst.sh " + str(RUNS))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(shm, ignore_errors=True)


if __name__ == "__main__":
    main()
