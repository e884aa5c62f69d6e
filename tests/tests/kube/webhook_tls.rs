//! keyturn webhook's TLS and caBundle upkeep against the stand-in: replicas run in this
//! process (`Webhook::bind` + `serve`, what `keyturn webhook` runs), each with its own
//! in-memory CA, and keep a MutatingWebhookConfiguration's caBundle through Leases; the
//! stand-in calls them over HTTPS verifying that bundle, as kube-apiserver does. Stand-in
//! only: a real cluster cannot reach a webhook on the test's loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use keyturn_agent::webhook::inject::{InjectConfig, Injector};
use keyturn_agent::webhook::{CaBundleSettings, TlsSource, Webhook, WebhookSettings};
use keyturn_tests::kube::KubeStandin;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Where the webhook's Service and Leases live.
const NS: &str = "keyturn";
const SERVICE: &str = "keyturn-webhook";
const CONFIGURATION: &str = "keyturn-webhook";

/// Generous: only ends a hang, never judges speed.
const DEADLINE: Duration = Duration::from_secs(90);

/// One replica serving in this process until stopped.
struct Replica {
    https: SocketAddr,
    metrics: SocketAddr,
    ca_pem: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    /// A replica named `holder`; with `bundle`, it keeps the configuration's caBundle. It
    /// stops without a shutdown delay.
    async fn start(client: &kube::Client, holder: &str, bundle: bool) -> Self {
        Self::start_with(client, holder, bundle, Duration::ZERO).await
    }

    /// [`Self::start`] keeping serving, unready, for `delay` once told to stop.
    async fn start_with(
        client: &kube::Client,
        holder: &str,
        bundle: bool,
        delay: Duration,
    ) -> Self {
        let settings = WebhookSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
            injector: Injector {
                config: InjectConfig {
                    init_image: "registry.example/keyturn-init:1".into(),
                    own_namespace: NS.into(),
                    ..InjectConfig::default()
                },
            },
            tls: TlsSource::InMemory {
                service: SERVICE.into(),
                namespace: NS.into(),
                validity: Duration::from_secs(3600),
            },
            ca_bundle: bundle.then(|| CaBundleSettings {
                configuration: CONFIGURATION.into(),
                namespace: NS.into(),
                holder: holder.into(),
                // Short, so an expiry happens within the test.
                lease_duration: Duration::from_secs(3),
            }),
            shutdown_delay: delay,
        };
        let webhook = Webhook::bind(settings, client.clone()).await.unwrap();
        let (https, metrics) = (webhook.https_addr(), webhook.metrics_addr());
        let ca_pem = webhook.ca_pem().unwrap().to_owned();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(webhook.serve(async move {
            let _ = stopped.await;
        }));
        Self {
            https,
            metrics,
            ca_pem,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        self.signal_stop();
        self.stopped().await;
    }

    /// Tells the replica to stop (SIGTERM), without waiting.
    fn signal_stop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
    }

    /// Waits for the replica to have stopped.
    async fn stopped(self) {
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the replica did not stop")
            .unwrap();
    }

    /// GET `path` on the metrics listener: (status, body).
    async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.metrics))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The sample `series` (whole name with labels) of `/metrics`.
    async fn sample(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    }
}

/// The DER certificates of a PEM bundle.
fn certificates(pem_text: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = std::str::from_utf8(pem_text).unwrap_or("");
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let after = &rest[start + "-----BEGIN CERTIFICATE-----".len()..];
        let end = after.find("-----END CERTIFICATE-----").unwrap();
        let b64: String = after[..end].split_whitespace().collect();
        out.push(STANDARD.decode(b64).unwrap());
        rest = &after[end..];
        rest = &rest["-----END CERTIFICATE-----".len()..];
    }
    out
}

/// The caBundle of each webhook of the configuration, decoded.
async fn bundles(client: &kube::Client) -> Vec<Vec<u8>> {
    let mwc = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(CONFIGURATION)
        .await
        .unwrap();
    mwc.webhooks
        .unwrap_or_default()
        .into_iter()
        .map(|w| w.client_config.ca_bundle.map(|b| b.0).unwrap_or_default())
        .collect()
}

/// Whether every webhook's bundle holds exactly the CAs `want` (PEM).
async fn bundle_is(client: &kube::Client, want: Vec<String>) -> bool {
    let mut want: Vec<Vec<u8>> = want
        .iter()
        .flat_map(|p| certificates(p.as_bytes()))
        .collect();
    want.sort();
    let got = bundles(client).await;
    !got.is_empty()
        && got.iter().all(|b| {
            let mut have = certificates(b);
            have.sort();
            have == want
        })
}

