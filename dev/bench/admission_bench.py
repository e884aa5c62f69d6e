#!/usr/bin/env python3
"""Admission latency: N pod creates through the Kubernetes API stand-in with `keyturn webhook`
configured, against the same creates with no webhook configured.

Everything runs as processes: the stand-in (`keyturn-kube-standin`), `keyturn webhook` with
the stand-in's kubeconfig and a serving certificate from files (made here with openssl, naming
127.0.0.1: the webhook's in-memory CA names only its Service's DNS names, and the stand-in's
binary has no way to route a Service, so the MutatingWebhookConfiguration calls
`clientConfig.url` https://127.0.0.1:PORT/mutate), and a client creating annotated pods one
after another over one keep-alive HTTPS connection, so the figures are latency, not
throughput.

The anchor is the same creates with no MutatingWebhookConfiguration (the Vault Agent Injector
itself cannot run here: it needs a real cluster), so the webhook's cost is the difference.
The creates run in blocks, alternating with and without the configuration, so the machine's
noise hits both alike. Also reported: the webhook's own
`keyturn_webhook_admission_duration_seconds` histogram (from its /metrics, quantiles
as the bounds of the buckets its quantiles fall in, and its mean), and the webhook called
directly with the same AdmissionReviews, over one keep-alive connection (as kube-apiserver
keeps its connections to a webhook) and with a new connection per review.

Usage: dev/bench-admission.sh [N]   (this file is its driver; it expects release builds)
"""
import base64
import http.client
import json
import os
import platform
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
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEYTURN = os.path.join(ROOT, "target", "release", "keyturn")
STANDIN = os.path.join(ROOT, "target", "release", "keyturn-kube-standin")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
BLOCK = 100
WARMUP = 20
NAMESPACE = "bench"
CONFIGURATION = "keyturn-bench"
HISTOGRAM = "keyturn_webhook_admission_duration_seconds"
# The design's target for the admission latency the webhook adds.
TARGET_P99_MS = 5.0
ANNOTATIONS = {
    "vault.hashicorp.com/agent-inject": "true",
    "vault.hashicorp.com/role": "orders",
    "vault.hashicorp.com/agent-inject-secret-db": "secret/data/orders/db",
    "vault.hashicorp.com/agent-inject-template-db":
        '{{- with secret "secret/data/orders/db" -}}\n'
        "postgres://{{ .Data.data.username }}:{{ .Data.data.password }}@db:5432/orders\n"
        "{{- end }}",
    "vault.hashicorp.com/agent-inject-secret-api-key": "secret/data/orders/api",
    "vault.hashicorp.com/agent-pre-populate-only": "true",
}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pod(name):
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "orders"},
                     "annotations": ANNOTATIONS},
        "spec": {
            "serviceAccountName": "orders",
            "containers": [
                {"name": "app", "image": "registry.example/orders:1",
                 "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
                 "ports": [{"containerPort": 8080}]},
            ],
        },
    }


def make_certificates(work):
    """A CA and a serving certificate for 127.0.0.1 (ECDSA P-256, as cert-manager can issue)."""
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{work}/ca.key", "-out", f"{work}/ca.pem", "-days", "2",
            "-subj", "/CN=keyturn-bench-ca")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{work}/tls.key", "-out", f"{work}/tls.csr", "-subj", "/CN=127.0.0.1")
    with open(f"{work}/ext", "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
                "keyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n")
    openssl("x509", "-req", "-in", f"{work}/tls.csr", "-CA", f"{work}/ca.pem",
            "-CAkey", f"{work}/ca.key", "-CAcreateserial", "-out", f"{work}/tls.crt",
            "-days", "1", "-extfile", f"{work}/ext")


class Kube:
    """One keep-alive HTTPS connection to the stand-in, with the admin token."""

    def __init__(self, url, ca, token):
        host, port = url.removeprefix("https://").rsplit(":", 1)
        self.ctx = ssl.create_default_context(cafile=ca)
        self.host, self.port, self.token = host, int(port), token
        self.conn = None

    def request(self, method, path, body=None):
        if self.conn is None:
            self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx)
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
            "Accept": "application/json"})
        r = self.conn.getresponse()
        text = r.read()
        if r.getheader("connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        return r.status, text


def configuration(webhook_port, ca_pem):
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": CONFIGURATION},
        "webhooks": [{
            "name": "inject.keyturn.dev",
            "clientConfig": {"url": f"https://127.0.0.1:{webhook_port}/mutate",
                             "caBundle": base64.b64encode(ca_pem.encode()).decode()},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 10,
            "reinvocationPolicy": "Never",
        }],
    }


def create_pods(kube, names, injected):
    """Creates each pod; returns each create's seconds. Checks what came back."""
    times = []
    for name in names:
        body = pod(name)
        t0 = time.perf_counter()
        status, text = kube.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", body)
        times.append(time.perf_counter() - t0)
        if status != 201:
            sys.exit(f"creating pod {name} answered {status}: {text[:2000].decode(errors='replace')}")
        created = json.loads(text)
        inits = [c.get("name") for c in created["spec"].get("initContainers", [])]
        if injected and inits != ["keyturn-init"]:
            sys.exit(f"pod {name} was created without keyturn-init (init containers {inits})")
        if not injected and inits:
            sys.exit(f"pod {name} got init containers {inits} with no webhook configured")
    return times


