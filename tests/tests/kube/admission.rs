//! The stand-in as an API server with mutating admission webhooks: pod creates call a real
//! HTTPS webhook (a certificate from a CA of the test's own, served by rustls on loopback)
//! and every assertion counts what that webhook received. Stand-in only: a real cluster
//! cannot reach a webhook on the test's loopback.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Pod};
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use keyturn_tests::kube::KubeStandin;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// The namespace and name of the Service the webhooks are published as.
const SERVICE_NS: &str = "webhooks";
const SERVICE: &str = "hook";

/// What a test's webhook answers one AdmissionReview with (the review's `request` in, the
/// `response` out, without `uid`, which the server fills in).
type Handler = dyn Fn(&Value) -> Value + Send + Sync;

/// A real HTTPS admission webhook on loopback: a certificate for `hook.webhooks.svc` (and
/// `127.0.0.1`) from its own CA, one thread per connection, HTTP/1.1.
struct Webhook {
    addr: SocketAddr,
    ca_pem: String,
    /// Every AdmissionReview received, in order.
    reviews: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    fn start(handler: impl Fn(&Value) -> Value + Send + Sync + 'static) -> Self {
        Self::start_as(SERVICE, handler)
    }

    /// A webhook whose certificate names `SERVICE.webhooks.svc`.
    fn start_as(service: &str, handler: impl Fn(&Value) -> Value + Send + Sync + 'static) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "webhook test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let params = rcgen::CertificateParams::new(vec![
            format!("{service}.{SERVICE_NS}.svc"),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                )
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reviews = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let seen = Arc::clone(&reviews);
        // The accept loop lives as long as the test process; nextest runs each test in its own.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (config, handler, seen) =
                    (Arc::clone(&config), Arc::clone(&handler), Arc::clone(&seen));
                std::thread::spawn(move || serve(stream, &config, &*handler, &seen));
            }
        });
        Self {
            addr,
            ca_pem: ca.pem(),
            reviews,
        }
    }

    fn ca_bundle(&self) -> String {
        STANDARD.encode(&self.ca_pem)
    }

    fn reviews(&self) -> Vec<Value> {
        self.reviews.lock().unwrap().clone()
    }

    fn calls(&self) -> usize {
        self.reviews.lock().unwrap().len()
    }
}

/// One connection: TLS, then requests until the client closes it.
fn serve(
    stream: std::net::TcpStream,
    config: &Arc<rustls::ServerConfig>,
    handler: &Handler,
    seen: &Mutex<Vec<Value>>,
) {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let Ok(conn) = rustls::ServerConnection::new(Arc::clone(config)) else {
        return;
    };
    let mut reader = BufReader::new(rustls::StreamOwned::new(conn, stream));
    loop {
        let mut content_length = 0usize;
        let mut line = String::new();
        // Request line, then headers up to the blank line.
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((k, v)) = trimmed.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        seen.lock().unwrap().push(review.clone());
        let mut response = handler(&review["request"]);
        response["uid"] = review["request"]["uid"].clone();
        let answer = serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response,
        }))
        .unwrap();
        let stream = reader.get_mut();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            answer.len()
        );
        if stream.write_all(head.as_bytes()).is_err()
            || stream.write_all(&answer).is_err()
            || stream.flush().is_err()
        {
            return;
        }
    }
}

/// `allowed: true` with `patch` (a JSON patch) if any.
fn allow(patch: Option<Value>) -> Value {
    match patch {
        Some(p) => json!({
            "allowed": true,
            "patchType": "JSONPatch",
            "patch": STANDARD.encode(serde_json::to_vec(&p).unwrap()),
        }),
        None => json!({"allowed": true}),
    }
}

/// A webhook entry for pod CREATE on `hook.webhooks.svc` with the given fields on top.
fn hook(name: &str, ca_bundle: &str, extra: Value) -> Value {
    let mut h = json!({
        "name": name,
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "clientConfig": {
            "service": {"namespace": SERVICE_NS, "name": SERVICE, "path": "/mutate"},
            "caBundle": ca_bundle,
        },
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
    });
    if let (Some(h), Some(extra)) = (h.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            h.insert(k.clone(), v.clone());
        }
    }
    h
}

async fn configure(client: &kube::Client, name: &str, hooks: Vec<Value>) {
    let mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": hooks,
    }))
    .unwrap();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &mwc)
        .await
        .unwrap();
}