/// Polls `cond` until it holds, or panics naming `what` at the deadline.
async fn until<F: Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    let end = tokio::time::Instant::now() + DEADLINE;
    while !cond().await {
        assert!(tokio::time::Instant::now() < end, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A webhook entry for pod CREATE on the keyturn Service, without a caBundle (the chart
/// renders none).
fn hook(name: &str) -> Value {
    json!({
        "name": name,
        "sideEffects": "NoneOnDryRun",
        "admissionReviewVersions": ["v1"],
        "failurePolicy": "Fail",
        "clientConfig": {"service": {"namespace": NS, "name": SERVICE, "path": "/mutate"}},
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
    })
}

async fn configure(client: &kube::Client, hooks: Vec<Value>) {
    let mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": CONFIGURATION},
        "webhooks": hooks,
    }))
    .unwrap();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &mwc)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_put_both_cas_in_every_ca_bundle_and_a_stopped_ones_leaves_when_its_lease_expires()
 {
    let standin = KubeStandin::start().await.unwrap();
    let client = standin.client().await.unwrap();
    configure(
        &client,
        vec![hook("inject.keyturn.dev"), hook("second.keyturn.dev")],
    )
    .await;
    let a = Replica::start(&client, "replica-a", true).await;
    let b = Replica::start(&client, "replica-b", true).await;
    assert_ne!(a.ca_pem, b.ca_pem, "each replica makes its own CA");

    until("both CAs in every webhook's caBundle", || {
        bundle_is(&client, vec![a.ca_pem.clone(), b.ca_pem.clone()])
    })
    .await;
    for r in [&a, &b] {
        until("ready once the bundle carries its CA", || async {
            r.get("/readyz").await.0 == 200
        })
        .await;
        assert_eq!(r.sample("keyturn_webhook_ca_bundle_current").await, 1.0);
    }
    // Each replica's membership Lease carries its CA; one of them writes.
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    for (holder, ca) in [("replica-a", &a.ca_pem), ("replica-b", &b.ca_pem)] {
        let l = leases
            .get(&format!("keyturn-webhook-{holder}"))
            .await
            .unwrap();
        assert_eq!(
            l.metadata.annotations.unwrap()["keyturn.dev/ca-bundle"],
            *ca
        );
    }
    let writer = leases.get("keyturn-webhook-ca-bundle").await.unwrap();
    let writer = writer.spec.unwrap().holder_identity.unwrap();
    assert!(
        ["replica-a", "replica-b"].contains(&writer.as_str()),
        "{writer}"
    );
    let members = leases
        .list(&ListParams::default().labels("keyturn.dev/webhook-ca=member"))
        .await
        .unwrap();
    assert_eq!(members.items.len(), 2);

    // B stops renewing: once its Lease expires its CA leaves, whichever replica wrote before.
    b.stop().await;
    until("B's CA gone from the bundle, A's kept", || {
        bundle_is(&client, vec![a.ca_pem.clone()])
    })
    .await;
    assert_eq!(a.get("/readyz").await.0, 200);
    // A is the writer now.
    let writer = leases.get("keyturn-webhook-ca-bundle").await.unwrap();
    assert_eq!(
        writer.spec.unwrap().holder_identity.as_deref(),
        Some("replica-a")
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_create_reaches_the_replica_over_tls_verified_against_the_bundle_and_is_injected() {
    let standin = KubeStandin::start().await.unwrap();
    let client = standin.client().await.unwrap();
    configure(&client, vec![hook("inject.keyturn.dev")]).await;
    let a = Replica::start(&client, "replica-a", true).await;
    standin.route_service(NS, SERVICE, 443, a.https);
    until("the replica is ready", || async {
        a.get("/readyz").await.0 == 200
    })
    .await;

    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": "orders-1",
            "annotations": {
                "vault.hashicorp.com/agent-inject": "true",
                "vault.hashicorp.com/role": "orders",
                "vault.hashicorp.com/agent-inject-secret-db": "secret/data/orders/db",
                "vault.hashicorp.com/agent-pre-populate-only": "true",
            },
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "orders-7d9f", "uid": "0b7e3f3c-1111-4a4a-9c9c-000000000001", "controller": true}],
        },
        "spec": {"containers": [{"name": "app", "image": "orders:1"}]},
    }))
    .unwrap();
    // The stand-in verifies the replica's certificate for keyturn-webhook.keyturn.svc against
    // the configuration's caBundle, with failurePolicy Fail: an unverified call is an error.
    let created = Api::<Pod>::namespaced(client.clone(), "orders")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let init = created.spec.unwrap().init_containers.unwrap_or_default();
    assert_eq!(
        init.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["keyturn-init"]
    );
    assert_eq!(
        a.sample("keyturn_webhook_admissions_total{outcome=\"injected\"}")
            .await,
        1.0
    );
    // The Event lands on the pod's owner, from keyturn-webhook, instance replica-a.
    let events: Api<Event> = Api::namespaced(client.clone(), "orders");
    until("an Injected Event on the ReplicaSet", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("Injected")
                    && e.reporting_controller.as_deref() == Some("keyturn-webhook")
                    && e.reporting_instance.as_deref() == Some("replica-a")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("orders-7d9f")
            })
    })
    .await;
    a.stop().await;
}

