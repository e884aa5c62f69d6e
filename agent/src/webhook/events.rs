//! Kubernetes Events about admissions (`Injected`, `InjectionDenied`), recorded on the pod's
//! owner (events.k8s.io/v1, through kube-runtime's `Recorder`, which folds repeats into a
//! series): a pod being created has no name or UID to hang an Event on yet, its first owner
//! (`ownerReferences[0]`, which a controller sets to itself) does. For a Deployment's pods
//! that is the ReplicaSet, not the Deployment: `kubectl describe replicaset <replicaset>` or
//! `kubectl events --for replicaset/<replicaset>` shows why its pods were denied; for a
//! Job's, StatefulSet's or DaemonSet's, the Job, StatefulSet or DaemonSet itself. (`kubectl
//! get events` reads core/v1 Events, whose field is `involvedObject.name=<replicaset>`: the
//! API server refuses the events.k8s.io name `regarding.name` there.)
//!
//! Admissions hand their [`Notice`]s over a bounded queue ([`QUEUE`]) and never wait: when the
//! queue is full the Notice is dropped and counted (`keyturn_webhook_events_dropped_total`).
//! An Event the API server refuses is logged and counted
//! (`keyturn_webhook_events_failed_total`) and not retried: the next admission brings the
//! next Event.

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;

use super::metrics::WebhookMetrics;
use super::review::Notice;

/// How many Notices wait for the recorder at most.
pub const QUEUE: usize = 256;

/// The `reportingController` of every Event.
pub const CONTROLLER: &str = "keyturn-webhook";

/// The longest `note` the Events API accepts (1 kB).
const MAX_NOTE: usize = 1024;

/// The queue's sending end (for `server::Admission`) and the recorder task: it records each
/// Notice as an Event from reporter `keyturn-webhook`, instance `holder`, until every sender
/// is dropped.
pub fn spawn(
    client: kube::Client,
    holder: &str,
    metrics: WebhookMetrics,
) -> (mpsc::Sender<Notice>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: CONTROLLER.to_owned(),
            instance: Some(holder.to_owned()),
        },
    );
    (tx, tokio::spawn(record(recorder, rx, metrics)))
}

async fn record(recorder: Recorder, mut rx: mpsc::Receiver<Notice>, metrics: WebhookMetrics) {
    // Only a change of failure is logged at warn: an API server refusing every Event (RBAC)
    // would otherwise log one line per admission.
    let mut last_failure: Option<String> = None;
    while let Some(notice) = rx.recv().await {
        let event = event(&notice);
        match recorder.publish(&event, &notice.regarding).await {
            Ok(()) => {
                if last_failure.take().is_some() {
                    tracing::info!("webhook Events are recorded again");
                }
            }
            Err(e) => {
                metrics.events_failed.inc();
                let class = failure_class(&e);
                if last_failure.as_deref() != Some(class.as_str()) {
                    tracing::warn!(
                        error = %class,
                        reason = notice.reason,
                        kind = notice.regarding.kind.as_deref().unwrap_or(""),
                        namespace = notice.regarding.namespace.as_deref().unwrap_or(""),
                        name = notice.regarding.name.as_deref().unwrap_or(""),
                        "webhook Event not recorded (further failures of this kind are only counted)"
                    );
                    last_failure = Some(class);
                } else {
                    tracing::debug!(error = %class, "webhook Event not recorded");
                }
            }
        }
    }
}

/// A failure's kind for the log: the API server's code and reason, or the transport's
/// error, never a request body.
fn failure_class(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

/// The Event for a Notice.
fn event(n: &Notice) -> Event {
    Event {
        type_: if n.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: n.reason.to_owned(),
        note: Some(truncate(&n.message, MAX_NOTE).to_owned()),
        action: "Admit".to_owned(),
        secondary: None,
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ObjectReference;

    use super::*;

    #[test]
    fn a_denial_is_a_warning_and_a_long_note_is_cut_to_1_kb_at_a_character() {
        let n = Notice {
            reason: "InjectionDenied",
            warning: true,
            message: "é".repeat(600),
            regarding: ObjectReference::default(),
        };
        let e = event(&n);
        assert_eq!(e.type_, EventType::Warning);
        assert_eq!(e.reason, "InjectionDenied");
        let note = e.note.unwrap();
        assert!(
            note.len() <= MAX_NOTE && note.len() >= MAX_NOTE - 1,
            "{}",
            note.len()
        );
        assert!(note.chars().all(|c| c == 'é'));
        let ok = event(&Notice {
            reason: "Injected",
            warning: false,
            message: "injected keyturn-init".into(),
            regarding: ObjectReference::default(),
        });
        assert_eq!(ok.type_, EventType::Normal);
        assert_eq!(ok.note.as_deref(), Some("injected keyturn-init"));
    }
}
