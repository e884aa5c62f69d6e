//! Rotation policies from RotationPolicy objects (`rotationpolicies.keyturn.dev`, v1), beside
//! the policy files.
//!
//! - **One validation.** An object's `spec` is read into the policy file's own types and
//!   checked by the same `Validator` as a file ([`policy_from_object`]). Its problems name
//!   `rotationpolicy/NAMESPACE/NAME` and the field, and never a value written in the object:
//!   they go into the object's status, which everyone who may read the object sees, and into
//!   the daemon's log.
//! - **One name space.** A policy's name is the object's `metadata.name`, and policy names
//!   are global, across files and namespaces, as are stores. [`merge`] decides who keeps a
//!   name or a store: the policy files always (they are the platform team's configuration,
//!   and a namespace's user must not be able to disable one by creating an object of the same
//!   name), then the oldest object (by `creationTimestamp`, then namespace, then name). The
//!   loser is never dropped silently: it is a [`Rejection`] for its status and the log. The
//!   outcome depends only on the objects, never on the order they arrived in, so every
//!   replica decides the same.
//! - **A watch.** [`watch()`] follows the objects with kube-runtime's watcher, which resumes
//!   from the last resourceVersion it saw and lists everything again after `410 Gone`. It
//!   publishes a [`Snapshot`] of every object, each validated, once the first full list is
//!   in, then after changes, at most once per [`WatchConfig::debounce`], so a list of 100,000
//!   objects or a burst of edits makes one snapshot, not one per object. Until the first list
//!   is complete the snapshot is `None`: the daemon then knows nothing about objects yet, which
//!   is not the same as knowing there are none. Only what [`merge`] and the daemon need is
//!   kept per object (the validated [`Policy`], or its problems), never the object's JSON.
//!
//! **Deleting a RotationPolicy stops its management and nothing else**: its rotations are no
//! longer scheduled, and the credential, its store and the Secrets it was delivered to are
//! left untouched, as they are when a policy is removed from a file. An object edited into
//! an invalid spec, or losing its name or store to another policy, is likewise no longer
//! managed (and says why in its status) while its credential stays where it is.

mod json;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::Value;
use serde_saphyr::{Location, Spanned};
use tokio::sync::watch;
use tokio::time::Instant;

use super::crd::{GROUP, PLURAL, VERSION};
use super::schema::{RawMetadata, RawPolicy, RawSpec};
use super::{
    API_VERSION, FilePolicy, KIND, Policy, PolicyError, PolicyErrors, PolicyObject, StoreKey,
    Validator,
};

/// Why a RotationPolicy object yields no policy. Its name is the reason of the object's
/// `Ready` False condition, of the daemon's `RotationPolicy not managed` log line and of
/// `keyturn status`'s row, so one type says it everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The spec is not a valid policy.
    InvalidSpec,
    /// A policy file or an older object has the policy's name.
    NameConflict,
    /// Another policy already uses the store.
    StoreConflict,
}

impl RejectReason {
    /// Every reason.
    pub const ALL: [Self; 3] = [Self::InvalidSpec, Self::NameConflict, Self::StoreConflict];

    /// The reason in one CamelCase word, as a condition reason is written.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidSpec => "InvalidSpec",
            Self::NameConflict => "NameConflict",
            Self::StoreConflict => "StoreConflict",
        }
    }

    /// The reason a condition reason `r` names, if it is one of these.
    #[must_use]
    pub fn from_condition_reason(r: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == r)
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long [`watch()`] waits at least between two snapshots, unless told otherwise.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);

/// What replaces a value in a message about an object.
const HIDDEN: &str = "(value not shown)";

/// The RotationPolicy resource (`keyturn.dev/v1`, `rotationpolicies`).
#[must_use]
pub fn api_resource() -> ApiResource {
    api_resource_in(GROUP)
}

/// The RotationPolicy resource defined in API group `group` (tests on a shared cluster
/// define it in a group of their own).
#[must_use]
pub fn api_resource_in(group: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, VERSION, KIND), PLURAL)
}