def review(name):
    obj = pod(name)
    return {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": name, "namespace": NAMESPACE, "operation": "CREATE",
            "userInfo": {"username": "bench"}, "object": obj, "oldObject": None,
            "dryRun": True,  # no Event for these: the direct calls are not pod creates
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


def direct(port, ca, names, keep_alive):
    """Posts an AdmissionReview per name to the webhook; returns each call's seconds."""
    ctx = ssl.create_default_context(cafile=ca)
    conn, times = None, []
    for name in names:
        data = json.dumps(review(name)).encode()
        t0 = time.perf_counter()
        if conn is None:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
        conn.request("POST", "/mutate?timeout=10s", body=data,
                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        r = conn.getresponse()
        text = r.read()
        times.append(time.perf_counter() - t0)
        if r.status != 200 or not json.loads(text)["response"].get("patch"):
            sys.exit(f"direct review answered {r.status} without a patch: {text[:500]!r}")
        if not keep_alive:
            conn.close()
            conn = None
    return times


def scrape(metrics_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as r:
        text = r.read().decode()
    buckets, total, count = {}, 0.0, 0.0
    for line in text.splitlines():
        m = re.match(rf'{HISTOGRAM}_bucket\{{le="([^"]+)"\}} (\S+)', line)
        if m:
            buckets[float(m.group(1))] = float(m.group(2))
        elif line.startswith(f"{HISTOGRAM}_sum "):
            total = float(line.split()[1])
        elif line.startswith(f"{HISTOGRAM}_count "):
            count = float(line.split()[1])
    if not buckets:
        sys.exit(f"{HISTOGRAM} not found on /metrics")
    return buckets, total, count


def bucket_bound(q, buckets):
    """The upper bound of the bucket the q-quantile falls in."""
    total = buckets[float("inf")]
    return next(le for le in sorted(buckets) if buckets[le] >= q * total)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_share(seconds):
    """The share of all CPUs' time spent busy over `seconds` (what else the machine runs)."""
    def sample():
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]
    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def main():
    for binary, build in ((KEYTURN, "keyturn"), (STANDIN, "keyturn-kube-standin")):
        if not os.path.exists(binary):
            sys.exit(f"{binary} missing: run `cargo build --release --bin {build}` (dev/bench-admission.sh does)")
    work = tempfile.mkdtemp(prefix="keyturn-admission-")
    procs = []
    try:
        make_certificates(work)
        kubeconfig = f"{work}/kubeconfig"
        standin = subprocess.Popen(
            [STANDIN, "--listen", "127.0.0.1:0", "--kubeconfig", kubeconfig, "--ca-cert", f"{work}/kube-ca.pem"],
            stdout=subprocess.PIPE, stderr=open(f"{work}/standin.log", "w"), text=True)
        procs.append(standin)
        kube_url = standin.stdout.readline().strip()
        if not kube_url.startswith("https://"):
            sys.exit(f"keyturn-kube-standin did not start: {open(f'{work}/standin.log').read()[-2000:]}")
        token = re.search(r"^\s*token: (\S+)", open(kubeconfig).read(), re.M).group(1)

        webhook_port, metrics_port = free_port(), free_port()
        webhook = subprocess.Popen(
            [KEYTURN, "webhook", "--listen", f"127.0.0.1:{webhook_port}",
             "--metrics-listen", f"127.0.0.1:{metrics_port}",
             "--init-image", "registry.example/keyturn-init:bench",
             "--vault-addr", "https://vault.vault.svc:8200",
             "--namespace", "keyturn", "--holder", "bench",
             "--tls-cert", f"{work}/tls.crt", "--tls-key", f"{work}/tls.key"],
            env={"PATH": os.environ.get("PATH", ""), "HOME": work, "KUBECONFIG": kubeconfig,
                 "KEYTURN_LOG": "warn"},
            stdout=subprocess.DEVNULL, stderr=open(f"{work}/webhook.log", "w"))
        procs.append(webhook)
        for _ in range(200):
            if webhook.poll() is not None:
                sys.exit(f"keyturn webhook exited {webhook.returncode}: {open(f'{work}/webhook.log').read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz") as r:
                    if r.status == 200:
                        break
            except Exception:
                pass
            time.sleep(0.05)
        else:
            sys.exit(f"keyturn webhook never became ready: {open(f'{work}/webhook.log').read()[-2000:]}")

        ca_pem = open(f"{work}/ca.pem").read()
        kube = Kube(kube_url, f"{work}/kube-ca.pem", token)
        mwc_path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"

        def set_webhook(on):
            if on:
                status, text = kube.request("POST", mwc_path, configuration(webhook_port, ca_pem))
                ok = status == 201
            else:
                status, text = kube.request("DELETE", f"{mwc_path}/{CONFIGURATION}")
                ok = status == 200
            if not ok:
                sys.exit(f"{'creating' if on else 'deleting'} the configuration answered {status}: {text[:2000]!r}")

        busy = busy_share(2.0)
        # Warm-up, not counted: the first connections, the webhook's first requests.
        set_webhook(True)
        create_pods(kube, [f"warm-on-{i}" for i in range(WARMUP)], True)
        set_webhook(False)
        create_pods(kube, [f"warm-off-{i}" for i in range(WARMUP)], False)

        before = scrape(metrics_port)
        cpu0 = {"standin": cpu_seconds(standin.pid), "webhook": cpu_seconds(webhook.pid)}
        with_hook, without = [], []
        cpu_on = {"standin": 0.0, "webhook": 0.0}
        blocks = (N + BLOCK - 1) // BLOCK
        for b in range(blocks):
            names = range(b * BLOCK, min(N, (b + 1) * BLOCK))
            for on in ([True, False] if b % 2 == 0 else [False, True]):
                if on:
                    set_webhook(True)
                    c0 = cpu_seconds(standin.pid), cpu_seconds(webhook.pid)
                    with_hook += create_pods(kube, [f"on-{i}" for i in names], True)
                    cpu_on["standin"] += cpu_seconds(standin.pid) - c0[0]
                    cpu_on["webhook"] += cpu_seconds(webhook.pid) - c0[1]
                    set_webhook(False)
                else:
                    without += create_pods(kube, [f"off-{i}" for i in names], False)
        after = scrape(metrics_port)
        cpu_off_standin = cpu_seconds(standin.pid) - cpu0["standin"] - cpu_on["standin"]

        # The webhook alone, called directly: keep-alive (as kube-apiserver reuses its
        # connection to a webhook) and a new TLS connection per review.
        direct_keep = direct(webhook_port, f"{work}/ca.pem", [f"direct-{i}" for i in range(N)], True)
        direct_new = direct(webhook_port, f"{work}/ca.pem", [f"direct-new-{i}" for i in range(N)], False)

        buckets = {le: after[0][le] - before[0].get(le, 0.0) for le in after[0]}
        h_count = after[2] - before[2]
        h_mean = (after[1] - before[1]) / max(1.0, h_count)
        if round(h_count) != len(with_hook):
            sys.exit(f"the webhook counted {h_count:.0f} admissions for {len(with_hook)} creates")

        ms = 1000.0
        p = lambda xs, q: pct(xs, q) * ms  # noqa: E731
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
        print(f"machine: {os.cpu_count()} cores, {cpu}; CPU busy with other work before the run: {busy * 100:.0f} %")
        print(f"workload: {N} pod creates with keyturn webhook configured and {N} without, one after another on one "
              f"keep-alive connection, in blocks of {BLOCK} alternating; {WARMUP} + {WARMUP} warm-up creates not counted")
        print(f"{'':52}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'max ms':>9}")
        row = lambda label, xs: print(f"{label:52}{p(xs, 0.5):>9.2f}{p(xs, 0.99):>9.2f}{statistics.mean(xs) * ms:>9.2f}{max(xs) * ms:>9.2f}")  # noqa: E731
        row("anchor: pod create, no webhook configured", without)
        row("pod create through keyturn webhook", with_hook)
        print(f"{'the webhook adds (difference of the two rows)':52}{p(with_hook, 0.5) - p(without, 0.5):>9.2f}"
              f"{p(with_hook, 0.99) - p(without, 0.99):>9.2f}{(statistics.mean(with_hook) - statistics.mean(without)) * ms:>9.2f}")
        # The buckets are coarse (0.5 ms, 1, 2, 4, ...): a quantile is given as the bound of the
        # bucket it falls in (interpolating inside the first bucket would only echo its width).
        print(f"{'webhook histogram (' + HISTOGRAM + ')':52}{'<=' + format(bucket_bound(0.5, buckets) * ms, 'g'):>9}"
              f"{'<=' + format(bucket_bound(0.99, buckets) * ms, 'g'):>9}{h_mean * ms:>9.2f}")
        row("webhook called directly, keep-alive connection", direct_keep)
        row("webhook called directly, new TLS connection each", direct_new)
        added_p99 = p(with_hook, 0.99) - p(without, 0.99)
        print(f"target: the webhook adds p99 <= {TARGET_P99_MS:.0f} ms: "
              f"{'met' if added_p99 <= TARGET_P99_MS else 'NOT met'} ({added_p99:.2f} ms); "
              f"its own histogram p99 <= {bucket_bound(0.99, buckets) * ms:g} ms, mean {h_mean * ms:.2f} ms")
        cum = " ".join(f"le={le * ms:g}ms:{int(c)}" for le, c in sorted(buckets.items()) if le != float('inf'))
        print(f"histogram buckets (cumulative, this run): {cum} +Inf:{int(buckets[float('inf')])}")
        print(f"CPU ms per create: with the webhook, stand-in {cpu_on['standin'] / len(with_hook) * ms:.2f} + webhook "
              f"{cpu_on['webhook'] / len(with_hook) * ms:.2f}; without, stand-in {cpu_off_standin / len(without) * ms:.2f}")
        print("reproduce: dev/bench-admission.sh " + str(N))
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
