//! Validation of one policy document: every rule checked, every problem collected with its
//! place (`FILE:LINE:COL: field: why`), and a [`Policy`] only when there was none. Stores and
//! targets validate their own part (see `backends.rs`) through the same [`Validator`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyturn_core::config::Problems;
use keyturn_core::text::echo;

use super::schema::{self, RawPolicy, S};
use super::{
    API_VERSION, CHARSETS, DEFAULT_MAX_ATTEMPTS, Distribution, Generator, KIND, Policy,
    PolicyError, Workload,
};
use crate::backends::{StoreSpec, TargetSpec};
use crate::schedule::{MAX_WINDOW, Schedule, parse_duration};

/// Collects the errors found in one policy document.
#[derive(Debug)]
pub struct Validator<'a> {
    /// Shared with every policy validated from the same file.
    file: &'a Arc<Path>,
    errors: Problems,
}

impl<'a> Validator<'a> {
    /// A validator for a document of `file`; the policy made shares `file`.
    pub(crate) fn new(file: &'a Arc<Path>) -> Self {
        Self {
            file,
            errors: Problems::new(file.display().to_string()),
        }
    }

    /// The errors found.
    pub(crate) fn into_errors(self) -> Vec<PolicyError> {
        self.errors.into_vec()
    }

    /// How many errors were found so far: a part is valid when the count did not grow.
    pub(crate) fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// Reports `message` about `field`, at the place `at` was written.
    pub(crate) fn err<T>(&mut self, at: &S<T>, field: &str, message: impl Into<String>) {
        self.errors.spanned(at, field, message);
    }

    pub(crate) fn policy(&mut self, raw: RawPolicy) -> Option<Policy> {
        let before = self.errors.len();
        if raw.api_version.value != API_VERSION {
            self.err(
                &raw.api_version,
                "apiVersion",
                format!("must be {API_VERSION:?}"),
            );
        }
        if raw.kind.value != KIND {
            self.err(&raw.kind, "kind", format!("must be {KIND:?}"));
        }
        let name = raw.metadata.name.value.clone();
        if let Err(m) = dns_label(&name) {
            self.err(&raw.metadata.name, "metadata.name", m);
        }
        let spec = raw.spec;
        let schedule = self.schedule(&spec.schedule, &spec.every, &spec.timezone);
        let window = match &spec.window {
            None => Duration::ZERO,
            Some(w) => match parse_duration(&w.value) {
                Ok(d) if d > MAX_WINDOW => {
                    self.err(w, "spec.window", "must be at most 31d");
                    Duration::ZERO
                }
                Ok(d) => d,
                Err(m) => {
                    self.err(w, "spec.window", m);
                    Duration::ZERO
                }
            },
        };
        // A window as long as the gap to the next slot would let a jittered start pass that
        // slot (and, for cron, overlap the next rotation).
        if let (Some(s), Some(w)) = (&schedule, &spec.window)
            && !window.is_zero()
            && s.shortest_gap(chrono::Utc::now())
                .is_some_and(|gap| window >= gap)
        {
            let what = match s {
                Schedule::Every(_) => "the `every` interval",
                Schedule::Cron { .. } => "the shortest gap between two of the schedule's slots",
            };
            self.err(w, "spec.window", format!("must be shorter than {what}"));
        }
        let store = StoreSpec::validate(&spec.store, self, "spec.store");
        let target = TargetSpec::validate(&spec.target, self);
        let generator = self.generator(spec.generator.as_ref());
        let distribute = spec
            .distribute
            .iter()
            .enumerate()
            .map(|(i, d)| self.distribution(i, d, target.as_ref()))
            .collect::<Vec<_>>();
        let max_attempts = match &spec.max_attempts {
            None => DEFAULT_MAX_ATTEMPTS,
            Some(n) if (1..=100).contains(&n.value) => n.value,
            Some(n) => {
                self.err(n, "spec.max-attempts", "must be between 1 and 100");
                DEFAULT_MAX_ATTEMPTS
            }
        };
        if self.errors.len() > before {
            return None;
        }
        Some(Policy {
            name,
            file: Arc::clone(self.file),
            schedule: schedule?,
            window,
            store: store?,
            target: target?,
            generator: generator?,
            distribute: distribute.into_iter().collect::<Option<Vec<_>>>()?,
            max_attempts,
            object: None,
        })
    }

    fn schedule(
        &mut self,
        cron: &Option<S<String>>,
        every: &Option<S<String>>,
        tz: &Option<S<String>>,
    ) -> Option<Schedule> {
        match (cron, every) {
            (Some(c), None) => {
                match Schedule::cron(&c.value, tz.as_ref().map(|t| t.value.as_str())) {
                    Ok(s) => Some(s),
                    Err(crate::schedule::ScheduleError::BadTimezone(_)) if tz.is_some() => {
                        let t = tz.as_ref()?;
                        self.err(
                            t,
                            "spec.timezone",
                            format!(
                                "unknown time zone {} (use an IANA name such as Europe/Berlin)",
                                echo(&t.value)
                            ),
                        );
                        None
                    }
                    Err(e) => {
                        self.err(c, "spec.schedule", e.to_string());
                        None
                    }
                }
            }
            (None, Some(e)) => {
                if let Some(t) = tz {
                    self.err(
                        t,
                        "spec.timezone",
                        "only applies to a cron `schedule`, not to `every`",
                    );
                }
                match Schedule::every(&e.value) {
                    Ok(s) => Some(s),
                    Err(err) => {
                        self.err(e, "spec.every", err.to_string());
                        None
                    }
                }
            }
            (Some(c), Some(_)) => {
                self.err(
                    c,
                    "spec.schedule",
                    "give either `schedule` or `every`, not both",
                );
                None
            }
            (None, None) => {
                self.errors.extend([PolicyError {
                    origin: self.errors.origin().to_owned(),
                    at: None,
                    field: "spec.schedule".into(),
                    message: "missing: give a cron `schedule` or an `every` interval".into(),
                }]);
                None
            }
        }
    }