/// `rotationpolicy/NAMESPACE/NAME`: how messages and [`Policy::file`] name an object.
#[must_use]
pub fn origin(namespace: &str, name: &str) -> String {
    format!("rotationpolicy/{namespace}/{name}")
}

impl PolicyObject {
    fn of(object: &DynamicObject) -> Self {
        let meta = &object.metadata;
        Self {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            generation: meta.generation,
        }
    }

    /// `rotationpolicy/NAMESPACE/NAME`.
    #[must_use]
    pub fn origin(&self) -> String {
        origin(&self.namespace, &self.name)
    }
}

/// The validated policy of one RotationPolicy object: its name is `metadata.name`, its
/// [`Policy::object`] says which object (uid and generation included) and [`Policy::file`]
/// reads `rotationpolicy/NAMESPACE/NAME`. `apiVersion` and `kind` are the watch's business
/// (a test's own group is as good as `keyturn.dev`); `status` and the rest of `metadata` are
/// not the policy's.
///
/// # Errors
/// Every problem found, each naming `rotationpolicy/NAMESPACE/NAME` and the field
/// (`spec.window`), none with a place in a file (there is none) nor a value written in the
/// object: a quoted value is replaced by `(value not shown)`, and so is any word of the
/// schedule's fields, which the cron and interval parsers quote back in their sentences.
pub fn policy_from_object(object: &DynamicObject) -> Result<Policy, PolicyErrors> {
    let id = PolicyObject::of(object);
    let origin = id.origin();
    let spec = object.data.get("spec");
    let raw = match spec.map(json::from_value::<RawSpec>) {
        Some(Ok(spec)) => spec,
        Some(Err(e)) => {
            return Err(PolicyErrors(vec![PolicyError {
                origin,
                at: None,
                field: e.field("spec"),
                // The same scrubbing as the validator's messages: a deserializer's message
                // may quote what it refused.
                message: scrub(e.message(), &schedule_values(spec)),
            }]));
        }
        None => {
            return Err(PolicyErrors(vec![PolicyError {
                origin,
                at: None,
                field: "spec".into(),
                message: "missing".into(),
            }]));
        }
    };
    let unplaced = |value: String| Spanned::new(value, Location::UNKNOWN, Location::UNKNOWN);
    let raw = RawPolicy {
        api_version: unplaced(API_VERSION.to_owned()),
        kind: unplaced(KIND.to_owned()),
        metadata: RawMetadata {
            name: unplaced(id.name.clone()),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        },
        spec: raw,
    };
    let file: Arc<Path> = Arc::from(Path::new(&origin));
    let mut v = Validator::new(&file);
    let policy = v.policy(raw);
    let errors = v.into_errors();
    match policy {
        Some(mut p) if errors.is_empty() => {
            p.object = Some(Box::new(id));
            Ok(p)
        }
        _ => {
            let written = schedule_values(spec);
            Err(PolicyErrors(
                errors
                    .into_iter()
                    .map(|e| PolicyError {
                        at: None,
                        message: scrub(&e.message, &written),
                        ..e
                    })
                    .collect(),
            ))
        }
    }
}

/// The values of the schedule's fields, which library parsers quote back unquoted.
fn schedule_values(spec: Option<&Value>) -> Vec<&str> {
    ["schedule", "every", "window", "timezone"]
        .iter()
        .filter_map(|f| spec?.get(f)?.as_str())
        .collect()
}

/// `message` with every value replaced by [`HIDDEN`]: each quoted value (keyturn quotes a
/// written value only through `echo`, as `"…"` with `"` escaped, maybe followed by `… (N
/// bytes)`), and each word of at least four characters of the `written` values.
fn scrub(message: &str, written: &[&str]) -> String {
    // A marker no message holds (`echo` and `clean` escape control characters), so a written
    // word cannot match inside an earlier replacement.
    const MARK: char = '\u{0}';
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..start]);
        out.push(MARK);
        let quoted = &rest[start + 1..];
        let mut end = None;
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            rest = "";
            break;
        };
        rest = &quoted[end..];
        if let Some(after) = rest.strip_prefix("… (")
            && let Some(close) = after.find(" bytes)")
        {
            rest = &after[close + " bytes)".len()..];
        }
    }
    out.push_str(rest);
    let mut words: Vec<&str> = written
        .iter()
        .flat_map(|w| std::iter::once(w.trim()).chain(w.split_whitespace()))
        .filter(|w| w.chars().count() >= 4)
        .collect();
    words.sort_by_key(|w| std::cmp::Reverse(w.len()));
    for w in words {
        out = out.replace(w, &MARK.to_string());
    }
    out.replace(MARK, HIDDEN)
}