/// A TLS connection to `addr` trusting only `ca_pem`, for the Service's name.
async fn connect(
    addr: SocketAddr,
    ca_pem: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for der in certificates(ca_pem.as_bytes()) {
        roots.add(der.into()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from(format!("{SERVICE}.{NS}.svc")).unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

/// POSTs `body` to /mutate with `content_type` on a fresh connection; the status code.
async fn post(a: &Replica, content_type: &str, body: &[u8]) -> u16 {
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(a.ca_pem.as_bytes()).unwrap()])
        .resolve(&format!("{SERVICE}.{NS}.svc"), a.https)
        .build()
        .unwrap();
    http.post(format!(
        "https://{SERVICE}.{NS}.svc:{}/mutate",
        a.https.port()
    ))
    .header("content-type", content_type)
    .body(body.to_vec())
    .send()
    .await
    .unwrap()
    .status()
    .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_or_413_are_counted_and_the_replica_keeps_serving() {
    let standin = KubeStandin::start().await.unwrap();
    let client = standin.client().await.unwrap();
    let a = Replica::start(&client, "replica-a", false).await;
    // Without caBundle upkeep the replica is ready at once.
    assert_eq!(a.get("/readyz").await.0, 200);

    assert_eq!(
        post(&a, "text/plain", b"{}").await,
        400,
        "wrong content type"
    );
    assert_eq!(post(&a, "application/json", b"").await, 400, "empty body");
    assert_eq!(
        post(&a, "application/json", b"{not json").await,
        400,
        "invalid JSON"
    );
    assert_eq!(
        post(&a, "application/json", br#"{"kind":"Pod"}"#).await,
        400,
        "not an AdmissionReview"
    );

    // 10 MiB: answered 413 from the headers, while the client is still sending.
    let tls = connect(a.https, &a.ca_pem).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let size = 10 * 1024 * 1024;
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST /mutate HTTP/1.1\r\nHost: {SERVICE}.{NS}.svc\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        );
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..size / chunk.len() {
            wr.write_all(&chunk).await?;
        }
        std::io::Result::Ok(())
    });
    let mut answer = vec![0u8; 12];
    tokio::time::timeout(DEADLINE, rd.read_exact(&mut answer))
        .await
        .expect("no answer to the 10 MiB request")
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 413");
    // The server closes the connection rather than read the rest.
    let _ = tokio::time::timeout(DEADLINE, writer).await.unwrap();

    // Still serving: a real AdmissionReview for a pod not meant for keyturn is allowed.
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "6c3a8a52-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "orders",
            "operation": "CREATE",
            "object": {"metadata": {"name": "plain"}, "spec": {"containers": [{"name": "app", "image": "x"}]}},
        },
    });
    assert_eq!(
        post(
            &a,
            "application/json",
            &serde_json::to_vec(&review).unwrap()
        )
        .await,
        200
    );
    assert_eq!(
        a.sample("keyturn_webhook_admissions_total{outcome=\"malformed\"}")
            .await,
        5.0
    );
    assert_eq!(
        a.sample("keyturn_webhook_admissions_total{outcome=\"skipped\"}")
            .await,
        1.0
    );
    // Other paths and methods.
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(a.ca_pem.as_bytes()).unwrap()])
        .resolve(&format!("{SERVICE}.{NS}.svc"), a.https)
        .build()
        .unwrap();
    let base = format!("https://{SERVICE}.{NS}.svc:{}", a.https.port());
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(http.get(format!("{base}/mutate")).send().await.unwrap()),
        405
    );
    assert_eq!(
        status(http.post(format!("{base}/validate")).send().await.unwrap()),
        404
    );
    a.stop().await;
}

/// An AdmissionReview for a pod not meant for keyturn: answered 200, allowed.
fn plain_review() -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "6c3a8a52-0000-4000-8000-000000000002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "orders",
            "operation": "CREATE",
            "object": {"metadata": {"name": "plain"}, "spec": {"containers": [{"name": "app", "image": "x"}]}},
        },
    })
}