fn pod(name: Option<&str>, labels: Value) -> Pod {
    let mut meta = json!({"labels": labels});
    match name {
        Some(n) => meta["name"] = json!(n),
        None => meta["generateName"] = json!("web-"),
    }
    serde_json::from_value(json!({
        "metadata": meta,
        "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
    }))
    .unwrap()
}

/// A stand-in with the webhook's service routed to `webhook`.
async fn standin(webhook: &Webhook) -> (KubeStandin, kube::Client) {
    let s = KubeStandin::start().await.unwrap();
    s.route_service(SERVICE_NS, SERVICE, 443, webhook.addr);
    let client = s.client().await.unwrap();
    (s, client)
}

fn status_of<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected a Status error, got {other:?}"),
    }
}

fn annotation(p: &Pod, key: &str) -> Option<String> {
    p.metadata.annotations.as_ref()?.get(key).cloned()
}

#[tokio::test]
async fn a_matching_webhook_mutates_the_stored_pod_and_sees_the_request_as_kube_apiserver_sends_it()
{
    let webhook = Webhook::start(|_| {
        allow(Some(
            json!([{"op": "add", "path": "/metadata/annotations", "value": {"keyturn.dev/seen": "yes"}}]),
        ))
    });
    let (_s, client) = standin(&webhook).await;
    configure(
        &client,
        "inject",
        vec![hook("inject.keyturn.test", &webhook.ca_bundle(), json!({}))],
    )
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "app");
    let created = pods
        .create(&PostParams::default(), &pod(None, json!({"app": "web"})))
        .await
        .unwrap();
    let name = created.metadata.name.clone().unwrap();
    assert!(
        name.starts_with("web-") && name.len() == "web-".len() + 5,
        "{name}"
    );
    let stored = pods.get(&name).await.unwrap();
    assert_eq!(
        annotation(&stored, "keyturn.dev/seen").as_deref(),
        Some("yes")
    );
    assert_eq!(
        stored.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );

    let reviews = webhook.reviews();
    assert_eq!(reviews.len(), 1, "the webhook is called once per create");
    let review = &reviews[0];
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    let request = &review["request"];
    assert_eq!(request["operation"], "CREATE");
    assert_eq!(request["namespace"], "app");
    assert!(
        request.get("name").is_none(),
        "the name is generated after admission"
    );
    assert_eq!(request["object"]["metadata"]["generateName"], "web-");
    assert_eq!(
        request["resource"],
        json!({"group": "", "version": "v1", "resource": "pods"})
    );
    assert_eq!(
        request["kind"],
        json!({"group": "", "version": "v1", "kind": "Pod"})
    );
    assert_eq!(request["userInfo"]["username"], "kubernetes-admin");
    assert_eq!(request["oldObject"], Value::Null);
    assert_eq!(request["dryRun"], false);
    assert_eq!(request["options"]["kind"], "CreateOptions");
    // Defaults and the in-tree admission plugins ran before the webhook.
    let spec = &request["object"]["spec"];
    assert_eq!(spec["serviceAccountName"], "default");
    assert_eq!(spec["containers"][0]["imagePullPolicy"], "IfNotPresent");
    assert!(
        spec["volumes"][0]["name"]
            .as_str()
            .unwrap()
            .starts_with("kube-api-access-")
    );
    assert!(request["uid"].as_str().is_some_and(|u| !u.is_empty()));

    // A second create is a fresh review with a fresh uid.
    pods.create(&PostParams::default(), &pod(Some("named"), json!({})))
        .await
        .unwrap();
    let reviews = webhook.reviews();
    assert_eq!(reviews.len(), 2);
    assert_eq!(reviews[1]["request"]["name"], "named");
    assert_ne!(reviews[0]["request"]["uid"], reviews[1]["request"]["uid"]);
}