/// One RotationPolicy object as the source keeps it: its validated policy, or its problems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPolicy {
    created: Option<Timestamp>,
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Valid(Arc<Policy>),
    Invalid(Box<(PolicyObject, PolicyErrors)>),
}

impl ObjectPolicy {
    /// Validates `object` ([`policy_from_object`]) and keeps the outcome and its age, and
    /// nothing else of it.
    #[must_use]
    pub fn from_object(object: &DynamicObject) -> Self {
        let created = object.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let outcome = match policy_from_object(object) {
            Ok(p) => Outcome::Valid(Arc::new(p)),
            Err(e) => Outcome::Invalid(Box::new((PolicyObject::of(object), e))),
        };
        Self { created, outcome }
    }

    /// The object.
    #[must_use]
    pub fn object(&self) -> &PolicyObject {
        match &self.outcome {
            Outcome::Valid(p) => p
                .object
                .as_ref()
                .expect("a policy made from an object names it"),
            Outcome::Invalid(b) => &b.0,
        }
    }

    /// Its `creationTimestamp`: the older object keeps a contested name or store.
    #[must_use]
    pub fn created(&self) -> Option<Timestamp> {
        self.created
    }

    /// Its policy, or why it has none.
    ///
    /// # Errors
    /// The problems found in the object (see [`policy_from_object`]).
    pub fn policy(&self) -> Result<&Arc<Policy>, &PolicyErrors> {
        match &self.outcome {
            Outcome::Valid(p) => Ok(p),
            Outcome::Invalid(b) => Err(&b.1),
        }
    }
}

/// Every RotationPolicy object the watch sees, each validated. Cheap to clone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    objects: Arc<[Arc<ObjectPolicy>]>,
}

impl Snapshot {
    /// A snapshot of `objects`.
    #[must_use]
    pub fn new(objects: Vec<Arc<ObjectPolicy>>) -> Self {
        Self {
            objects: objects.into(),
        }
    }

    /// The objects, ordered by `NAMESPACE/NAME`.
    #[must_use]
    pub fn objects(&self) -> &[Arc<ObjectPolicy>] {
        &self.objects
    }

    /// How many objects.
    #[must_use]
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

/// A RotationPolicy object that yields no policy, and why: for its status (a `Ready`
/// condition with this reason and message) and the daemon's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The object.
    pub object: PolicyObject,
    /// Why, in one word.
    pub reason: RejectReason,
    /// Why, for a person: each problem as `FIELD: MESSAGE`, `; `-separated (never a value
    /// written in the object), or who holds the name or store. It goes into the object's
    /// status, which whoever may read RotationPolicies in that namespace reads: it names a
    /// holder only in that same namespace, never another namespace's object or the daemon's
    /// files.
    pub message: String,
    /// For a clash, who holds the name or store, whatever it is: for the daemon's log, which
    /// only its operators read.
    pub held_by: Option<String>,
}

impl Rejection {
    /// `REASON: message (held by HOLDER)`: the rejection in full, for an operator's command
    /// (`rotate`, `break-glass`, `status`), which may name what the status may not.
    #[must_use]
    pub fn in_full(&self) -> String {
        match &self.held_by {
            Some(h) => format!("{}: {} (held by {h})", self.reason, self.message),
            None => format!("{}: {}", self.reason, self.message),
        }
    }
}

