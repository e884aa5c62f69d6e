//! Watch (`?watch=true` or `?watch=1` on a list URL) and the `resourceVersion` semantics of
//! lists, as kube-apiserver's watch cache serves them.
//!
//! A watch answers 200 with a chunked stream of JSON lines `{"type": …, "object": …}`:
//!
//! - `resourceVersion` unset or `"0"`: synthetic `ADDED` events for every object that exists
//!   (and matches the selectors), then every later change; a number: every change after it,
//!   in order, none before. A number older than the history reaches (see `store`;
//!   `KubeStandin::set_watch_history`, `KubeStandin::compact`) is answered, as the real
//!   server answers it, by one `ERROR` event whose object is the Status
//!   `410 Expired "too old resource version: RV (OLDEST)"`, OLDEST being the version after
//!   which every change is kept, and the stream ends; a number newer than the latest write by
//!   an `ERROR` event with `504 Timeout "Too large resource version: RV, current: CUR"` (the
//!   real server first waits up to 3 s for it to appear; the stand-in does not wait).
//! - Label and field selectors (`metadata.name`, `metadata.namespace`) apply to events as the
//!   real cacher applies them: an object modified into the selection arrives as `ADDED`, one
//!   modified out of it as `DELETED` with its previous state and the new resourceVersion.
//!   A deleted object arrives as `DELETED` with its last state and the delete's
//!   resourceVersion.
//! - `allowWatchBookmarks=true`: a `BOOKMARK` (an object of the kind carrying only
//!   `metadata.resourceVersion`) every bookmark interval (60 s unless
//!   `KubeStandin::set_bookmark_interval` says otherwise; the real server's is a minute) and
//!   once 2 s before the watch's timeout, as the real cacher schedules them. A bookmark's
//!   resourceVersion is the latest write's once every change up to it has been sent.
//! - `sendInitialEvents=true` (the streaming list; `resourceVersionMatch=NotOlderThan` and
//!   `allowWatchBookmarks=true` required, as the real validation words it): the current
//!   objects as `ADDED`, then a `BOOKMARK` annotated `k8s.io/initial-events-end: "true"`.
//! - `timeoutSeconds`: the stream ends (cleanly) after that long; unset, after 30 to 60
//!   minutes, as the real server's default `--min-request-timeout` makes it.
//! - Writes never wait for watchers: each watch has a bounded buffer (1000 changes unless
//!   `KubeStandin::set_watch_buffer` says otherwise) and a watcher whose buffer is full is
//!   dropped, which ends its stream after what it had, as the real cacher terminates a
//!   watcher that cannot keep up. Clients resume from the last resourceVersion they saw.
//! - With `Accept: application/json;as=Table;…` (`kubectl get -w`) every event's object is a
//!   one-row Table (see `table`).
//!
//! Lists: `resourceVersion` unset, `"0"` or `resourceVersionMatch=NotOlderThan` return the
//! latest state (a version newer than the latest write is `504 Too large resource version`);
//! `resourceVersionMatch=Exact` returns the state at exactly that version, rebuilt from the
//! history (older than the history reaches: `410 Expired "The resourceVersion for the
//! provided list is too old."`, as a compacted etcd answers). The combinations the real
//! `ValidateListOptions` refuses are refused with its 422 messages.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::objects::Query;
use super::resources::{self, ResourceKind};
use super::selectors::{FieldSelector, LabelSelector};
use super::server::Shared;
use super::status::{ApiError, FieldError};
use super::store::{Change, ChangeType, TooOld};

/// How often bookmarks are sent unless `KubeStandin::set_bookmark_interval` says otherwise.
pub(crate) const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

/// The annotation of the bookmark that ends a streaming list's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

fn list_options_invalid(errs: &[FieldError]) -> ApiError {
    ApiError::invalid_kind("meta.k8s.io", "ListOptions", "", errs)
}