#[tokio::test]
async fn a_ca_bundle_that_did_not_sign_the_webhook_fails_closed_with_fail_and_open_with_ignore() {
    let webhook = Webhook::start(|_| {
        allow(Some(
            json!([{"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}]),
        ))
    });
    let stranger = Webhook::start(|_| allow(None));
    let (_s, client) = standin(&webhook).await;
    configure(
        &client,
        "inject",
        vec![hook(
            "inject.keyturn.test",
            &stranger.ca_bundle(),
            json!({}),
        )],
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "app");

    let status = status_of(
        pods.create(
            &PostParams::default(),
            &pod(Some("closed"), json!({"app": "web"})),
        )
        .await,
    );
    assert_eq!(status.code, 500);
    assert_eq!(status.reason, "InternalError");
    assert_eq!(
        status.message,
        "Internal error occurred: failed calling webhook \"inject.keyturn.test\": failed to call webhook: Post \"https://hook.webhooks.svc:443/mutate?timeout=10s\": tls: failed to verify certificate: x509: certificate signed by unknown authority"
    );
    assert_eq!(
        webhook.calls(),
        0,
        "no request crosses an untrusted handshake"
    );
    assert!(
        pods.get_opt("closed").await.unwrap().is_none(),
        "nothing is stored"
    );

    let patch = json!({"webhooks": [hook("inject.keyturn.test", &stranger.ca_bundle(), json!({"failurePolicy": "Ignore"}))]});
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch("inject", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let created = pods
        .create(
            &PostParams::default(),
            &pod(Some("open"), json!({"app": "web"})),
        )
        .await
        .unwrap();
    assert!(
        !created
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key("mutated"),
        "failing open leaves the pod unmutated"
    );
    assert_eq!(webhook.calls(), 0);
}

#[tokio::test]
async fn a_webhook_slower_than_its_timeout_fails_the_create() {
    let webhook = Webhook::start(|_| {
        std::thread::sleep(Duration::from_secs(3));
        allow(None)
    });
    let (_s, client) = standin(&webhook).await;
    configure(
        &client,
        "slow",
        vec![hook(
            "slow.keyturn.test",
            &webhook.ca_bundle(),
            json!({"timeoutSeconds": 1}),
        )],
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "app");
    let status = status_of(
        pods.create(&PostParams::default(), &pod(Some("p"), json!({})))
            .await,
    );
    assert_eq!(status.code, 500);
    assert_eq!(
        status.message,
        "Internal error occurred: failed calling webhook \"slow.keyturn.test\": failed to call webhook: Post \"https://hook.webhooks.svc:443/mutate?timeout=1s\": context deadline exceeded"
    );
    assert_eq!(webhook.calls(), 1, "the webhook was reached, and too slow");
}

#[tokio::test]
async fn namespace_and_object_selectors_keep_a_webhook_from_being_called() {
    let webhook = Webhook::start(|_| allow(None));
    let (standin, client) = standin(&webhook).await;
    configure(
        &client,
        "inject",
        vec![hook(
            "inject.keyturn.test",
            &webhook.ca_bundle(),
            json!({
                "namespaceSelector": {"matchLabels": {"keyturn.dev/injection": "enabled"}},
                "objectSelector": {"matchExpressions": [{"key": "keyturn.dev/skip", "operator": "DoesNotExist"}]},
            }),
        )],
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "app");
    pods.create(
        &PostParams::default(),
        &pod(Some("unlabelled-ns"), json!({})),
    )
    .await
    .unwrap();
    assert_eq!(webhook.calls(), 0, "the namespace is not selected");

    // Labelled through the API, as `kubectl label namespace` does.
    let labelled: Namespace = Api::<Namespace>::all(client.clone())
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"keyturn.dev/injection": "enabled"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        labelled.metadata.labels.unwrap()["kubernetes.io/metadata.name"],
        "app"
    );
    pods.create(&PostParams::default(), &pod(Some("selected"), json!({})))
        .await
        .unwrap();
    assert_eq!(webhook.calls(), 1);
    pods.create(
        &PostParams::default(),
        &pod(Some("opted-out"), json!({"keyturn.dev/skip": "true"})),
    )
    .await
    .unwrap();
    assert_eq!(webhook.calls(), 1, "the object selector leaves the pod out");

    // The knob labels a namespace the same way.
    standin.label_namespace("other", &[("keyturn.dev/injection", "enabled")]);
    Api::<Pod>::namespaced(client.clone(), "other")
        .create(&PostParams::default(), &pod(Some("p"), json!({})))
        .await
        .unwrap();
    assert_eq!(webhook.calls(), 2);
}

#[tokio::test]
async fn a_denial_fails_the_create_with_the_webhooks_message_and_code() {
    let webhook = Webhook::start(
        |_| json!({"allowed": false, "status": {"code": 403, "reason": "Forbidden", "message": "pods here may not read secrets"}}),
    );
    let (_s, client) = standin(&webhook).await;
    configure(
        &client,
        "deny",
        vec![hook("deny.keyturn.test", &webhook.ca_bundle(), json!({}))],
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "app");
    let status = status_of(
        pods.create(&PostParams::default(), &pod(Some("p"), json!({})))
            .await,
    );
    assert_eq!(status.code, 403);
    assert_eq!(status.reason, "Forbidden");
    assert_eq!(
        status.message,
        "admission webhook \"deny.keyturn.test\" denied the request: pods here may not read secrets"
    );
    assert_eq!(webhook.calls(), 1);
    assert!(pods.get_opt("p").await.unwrap().is_none());
}

#[tokio::test]
async fn warnings_from_a_webhook_reach_the_client_as_warning_headers() {
    let webhook = Webhook::start(|_| {
        let mut a = allow(None);
        a["warnings"] = json!(["annotation \"x\" is ignored"]);
        a
    });
    let (standin, client) = standin(&webhook).await;
    configure(
        &client,
        "warn",
        vec![hook("warn.keyturn.test", &webhook.ca_bundle(), json!({}))],
    )
    .await;
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(standin.ca_pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let response = http
        .post(format!("{}/api/v1/namespaces/app/pods", standin.url()))
        .bearer_auth(standin.admin_token())
        .json(&pod(Some("p"), json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let warnings: Vec<&str> = response
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(warnings, [r#"299 - "annotation \"x\" is ignored""#]);
    assert_eq!(webhook.calls(), 1);
}

#[tokio::test]
async fn an_if_needed_webhook_is_called_again_once_when_a_later_webhook_changes_the_pod() {
    // Two webhook servers, one per webhook, so each counts its own calls.
    let first = Webhook::start_as("first", |request| {
        let seen = request["object"]["metadata"]["annotations"]["second"].as_str();
        match seen {
            // The first pass: mark the pod; the reinvocation: nothing more to do.
            None => allow(Some(
                json!([{"op": "add", "path": "/metadata/annotations", "value": {"first": "1"}}]),
            )),
            Some(_) => allow(None),
        }
    });
    let second = Webhook::start_as("second", |_| {
        allow(Some(
            json!([{"op": "add", "path": "/metadata/annotations/second", "value": "1"}]),
        ))
    });
    let s = KubeStandin::start().await.unwrap();
    s.route_service(SERVICE_NS, "first", 443, first.addr);
    s.route_service(SERVICE_NS, "second", 443, second.addr);
    let client = s.client().await.unwrap();
    let on = |service: &str, name: &str, bundle: &str, policy: &str| {
        let mut h = hook(name, bundle, json!({"reinvocationPolicy": policy}));
        h["clientConfig"]["service"]["name"] = json!(service);
        h
    };
    // Configurations run in name order: "a-first" before "b-second".
    configure(
        &client,
        "a-first",
        vec![on(
            "first",
            "first.keyturn.test",
            &first.ca_bundle(),
            "IfNeeded",
        )],
    )
    .await;
    configure(
        &client,
        "b-second",
        vec![on(
            "second",
            "second.keyturn.test",
            &second.ca_bundle(),
            "IfNeeded",
        )],
    )
    .await;

    let created = Api::<Pod>::namespaced(client.clone(), "app")
        .create(&PostParams::default(), &pod(Some("p"), json!({})))
        .await
        .unwrap();
    assert_eq!(annotation(&created, "first").as_deref(), Some("1"));
    assert_eq!(annotation(&created, "second").as_deref(), Some("1"));
    assert_eq!(
        first.calls(),
        2,
        "called again after the second webhook changed the pod"
    );
    assert_eq!(
        first.reviews()[1]["request"]["object"]["metadata"]["annotations"]["second"],
        "1"
    );
    assert_eq!(
        second.calls(),
        1,
        "the webhook that made the last change is not reinvoked for it"
    );
}

#[tokio::test]
async fn mutating_webhook_configurations_are_defaulted_and_validated_with_the_real_messages() {
    let s = KubeStandin::start().await.unwrap();
    let client = s.client().await.unwrap();
    // Sent as raw JSON: k8s-openapi's type would send a missing `sideEffects` as "".
    let create = |hook: Value| {
        let client = client.clone();
        async move {
            let body = json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": "c"},
                "webhooks": [hook],
            });
            let request = http::Request::post(
                "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
            )
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .unwrap();
            client
                .request::<MutatingWebhookConfiguration>(request)
                .await
        }
    };
    let mut no_side_effects = hook("inject.keyturn.test", "", json!({}));
    no_side_effects
        .as_object_mut()
        .unwrap()
        .remove("sideEffects");
    let status = status_of(create(no_side_effects).await);
    assert_eq!(status.code, 422);
    assert_eq!(
        status.message,
        "MutatingWebhookConfiguration.admissionregistration.k8s.io \"c\" is invalid: webhooks[0].sideEffects: Required value: must specify one of None, NoneOnDryRun"
    );
    let status = status_of(create(hook("inject", "", json!({}))).await);
    assert_eq!(
        status.message,
        "MutatingWebhookConfiguration.admissionregistration.k8s.io \"c\" is invalid: webhooks[0].name: Invalid value: \"inject\": should be a domain with at least three segments separated by dots"
    );

    let created = create(hook("inject.keyturn.test", "", json!({})))
        .await
        .unwrap();
    let h = &created.webhooks.unwrap()[0];
    assert_eq!(h.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(h.match_policy.as_deref(), Some("Equivalent"));
    assert_eq!(h.reinvocation_policy.as_deref(), Some("Never"));
    assert_eq!(h.timeout_seconds, Some(10));
    assert_eq!(h.client_config.service.as_ref().unwrap().port, Some(443));
    assert_eq!(h.rules.as_ref().unwrap()[0].scope.as_deref(), Some("*"));
    assert_eq!(created.metadata.generation, Some(1));
}

#[tokio::test]
async fn an_unrouted_service_fails_the_call_and_a_dry_run_reaches_a_webhook_without_side_effects() {
    let webhook = Webhook::start(|_| allow(None));
    let s = KubeStandin::start().await.unwrap();
    let client = s.client().await.unwrap();
    configure(
        &client,
        "inject",
        vec![hook("inject.keyturn.test", &webhook.ca_bundle(), json!({}))],
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "app");
    let status = status_of(
        pods.create(&PostParams::default(), &pod(Some("p"), json!({})))
            .await,
    );
    assert_eq!(
        status.message,
        "Internal error occurred: failed calling webhook \"inject.keyturn.test\": failed to call webhook: Post \"https://hook.webhooks.svc:443/mutate?timeout=10s\": service \"hook\" not found"
    );

    // `sideEffects: None` declares the webhook safe to call for a dry run, which is told so.
    s.route_service(SERVICE_NS, SERVICE, 443, webhook.addr);
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    pods.create(&dry, &pod(Some("dry"), json!({})))
        .await
        .unwrap();
    assert_eq!(webhook.calls(), 1);
    assert_eq!(webhook.reviews()[0]["request"]["dryRun"], true);
    assert!(pods.get_opt("dry").await.unwrap().is_none());
}

#[tokio::test]
async fn events_written_as_the_kube_runtime_recorder_writes_them_round_trip() {
    let s = KubeStandin::start().await.unwrap();
    let client = s.client().await.unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), "app");
    // What `kube::runtime::events::Recorder::publish` sends: a create, then, for a repeat, a
    // merge patch of the whole cached event with its series.
    let now = k8s_openapi::jiff::Timestamp::now();
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("web.{:x}", now.as_nanosecond())),
            namespace: Some("app".into()),
            ..ObjectMeta::default()
        },
        action: Some("Inject".into()),
        reason: Some("Injected".into()),
        note: Some("keyturn-init added".into()),
        type_: Some("Normal".into()),
        event_time: Some(MicroTime(now)),
        regarding: Some(ObjectReference {
            kind: Some("ReplicaSet".into()),
            name: Some("web".into()),
            namespace: Some("app".into()),
            ..ObjectReference::default()
        }),
        reporting_controller: Some("keyturn.dev/webhook".into()),
        reporting_instance: Some("keyturn-webhook-0".into()),
        ..Event::default()
    };
    let name = event.metadata.name.clone().unwrap();
    events.create(&PostParams::default(), &event).await.unwrap();
    let mut repeated = event.clone();
    repeated.series = Some(EventSeries {
        count: 2,
        last_observed_time: MicroTime(k8s_openapi::jiff::Timestamp::now()),
    });
    events
        .patch(&name, &PatchParams::default(), &Patch::Merge(&repeated))
        .await
        .unwrap();
    let stored = events.get(&name).await.unwrap();
    assert_eq!(stored.series.unwrap().count, 2);
    assert_eq!(stored.reason.as_deref(), Some("Injected"));
    let listed = events.list(&Default::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);

    // A repeat that changes what the event is about is refused, as on a real cluster.
    let mut changed = repeated.clone();
    changed.reason = Some("Other".into());
    let status = status_of(
        events
            .patch(&name, &PatchParams::default(), &Patch::Merge(&changed))
            .await,
    );
    assert_eq!(status.code, 422);
    assert!(
        status
            .message
            .ends_with("reason: Invalid value: \"Other\": field is immutable"),
        "{}",
        status.message
    );
    let mut bad = event.clone();
    bad.metadata.name = Some("bad".into());
    bad.type_ = Some("Info".into());
    let status = status_of(events.create(&PostParams::default(), &bad).await);
    assert_eq!(
        status.message,
        "Event.events.k8s.io \"bad\" is invalid: type: Invalid value: \"\": has invalid value: Info"
    );
}

/// kubectl: `$KEYTURN_KUBECTL`, else the pinned one `dev/setup.sh` installs, else PATH; absent,
/// the test is skipped, except in CI.
fn kubectl_path(test: &str) -> Option<std::path::PathBuf> {
    match keyturn_tests::tools::find("kubectl", "KEYTURN_KUBECTL") {
        Ok(path) => Some(path),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the kubectl tests: {e}"
            );
            eprintln!("SKIPPED {test}: {e}");
            None
        }
    }
}