/// The policies to run: the files' and the objects' that won, and the objects that lost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Merged {
    /// Every policy by name: all of the files', and the objects' that are valid and clash
    /// with nothing older; each with the whole policy where it is held (always for an
    /// object's; for a file's, where [`FilePolicy::policy`] has it).
    pub policies: BTreeMap<Arc<str>, Option<Arc<Policy>>>,
    /// The objects that yield no policy, in namespace/name order.
    pub rejected: Vec<Rejection>,
}

impl Merged {
    /// The whole policy named `name`, where it is held.
    #[must_use]
    pub fn policy(&self, name: &str) -> Option<&Arc<Policy>> {
        self.policies.get(name)?.as_ref()
    }
}

/// Who holds a name or a store, for the loser's message.
#[derive(Clone, Copy)]
enum Holder<'a> {
    File(&'a Path),
    Object(&'a PolicyObject, Option<Timestamp>),
}

impl Holder<'_> {
    /// The holder, in full: for the log.
    fn describe(&self) -> String {
        match self {
            Self::File(f) => format!("the daemon's policy file {}", f.display()),
            Self::Object(o, _) => o.origin(),
        }
    }

    /// The holder as the status of an object in `namespace` may name it: an object in the
    /// same namespace by name; another namespace's object or a file only as such.
    fn describe_to(&self, namespace: &str) -> String {
        match self {
            Self::Object(o, _) if self.visible_to(namespace) => o.origin(),
            Self::Object(..) => "a RotationPolicy in another namespace".to_owned(),
            Self::File(_) => "one of the daemon's policy files".to_owned(),
        }
    }

    /// Whether the status of an object in `namespace` may name this holder and its policy.
    fn visible_to(&self, namespace: &str) -> bool {
        matches!(self, Self::Object(o, _) if o.namespace == namespace)
    }
}

/// The policy set of `files` (already validated together by [`super::load`]) and `objects`.
///
/// Files win every clash; among objects the oldest wins (by `creationTimestamp`, then
/// namespace, then name; an object without a timestamp comes last). A loser, and every
/// invalid object, is a [`Rejection`]. The result depends only on the inputs, not on their
/// order.
#[must_use]
pub fn merge(files: &[Policy], objects: &[Arc<ObjectPolicy>]) -> Merged {
    let files: Vec<FilePolicy> = files
        .iter()
        .map(|p| FilePolicy::new(p.clone(), true))
        .collect();
    merge_shared(&files, objects)
}