/// `ValidateListOptions` of the real server, for a list or (`watch`) a watch.
pub(crate) fn check_list_options(query: &Query, watch: bool) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    let rv_match = query.get("resourceVersionMatch");
    let send_initial = query.0.contains_key("sendInitialEvents");
    let continue_token = query.get("continue").is_some();
    if watch {
        if send_initial && rv_match != Some("NotOlderThan") {
            errs.push(FieldError::forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if let Some(m) = rv_match {
            if !send_initial {
                errs.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                ));
            }
            if m != "NotOlderThan" {
                errs.push(FieldError::not_supported(
                    "resourceVersionMatch",
                    m,
                    &["NotOlderThan"],
                ));
            }
            if continue_token {
                errs.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
        }
        if query.flag("sendInitialEvents") && !query.flag("allowWatchBookmarks") {
            errs.push(FieldError::forbidden(
                "allowWatchBookmarks",
                "allowWatchBookmarks must be set to true when sendInitialEvents is true",
            ));
        }
    } else {
        if let Some(m) = rv_match {
            if query.get("resourceVersion").is_none() {
                errs.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            if continue_token {
                errs.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
            if m != "Exact" && m != "NotOlderThan" {
                errs.push(FieldError::not_supported(
                    "resourceVersionMatch",
                    m,
                    &["Exact", "NotOlderThan", ""],
                ));
            }
            if m == "Exact" && query.get("resourceVersion") == Some("0") {
                errs.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
        }
        if send_initial {
            errs.push(FieldError::forbidden(
                "sendInitialEvents",
                "sendInitialEvents is forbidden for list",
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(list_options_invalid(&errs))
    }
}

/// A `resourceVersion` parameter as a number; `None` when unset. A malformed one is the
/// real storage layer's 422 on the resource.
pub(crate) fn parse_resource_version(
    kind: &ResourceKind,
    query: &Query,
) -> Result<Option<u64>, ApiError> {
    let Some(rv) = query.get("resourceVersion") else {
        return Ok(None);
    };
    rv.parse::<u64>().map(Some).map_err(|_| {
        ApiError::invalid_kind(
            kind.group,
            kind.plural,
            "",
            &[FieldError::invalid_str(
                "resourceVersion",
                rv,
                format!(
                    "strconv.ParseUint: parsing {}: invalid syntax",
                    super::status::go_quote(rv)
                ),
            )],
        )
    })
}

/// The 410 of a watch from a resourceVersion the history no longer reaches.
fn too_old(requested: u64, oldest: u64) -> ApiError {
    ApiError::expired(format!("too old resource version: {requested} ({oldest})"))
}

fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

fn error_event(err: &ApiError) -> Value {
    event("ERROR", err.to_status_json())
}

/// A bookmark: an object of the watched kind with only its resourceVersion (and, ending a
/// streaming list's initial events, the annotation saying so).
fn bookmark(kind: &ResourceKind, rv: u64, initial_events_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({INITIAL_EVENTS_END: "true"});
    }
    event(
        "BOOKMARK",
        json!({"kind": kind.kind, "apiVersion": kind.api_version(), "metadata": metadata}),
    )
}

/// What the selectors let a watcher see of one change, as the real cacher converts it.
fn convert(
    change: &Change,
    labels: &LabelSelector,
    fields: &FieldSelector,
    kind: &ResourceKind,
) -> Option<Value> {
    let passes = |o: &Value| labels.matches(o) && fields.matches(o);
    let object = |o: &Value| kind.render(o.clone());
    let now = passes(&change.object);
    match change.change {
        ChangeType::Added => now.then(|| event("ADDED", object(&change.object))),
        ChangeType::Deleted => now.then(|| event("DELETED", object(&change.object))),
        ChangeType::Modified => {
            let before = change.previous.as_ref().is_some_and(passes);
            match (before, now) {
                (true, true) => Some(event("MODIFIED", object(&change.object))),
                (false, true) => Some(event("ADDED", object(&change.object))),
                (true, false) => {
                    let mut gone = object(change.previous.as_ref()?);
                    if let Some(meta) = gone.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.insert(
                            "resourceVersion".into(),
                            json!(change.resource_version.to_string()),
                        );
                    }
                    Some(event("DELETED", gone))
                }
                (false, false) => None,
            }
        }
    }
}

/// One open watch, polled by the response body.
struct WatchStream {
    shared: Arc<Shared>,
    kind: &'static ResourceKind,
    /// Events ready to go out, before anything else.
    pending: VecDeque<Value>,
    /// The watcher's buffer; `None` once the stream is to end after `pending`.
    rx: Option<tokio::sync::mpsc::Receiver<Arc<Change>>>,
    labels: LabelSelector,
    fields: FieldSelector,
    deadline: Instant,
    /// When the next bookmark is due; `None` without `allowWatchBookmarks`.
    next_bookmark: Option<Instant>,
    bookmark_interval: Duration,
    /// The resourceVersion of the last change taken from the buffer (or of the start).
    last_rv: u64,
    /// Each event's object as a one-row Table (`kubectl get -w`).
    table: bool,
}

impl WatchStream {
    /// The real cacher's `nextBookmarkTime`: a period from now, but 2 s before the deadline
    /// if that comes first; none once that moment has passed.
    fn schedule_bookmark(&mut self) {
        let now = Instant::now();
        let mut next = now + self.bookmark_interval;
        if let Some(pre_timeout) = self.deadline.checked_sub(Duration::from_secs(2))
            && pre_timeout < next
        {
            next = pre_timeout;
        }
        self.next_bookmark = (next > now).then_some(next);
    }

    fn take(&mut self, change: &Change) {
        self.last_rv = change.resource_version;
        if let Some(e) = convert(change, &self.labels, &self.fields, self.kind) {
            self.pending.push_back(e);
        }
    }

    /// Queues a bookmark at the latest write, after every change up to it; none if the
    /// watcher was dropped meanwhile (changes were lost, so no version may be promised).
    fn bookmark_now(&mut self) {
        let latest = self.shared.store().resource_version();
        let Some(rx) = self.rx.as_mut() else {
            return;
        };
        let mut buffered = Vec::new();
        let dropped = loop {
            match rx.try_recv() {
                Ok(c) => buffered.push(c),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break false,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => break true,
            }
        };
        for c in buffered {
            self.take(&c);
        }
        if dropped {
            self.rx = None;
        } else {
            self.pending
                .push_back(bookmark(self.kind, latest.max(self.last_rv), false));
        }
    }

    async fn next_event(&mut self) -> Option<Value> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            let rx = self.rx.as_mut()?;
            let bookmark_at = self.next_bookmark;
            tokio::select! {
                change = rx.recv() => match change {
                    Some(c) => self.take(&c),
                    // Dropped for falling behind: the stream ends.
                    None => self.rx = None,
                },
                () = tokio::time::sleep_until(self.deadline) => {
                    self.rx = None;
                }
                () = async {
                    match bookmark_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.bookmark_now();
                    self.schedule_bookmark();
                }
            }
        }
    }

    fn encode(&self, mut event: Value) -> Bytes {
        if self.table
            && event["type"] != "ERROR"
            && event["type"] != "BOOKMARK"
            && let Some(table) = super::table::convert_with(self.kind, &event["object"])
        {
            event["object"] = table;
        }
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

/// Starts a watch of `kind` (in `namespace`, if given): the response body, or the error the
/// request is answered with instead (bad options or selectors).
pub(crate) fn start(
    shared: Arc<Shared>,
    kind: &'static ResourceKind,
    namespace: Option<&str>,
    query: &Query,
    table: bool,
) -> Result<Body, ApiError> {
    check_list_options(query, true)?;
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))?;
    let rv = parse_resource_version(kind, query)?;
    let send_initial_events = query.0.get("sendInitialEvents").map(String::as_str);
    let streaming_list = matches!(send_initial_events, Some("true" | "1"));
    let initial = match send_initial_events {
        Some(_) => streaming_list,
        None => rv.is_none_or(|r| r == 0),
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map_or_else(
            || Duration::from_secs(1800 + rand::random::<u64>() % 1800),
            Duration::from_secs,
        );
    let bookmarks = query.flag("allowWatchBookmarks");

    let mut pending = VecDeque::new();
    let mut store = shared.store();
    let latest = store.resource_version();
    let mut last_rv = latest;
    let mut rx = None;
    let start_error = match rv {
        Some(r) if !initial && r > 0 => match store.check_resource_version(r) {
            Err(TooOld::Expired(oldest)) => Some(too_old(r, oldest)),
            Err(TooOld::TooLarge(current)) => {
                Some(ApiError::too_large_resource_version(r, current))
            }
            Ok(()) => None,
        },
        _ => None,
    };
    if let Some(err) = start_error {
        pending.push_back(error_event(&err));
    } else {
        if initial {
            let objects: Vec<Value> = if *kind == resources::NAMESPACES {
                super::namespaces::list(&store)["items"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|mut o| {
                        o["apiVersion"] = json!("v1");
                        o["kind"] = json!("Namespace");
                        o
                    })
                    .collect()
            } else {
                store
                    .list(kind, namespace)
                    .map(|o| kind.render(o.render()))
                    .collect()
            };
            for o in objects {
                if labels.matches(&o) && fields.matches(&o) {
                    pending.push_back(event("ADDED", o));
                }
            }
            if streaming_list {
                pending.push_back(bookmark(kind, latest, true));
            }
        } else if let Some(r) = rv {
            last_rv = r;
            for c in store.changes_since(kind, namespace, r) {
                last_rv = c.resource_version;
                if let Some(e) = convert(&c, &labels, &fields, kind) {
                    pending.push_back(e);
                }
            }
        }
        rx = Some(store.watch(kind, namespace));
    }
    let bookmark_interval = store.bookmark_interval;
    drop(store);

    let mut stream = WatchStream {
        shared,
        kind,
        pending,
        rx,
        labels,
        fields,
        deadline: Instant::now() + timeout,
        next_bookmark: None,
        bookmark_interval,
        last_rv,
        table,
    };
    if bookmarks {
        stream.schedule_bookmark();
    }
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        let e = s.next_event().await?;
        let line = s.encode(e);
        Some((Ok::<_, Infallible>(line), s))
    });
    Ok(Body::from_stream(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_may_not_pick_a_resource_version_match_without_initial_events() {
        let q = Query::parse(Some("watch=1&resourceVersionMatch=NotOlderThan"));
        let err = check_list_options(&q, true).unwrap_err();
        assert_eq!(
            err.message,
            "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"
        );
        let q = Query::parse(Some("resourceVersionMatch=Exact&resourceVersion=0"));
        let err = check_list_options(&q, false).unwrap_err();
        assert!(
            err.message
                .contains(r#"resourceVersionMatch "exact" is forbidden for resourceVersion "0""#),
            "{}",
            err.message
        );
        let q = Query::parse(Some("resourceVersionMatch=NotOlderThan&resourceVersion=0"));
        assert!(check_list_options(&q, false).is_ok());
    }

    #[test]
    fn an_object_modified_out_of_the_selection_is_deleted_for_the_watcher() {
        let change = Change {
            resource_version: 9,
            resource: "secrets".into(),
            namespace: "n".into(),
            name: "s".into(),
            change: ChangeType::Modified,
            object: json!({"metadata": {"name": "s", "labels": {"app": "b"}, "resourceVersion": "9"}}),
            previous: Some(
                json!({"metadata": {"name": "s", "labels": {"app": "a"}, "resourceVersion": "7"}}),
            ),
        };
        let labels = LabelSelector::parse("app=a").unwrap();
        let e = convert(
            &change,
            &labels,
            &FieldSelector::default(),
            &resources::SECRETS,
        )
        .unwrap();
        assert_eq!(e["type"], "DELETED");
        assert_eq!(e["object"]["metadata"]["labels"]["app"], "a");
        assert_eq!(e["object"]["metadata"]["resourceVersion"], "9");
    }
}