/// Sends one HTTP/1.1 request on a kept-alive TLS connection and reads its status line.
async fn status_line(
    s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    body: &[u8],
) -> String {
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: {SERVICE}.{NS}.svc\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while !buf.windows(2).any(|w| w == b"\r\n") {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before answering");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("no answer");
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_replica_turns_unready_and_keeps_serving_through_its_shutdown_delay_then_refuses_connections()
 {
    let standin = KubeStandin::start().await.unwrap();
    let client = standin.client().await.unwrap();
    // Long enough that the checks below run well within it on a loaded machine; the test
    // takes about this long.
    let delay = Duration::from_secs(8);
    let mut a = Replica::start_with(&client, "replica-a", false, delay).await;
    assert_eq!(a.get("/readyz").await.0, 200);
    let review = serde_json::to_vec(&plain_review()).unwrap();
    let mut before = connect(a.https, &a.ca_pem).await;
    assert_eq!(status_line(&mut before, &review).await, "HTTP/1.1 200 OK");

    a.signal_stop();
    // The kubelet sees the replica unready at once…
    until("/readyz 503 once shutdown starts", || async {
        a.get("/readyz").await.0 == 503
    })
    .await;
    let (_, why) = a.get("/readyz").await;
    assert!(why.contains("shutting down"), "{why}");
    // …while the API server, still routing here until the endpoints catch up, gets through:
    // on a new connection and on one it kept alive.
    assert_eq!(post(&a, "application/json", &review).await, 200);
    let mut during = connect(a.https, &a.ca_pem).await;
    assert_eq!(status_line(&mut during, &review).await, "HTTP/1.1 200 OK");
    assert_eq!(status_line(&mut before, &review).await, "HTTP/1.1 200 OK");
    assert!(
        !a.task.is_finished(),
        "the replica stopped within its delay"
    );

    // After the delay the listeners are closed: a new connection is refused.
    until("HTTPS connections refused after the delay", || async {
        tokio::net::TcpStream::connect(a.https)
            .await
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
    .await;
    assert!(tokio::net::TcpStream::connect(a.metrics).await.is_err());
    a.stopped().await;
}

/// A service-account client for replica `holder`, so the stand-in can refuse that replica
/// alone: `system:serviceaccount:keyturn:<holder>`.
fn replica_client(standin: &KubeStandin, holder: &str) -> kube::Client {
    let token = standin.issue_service_account_token(NS, holder, &[], Duration::from_secs(3600));
    standin.client_with_token(&token).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_api_server_turns_unready_before_the_writer_drops_its_ca() {
    let standin = KubeStandin::start().await.unwrap();
    let client = standin.client().await.unwrap();
    configure(&client, vec![hook("inject.keyturn.dev")]).await;
    let a = Replica::start(&replica_client(&standin, "replica-a"), "replica-a", true).await;
    let b = Replica::start(&replica_client(&standin, "replica-b"), "replica-b", true).await;
    until("both CAs in the caBundle", || {
        bundle_is(&client, vec![a.ca_pem.clone(), b.ca_pem.clone()])
    })
    .await;
    for r in [&a, &b] {
        until("ready", || async { r.get("/readyz").await.0 == 200 }).await;
    }

    // B loses the API server (its token refused everything, as after an egress change) while
    // the API server can still reach it.
    standin.deny_user("system:serviceaccount:keyturn:replica-b", "*", "*");
    until("B's CA dropped by the writer", || {
        bundle_is(&client, vec![a.ca_pem.clone()])
    })
    .await;
    // By then B no longer claims to be trusted: it turned unready a third of a lease before
    // its Lease expired.
    let (status, why) = b.get("/readyz").await;
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("caBundle"), "{why}");
    assert_eq!(b.sample("keyturn_webhook_ca_bundle_current").await, 0.0);
    assert_eq!(a.get("/readyz").await.0, 200);
    assert_eq!(a.sample("keyturn_webhook_ca_bundle_current").await, 1.0);

    // Back on the API server, B renews, the writer takes its CA back, and B is ready again.
    standin.allow_all();
    until("B ready again", || async {
        b.get("/readyz").await.0 == 200
    })
    .await;
    assert!(bundle_is(&client, vec![a.ca_pem.clone(), b.ca_pem.clone()]).await);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_api_server_never_answers_still_stops() {
    // Accepts connections and never answers: a request in flight waits for ever (kube-rs
    // sets no read timeout).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let (dialed_tx, dialed) = tokio::sync::oneshot::channel::<()>();
    let held = tokio::spawn(async move {
        let mut dialed_tx = Some(dialed_tx);
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
            if let Some(tx) = dialed_tx.take() {
                let _ = tx.send(());
            }
        }
    });
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
            .unwrap();
    let a = Replica::start(&client, "replica-a", true).await;
    // Its first membership renewal is in flight, and stays so.
    tokio::time::timeout(DEADLINE, dialed)
        .await
        .expect("the replica never called the API server")
        .unwrap();
    assert_eq!(a.get("/readyz").await.0, 503);
    a.stop().await;
    held.abort();
}