/// [`merge`] of the policy files as the daemon holds them (each whole or not, shared between
/// merges: each merge would otherwise copy every one of them).
#[must_use]
pub fn merge_shared(files: &[FilePolicy], objects: &[Arc<ObjectPolicy>]) -> Merged {
    let mut merged = Merged::default();
    let mut names: BTreeMap<&str, Holder<'_>> = BTreeMap::new();
    let mut stores: BTreeMap<StoreKey, (&str, Holder<'_>)> = BTreeMap::new();
    for p in files {
        let holder = Holder::File(&p.file);
        names.entry(&p.name).or_insert(holder);
        stores.entry(p.store).or_insert((&p.name, holder));
        merged
            .policies
            .insert(Arc::clone(&p.name), p.policy.clone());
    }
    let mut ordered: Vec<&ObjectPolicy> = objects.iter().map(AsRef::as_ref).collect();
    ordered.sort_by(|a, b| age_order(a).cmp(&age_order(b)));
    for o in ordered {
        let object = o.object();
        let p = match o.policy() {
            Ok(p) => p,
            Err(errors) => {
                merged.rejected.push(Rejection {
                    object: object.clone(),
                    reason: RejectReason::InvalidSpec,
                    message: summary(errors),
                    held_by: None,
                });
                continue;
            }
        };
        let here = object.namespace.as_str();
        if let Some(holder) = names.get(p.name.as_str()) {
            merged.rejected.push(Rejection {
                object: object.clone(),
                reason: RejectReason::NameConflict,
                message: format!(
                    "policy name {} is already taken by {}{} (policy names are unique across \
                     policy files and namespaces)",
                    p.name,
                    holder.describe_to(here),
                    precedence(holder, o.created)
                ),
                held_by: Some(holder.describe()),
            });
            continue;
        }
        let store = StoreKey::of(&p.store);
        if let Some((other, holder)) = stores.get(&store) {
            // The other policy's name only where its holder may be named.
            let by = if holder.visible_to(here) {
                format!("policy {other}")
            } else {
                "another policy".to_owned()
            };
            merged.rejected.push(Rejection {
                object: object.clone(),
                reason: RejectReason::StoreConflict,
                message: format!(
                    "store {} is already used by {by} ({}{}); a store holds one policy's \
                     credential",
                    p.store,
                    holder.describe_to(here),
                    precedence(holder, o.created)
                ),
                held_by: Some(format!("policy {other} of {}", holder.describe())),
            });
            continue;
        }
        let holder = Holder::Object(object, o.created);
        names.insert(&p.name, holder);
        stores.insert(store, (&p.name, holder));
        merged
            .policies
            .insert(Arc::from(p.name.as_str()), Some(Arc::clone(p)));
    }
    merged.rejected.sort_by(|a, b| a.object.cmp(&b.object));
    merged
}

/// Objects in the order they claim names and stores: oldest first, those without a
/// timestamp last, ties by namespace then name.
fn age_order(o: &ObjectPolicy) -> (bool, Option<Timestamp>, &str, &str) {
    let object = o.object();
    (
        o.created.is_none(),
        o.created,
        &object.namespace,
        &object.name,
    )
}

/// Why `holder` comes first, for an object created at `created`.
fn precedence(holder: &Holder<'_>, created: Option<Timestamp>) -> &'static str {
    match holder {
        Holder::File(_) => ", and policy files come before RotationPolicy objects",
        Holder::Object(_, theirs) if *theirs == created => {
            ", created in the same second and first in namespace and name order"
        }
        Holder::Object(..) => ", which is older",
    }
}

/// Each problem as `FIELD: MESSAGE`, `; `-separated: the object is named by the status it
/// goes into (and by [`Rejection::object`] in a log line).
fn summary(errors: &PolicyErrors) -> String {
    let mut out = String::new();
    for e in &errors.0 {
        if !out.is_empty() {
            out.push_str("; ");
        }
        if e.field.is_empty() {
            out.push_str(&e.message);
        } else {
            let _ = write!(out, "{}: {}", e.field, e.message);
        }
    }
    out
}

// ---- the watch --------------------------------------------------------------------------

/// What [`watch()`] watches and how often it publishes.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The namespace to watch; `None`: all of them.
    pub namespace: Option<String>,
    /// The resource: [`api_resource`], or one defined in another group (tests on a shared
    /// cluster define it in a group of their own).
    pub resource: ApiResource,
    /// The shortest time between two snapshots.
    pub debounce: Duration,
    /// Where the watch counts its lists, snapshots and failures.
    pub stats: Arc<SourceStats>,
}

impl WatchConfig {
    /// Watches RotationPolicies in `namespace` (`None`: all), publishing at most every
    /// [`DEFAULT_DEBOUNCE`].
    #[must_use]
    pub fn new(namespace: Option<String>) -> Self {
        Self {
            namespace,
            resource: api_resource(),
            debounce: DEFAULT_DEBOUNCE,
            stats: Arc::default(),
        }
    }
}

/// A kind of watch failure, counted in [`SourceStats`]. Each is retried by the watcher
/// after its default backoff (0.8 s doubling to 30 s, jittered, as client-go's reflector).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Failure {
    /// A list (the first, or one after `410 Gone`) failed.
    List,
    /// A watch could not be started.
    WatchStart,
    /// A watch failed while running.
    Watch,
    /// The API server no longer has the resourceVersion the watch resumes from (`410
    /// Gone`): everything is listed again. Expected now and then, not a fault.
    Expired,
    /// A list or event came without a resourceVersion.
    NoResourceVersion,
}

impl Failure {
    /// Every kind.
    pub const ALL: [Self; 5] = [
        Self::List,
        Self::WatchStart,
        Self::Watch,
        Self::Expired,
        Self::NoResourceVersion,
    ];