#[tokio::test]
async fn kubectl_applies_a_webhook_configuration_and_lists_the_pods_it_mutated() {
    let Some(bin) =
        kubectl_path("kubectl_applies_a_webhook_configuration_and_lists_the_pods_it_mutated")
    else {
        return;
    };
    // The pod has no labels: a patch adding one key to a missing map would not apply.
    let webhook = Webhook::start(|_| {
        allow(Some(
            json!([{"op": "add", "path": "/metadata/labels", "value": {"injected": "yes"}}]),
        ))
    });
    let (standin, _client) = standin(&webhook).await;
    let home = tempfile::tempdir().unwrap();
    let kubeconfig = home.path().join("kubeconfig");
    standin.write_kubeconfig(&kubeconfig).unwrap();
    let kubectl = |args: Vec<String>, stdin: Option<String>| {
        let (bin, home, kubeconfig) = (bin.clone(), home.path().to_owned(), kubeconfig.clone());
        async move {
            use tokio::io::AsyncWriteExt as _;
            let mut child = tokio::process::Command::new(bin)
                .env_clear()
                .env("HOME", &home)
                .env("KUBECONFIG", &kubeconfig)
                .arg("--cache-dir")
                .arg(home.join("cache"))
                .args(&args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let mut input = child.stdin.take().unwrap();
            if let Some(text) = stdin {
                input.write_all(text.as_bytes()).await.unwrap();
            }
            drop(input);
            let out = child.wait_with_output().await.unwrap();
            assert!(
                out.status.success(),
                "kubectl {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (
                String::from_utf8(out.stdout).unwrap(),
                String::from_utf8(out.stderr).unwrap(),
            )
        }
    };
    let manifest = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata:\n  name: keyturn\nwebhooks:\n- name: inject.keyturn.test\n  sideEffects: None\n  admissionReviewVersions: [v1]\n  clientConfig:\n    service: {{namespace: {SERVICE_NS}, name: {SERVICE}, path: /mutate}}\n    caBundle: {}\n  rules:\n  - {{operations: [CREATE], apiGroups: [\"\"], apiVersions: [v1], resources: [pods]}}\n",
        webhook.ca_bundle()
    );
    let (out, _) = kubectl(
        vec!["apply".into(), "-f".into(), "-".into()],
        Some(manifest),
    )
    .await;
    assert!(
        out.contains("mutatingwebhookconfiguration.admissionregistration.k8s.io/keyturn created"),
        "{out}"
    );
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: app\nspec:\n  containers:\n  - name: app\n    image: registry.k8s.io/pause:3.10\n";
    kubectl(
        vec!["apply".into(), "-f".into(), "-".into()],
        Some(pod.into()),
    )
    .await;
    assert_eq!(webhook.calls(), 1);
    let (out, _) = kubectl(
        vec![
            "get".into(),
            "pods".into(),
            "-n".into(),
            "app".into(),
            "-L".into(),
            "injected".into(),
        ],
        None,
    )
    .await;
    let row = out.lines().nth(1).unwrap_or("");
    assert!(
        row.starts_with("web ") && row.contains("Pending") && row.trim_end().ends_with("yes"),
        "{out}"
    );
}