    fn generator(&mut self, raw: Option<&schema::RawGenerator>) -> Option<Generator> {
        let length = raw.and_then(|g| g.length.as_ref());
        let len = length.map_or(32, |l| l.value);
        if let Some(l) = length
            && !(12..=1024).contains(&l.value)
        {
            self.err(l, "spec.generator.length", "must be between 12 and 1024");
            return None;
        }
        let charset = raw.and_then(|g| g.charset.as_ref());
        let name = charset.map_or("alphanumeric", |c| c.value.as_str());
        let Some((_, chars)) = CHARSETS.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = CHARSETS.iter().map(|(n, _)| *n).collect();
            if let Some(c) = charset {
                self.err(
                    c,
                    "spec.generator.charset",
                    format!(
                        "unknown charset {} (one of {})",
                        echo(name),
                        names.join(", ")
                    ),
                );
            }
            return None;
        };
        let exclude = raw.and_then(|g| g.exclude.as_ref());
        let alphabet: Vec<char> = chars
            .chars()
            .filter(|c| exclude.is_none_or(|e| !e.value.contains(*c)))
            .collect();
        if alphabet.len() < 10 {
            if let Some(e) = exclude {
                self.err(
                    e,
                    "spec.generator.exclude",
                    format!(
                        "leaves only {} characters; at least 10 are needed",
                        alphabet.len()
                    ),
                );
            }
            return None;
        }
        Some(Generator::new(len, &alphabet))
    }

    fn distribution(
        &mut self,
        i: usize,
        d: &schema::RawDistribute,
        target: Option<&TargetSpec>,
    ) -> Option<Distribution> {
        let before = self.errors.len();
        let base = format!("spec.distribute[{i}].kubernetes");
        let k = &d.kubernetes;
        if let Err(m) = dns_label(&k.namespace.value) {
            self.err(&k.namespace, &format!("{base}.namespace"), m);
        }
        if let Err(m) = dns_subdomain(&k.secret.value) {
            self.err(&k.secret, &format!("{base}.secret"), m);
        }
        // With an invalid target there is nothing to check field names against; the
        // target's own error is already reported.
        let fields: &[&str] = target.map_or(&[], TargetSpec::fields);
        if k.keys.value.is_empty() {
            self.err(
                &k.keys,
                &format!("{base}.keys"),
                "must map at least one Secret key to a field",
            );
        }
        for (key, field) in &k.keys.value {
            if !valid_secret_key(key) {
                self.err(field, &format!("{base}.keys"), format!("{} is not a valid Secret key (letters, digits, '-', '_', '.'; at most 253)", echo(key)));
            }
            if target.is_some() && !fields.contains(&field.value.as_str()) {
                self.err(
                    field,
                    &format!("{base}.keys.{key}"),
                    // Not echoed: the one thing written here by mistake is the credential itself
                    // (`password: hunter2` for `password: password`).
                    format!(
                        "not a field this target provides (it provides {})",
                        fields.join(", ")
                    ),
                );
            }
        }
        let mut restart = Vec::new();
        for (j, r) in d.restart.iter().enumerate() {
            if !matches!(
                r.kind.value.as_str(),
                "Deployment" | "StatefulSet" | "DaemonSet"
            ) {
                self.err(
                    &r.kind,
                    &format!("spec.distribute[{i}].restart[{j}].kind"),
                    "must be Deployment, StatefulSet or DaemonSet",
                );
            }
            if let Err(m) = dns_subdomain(&r.name.value) {
                self.err(
                    &r.name,
                    &format!("spec.distribute[{i}].restart[{j}].name"),
                    m,
                );
            }
            restart.push(Workload {
                kind: r.kind.value.clone(),
                name: r.name.value.clone(),
            });
        }
        if self.errors.len() > before {
            return None;
        }
        Some(Distribution {
            namespace: k.namespace.value.clone(),
            secret: k.secret.value.clone(),
            keys: k
                .keys
                .value
                .iter()
                .map(|(a, b)| (a.clone(), b.value.clone()))
                .collect(),
            secret_type: k.secret_type.as_ref().map(|t| t.value.clone()),
            restart,
        })
    }
}

/// A DNS-1123 label: what Kubernetes accepts for namespaces and keyturn for policy names.
pub(crate) fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a DNS-1123 label (lowercase letters, digits, '-'; at most 63)",
            echo(s)
        ))
    }
}

/// A DNS-1123 subdomain: what Kubernetes accepts for object names.
fn dns_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| !l.is_empty() && dns_label(l).is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a valid object name (DNS-1123 subdomain)",
            echo(s)
        ))
    }
}

/// A key Kubernetes accepts in a Secret's `data`.
fn valid_secret_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && k != "."
        && k != ".."
}