    /// The label of this kind, for a metric.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::List => "list",
            Self::WatchStart => "watch_start",
            Self::Watch => "watch",
            Self::Expired => "expired",
            Self::NoResourceVersion => "no_resource_version",
        }
    }
}

/// What [`watch()`] counts, for the daemon's metrics.
#[derive(Debug, Default)]
pub struct SourceStats {
    failures: [AtomicU64; Failure::ALL.len()],
    lists: AtomicU64,
    snapshots: AtomicU64,
}

impl SourceStats {
    /// Failures of `kind` so far.
    #[must_use]
    pub fn failures(&self, kind: Failure) -> u64 {
        self.failures[kind as usize].load(Ordering::Relaxed)
    }

    /// Complete lists so far: the first, and one after each `410 Gone`.
    #[must_use]
    pub fn lists(&self) -> u64 {
        self.lists.load(Ordering::Relaxed)
    }

    /// Snapshots published so far.
    #[must_use]
    pub fn snapshots(&self) -> u64 {
        self.snapshots.load(Ordering::Relaxed)
    }
}

/// Follows the RotationPolicy objects of `config` and publishes a [`Snapshot`] of all of
/// them on `tx`: after the first complete list, then after changes, at most once per
/// `config.debounce`. `tx` keeps `None` until the first list is complete; a list again
/// after `410 Gone` replaces the objects only once it is complete (objects deleted in
/// between disappear then), and the snapshot before it stays meanwhile.
///
/// A change that leaves an object's spec as it was (its `metadata.generation` and uid
/// unchanged: a status or label update) is not a change here, so the daemon's own status
/// writes publish nothing.
///
/// Failures are retried by kube-runtime's watcher with its default backoff, counted in
/// `config.stats`, and logged once per kind in a row of failures (warn; info for the
/// expected `410 Gone`), then once when the watch works again.
///
/// Returns when every receiver of `tx` is gone; otherwise runs until dropped.
pub async fn watch(client: kube::Client, config: WatchConfig, tx: watch::Sender<Option<Snapshot>>) {
    let api: Api<DynamicObject> = match &config.namespace {
        Some(ns) => Api::namespaced_with(client, ns, &config.resource),
        None => Api::all_with(client, &config.resource),
    };
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut objects = Objects::default();
    let mut failing: Vec<(Failure, Option<u16>)> = Vec::new();
    let mut due: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    let stats = &config.stats;
    loop {
        let publish_due = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            biased;
            () = tx.closed() => return,
            () = publish_due => {
                tx.send_replace(Some(objects.snapshot()));
                stats.snapshots.fetch_add(1, Ordering::Relaxed);
                last = Some(Instant::now());
                due = None;
                continue;
            }
            event = events.next() => event,
        };
        let Some(event) = event else {
            // The watcher's stream never ends; the backoff gives up never.
            return;
        };
        let changed = match event {
            Ok(watcher::Event::Init) => {
                objects.init();
                false
            }
            Ok(watcher::Event::InitApply(o)) => {
                objects.init_apply(&o);
                false
            }
            Ok(watcher::Event::InitDone) => {
                objects.init_done();
                stats.lists.fetch_add(1, Ordering::Relaxed);
                recovered(&mut failing, &config);
                true
            }
            Ok(watcher::Event::Apply(o)) => {
                recovered(&mut failing, &config);
                objects.apply(&o)
            }
            Ok(watcher::Event::Delete(o)) => {
                recovered(&mut failing, &config);
                objects.delete(&o)
            }
            Err(e) => {
                failed(&e, &mut failing, &config);
                false
            }
        };
        if changed && due.is_none() {
            let now = Instant::now();
            due = Some(last.map_or(now, |l| (l + config.debounce).max(now)));
        }
    }
}

fn what(config: &WatchConfig) -> String {
    let scope = config.namespace.as_deref().unwrap_or("all namespaces");
    format!(
        "{}.{} in {scope}",
        config.resource.plural, config.resource.group
    )
}

/// Counts `e`, and logs it unless the same kind already failed since the watch last worked.
fn failed(e: &watcher::Error, failing: &mut Vec<(Failure, Option<u16>)>, config: &WatchConfig) {
    let api_code = |e: &kube::Error| match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    };
    let (kind, code) = match e {
        watcher::Error::InitialListFailed(e) => (Failure::List, api_code(e)),
        watcher::Error::WatchStartFailed(e) => (Failure::WatchStart, api_code(e)),
        watcher::Error::WatchError(s) if s.code == 410 => (Failure::Expired, Some(410)),
        watcher::Error::WatchError(s) => (Failure::Watch, Some(s.code)),
        watcher::Error::WatchFailed(e) => (Failure::Watch, api_code(e)),
        watcher::Error::NoResourceVersion => (Failure::NoResourceVersion, None),
    };
    config.stats.failures[kind as usize].fetch_add(1, Ordering::Relaxed);
    if failing.contains(&(kind, code)) {
        tracing::debug!(error = %e, "RotationPolicy watch failed again");
        return;
    }
    failing.push((kind, code));
    let hint = match code {
        Some(404) => " (is the RotationPolicy CRD installed? `keyturn crd` prints it)",
        Some(401 | 403) => " (the daemon needs list and watch on rotationpolicies.keyturn.dev)",
        _ => "",
    };
    if kind == Failure::Expired {
        tracing::info!(watch = %what(config), "RotationPolicy watch expired (410 Gone); listing again");
    } else {
        tracing::warn!(
            watch = %what(config),
            error = %e,
            "RotationPolicy watch failed{hint}; retrying with backoff (repeats are only counted)"
        );
    }
}

/// Logs once that the watch works again after failures.
fn recovered(failing: &mut Vec<(Failure, Option<u16>)>, config: &WatchConfig) {
    let only_expired = failing.iter().all(|(k, _)| *k == Failure::Expired);
    if !failing.is_empty() && !only_expired {
        tracing::info!(watch = %what(config), "RotationPolicy watch works again");
    }
    failing.clear();
}

/// The objects as the watch knows them: validated, keyed by `NAMESPACE/NAME`.
#[derive(Debug, Default)]
struct Objects {
    live: BTreeMap<Box<str>, Arc<ObjectPolicy>>,
    /// A list in progress (after `Init`), which replaces `live` once complete.
    listing: Option<BTreeMap<Box<str>, Arc<ObjectPolicy>>>,
}

fn key(o: &DynamicObject) -> Box<str> {
    let meta = &o.metadata;
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
    .into()
}

/// `o` validated, or `known` again when `o` is the same object at the same generation (a
/// status or metadata update, or the same object listed again).
fn validated(o: &DynamicObject, known: Option<&Arc<ObjectPolicy>>) -> Arc<ObjectPolicy> {
    if let Some(k) = known
        && o.metadata.generation.is_some()
        && k.object().uid == o.metadata.uid
        && k.object().generation == o.metadata.generation
    {
        return Arc::clone(k);
    }
    Arc::new(ObjectPolicy::from_object(o))
}

impl Objects {
    fn init(&mut self) {
        self.listing = Some(BTreeMap::new());
    }

    fn init_apply(&mut self, o: &DynamicObject) {
        let key = key(o);
        let entry = validated(o, self.live.get(&key));
        self.listing.get_or_insert_default().insert(key, entry);
    }

    fn init_done(&mut self) {
        if let Some(listed) = self.listing.take() {
            self.live = listed;
        }
    }

    /// Whether anything changed.
    fn apply(&mut self, o: &DynamicObject) -> bool {
        let key = key(o);
        let known = self.live.get(&key);
        let entry = validated(o, known);
        if known.is_some_and(|k| Arc::ptr_eq(k, &entry)) {
            return false;
        }
        self.live.insert(key, entry);
        true
    }

    /// Whether anything changed.
    fn delete(&mut self, o: &DynamicObject) -> bool {
        self.live.remove(&key(o)).is_some()
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot::new(self.live.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests;
