//! When a policy is due: cron expressions, `every` intervals, time zones, and the
//! deterministic per-policy jitter that spreads rotations over a window.
//!
//! Cron expressions are standard 5-field crontab (`min hour dom month dow`, Sunday = 0 or 7)
//! or `@hourly`/`@daily`/`@weekly`/`@monthly`/`@yearly`. They are evaluated with the `cron`
//! crate, whose own syntax has a seconds field and numbers Sunday as 1; [`to_cron_crate`]
//! translates, so users write what `crontab(5)` documents.
//!
//! A schedule is always evaluated from the time of the last successful rotation: the next
//! due time is the first slot after it. A daemon that was down through several slots
//! therefore finds one slot in the past and rotates once, not once per missed slot.
//!
//! Every computation here is checked: an interval, window or slot that would leave chrono's
//! range gives `None`, never a panic. Validation bounds every duration ([`MAX_INTERVAL`],
//! [`MAX_WINDOW`]), so a policy that passed `keyturn policy check` only meets `None` for a cron
//! expression whose slots have run out; the daemon reports such a policy and skips it.
//!
//! A failed rotation leaves its slot due and is tried again after [`retry_delay`]: capped
//! exponential backoff with a deterministic per-policy jitter, first retry at least
//! [`RETRY_MIN`] after the failure, and never later than the schedule's next slot
//! ([`retry_at`]).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use keyturn_core::text::echo;
use sha2::{Digest, Sha256};

/// A schedule that cannot be used. Each variant names the expression; none fires never.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    /// Not a 5-field cron expression or a known `@` macro.
    #[error("invalid cron expression {}: {}", echo(expr), shown_text(why))]
    BadCron {
        /// The expression as written.
        expr: String,
        /// What is wrong.
        why: String,
    },
    /// A valid expression with no future slot (e.g. `0 0 30 2 *`, February 30).
    #[error("cron expression {} never fires", echo(expr))]
    NeverFires {
        /// The expression as written.
        expr: String,
    },
    /// Both day-of-month and day-of-week are restricted. crontab(5) ORs them, which is
    /// rarely what is meant; keyturn asks for one of them to be `*`.
    #[error(
        "cron expression {} restricts both day-of-month and day-of-week; set one of them to *",
        echo(expr)
    )]
    DomAndDow {
        /// The expression as written.
        expr: String,
    },
    /// Not an IANA time zone name.
    #[error(
        "unknown time zone {} (use an IANA name such as Europe/Berlin)",
        echo(.0)
    )]
    BadTimezone(String),
    /// An `every` interval that is not a duration, shorter than a minute or longer than
    /// [`MAX_INTERVAL`].
    #[error("invalid interval {}: {}", echo(given), shown_text(why))]
    BadInterval {
        /// The interval as written.
        given: String,
        /// What is wrong.
        why: String,
    },
}

/// A sentence from a library (the `cron` and `humantime` parsers quote the input back):
/// control characters escaped and at most a few hundred characters kept.
fn shown_text(s: &str) -> String {
    keyturn_core::text::clean(s, 3 * keyturn_core::text::ECHO_MAX)
}

/// When a policy's rotations fall due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// A cron expression evaluated in a time zone.
    Cron {
        /// The expression as the user wrote it.
        expr: String,
        /// The parsed schedule.
        schedule: Arc<cron::Schedule>,
        /// The zone the expression's wall-clock times are in.
        tz: Tz,
    },
    /// A fixed interval after the last rotation.
    Every(Duration),
}

/// The shortest interval accepted: anything faster is a misconfiguration that would hammer
/// the target system.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);

/// The longest `every` interval accepted (10 years): a credential is rotated at least that
/// often, and every time computed from it stays far inside chrono's range.
pub const MAX_INTERVAL: Duration = Duration::from_secs(10 * 366 * 86_400);

/// The longest rotation window accepted (31 days). A window must also be shorter than the
/// schedule's shortest gap between two slots ([`Schedule::shortest_gap`]).
pub const MAX_WINDOW: Duration = Duration::from_secs(31 * 86_400);

/// The longest cron expression accepted.
pub const MAX_CRON_LEN: usize = 1000;

/// The first retry after a failed rotation comes at least this long after the failure.
pub const RETRY_MIN: Duration = Duration::from_secs(30);

/// The default cap on the delay between retries of a failing policy.
pub const RETRY_MAX_DEFAULT: Duration = Duration::from_secs(3600);

/// `expr` (in the cron crate's syntax) parsed, shared with every other policy on the same
/// expression: a parsed schedule is ~450 bytes, and a daemon holding 100,000 policies mostly
/// holds a handful of distinct expressions. Entries no policy uses any more are dropped as
/// the table grows.
fn parsed_cron(expr: &str) -> Result<Arc<cron::Schedule>, cron::error::Error> {
    static PARSED: LazyLock<Mutex<HashMap<String, Weak<cron::Schedule>>>> =
        LazyLock::new(Mutex::default);
    let mut parsed = PARSED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(s) = parsed.get(expr).and_then(Weak::upgrade) {
        return Ok(s);
    }
    let s = Arc::new(cron::Schedule::from_str(expr)?);
    if parsed.len() >= 1024 && parsed.len().is_power_of_two() {
        parsed.retain(|_, w| w.strong_count() > 0);
    }
    parsed.insert(expr.to_owned(), Arc::downgrade(&s));
    Ok(s)
}

/// How many of a cron expression's coming slots [`Schedule::shortest_gap`] looks at.
const GAP_SAMPLE: usize = 64;

impl Schedule {
    /// Parses a 5-field cron expression or `@` macro, evaluated in `timezone` (UTC if none).
    ///
    /// # Errors
    /// A malformed expression, one that never fires, both day fields restricted, or an
    /// unknown time zone.
    pub fn cron(expr: &str, timezone: Option<&str>) -> Result<Self, ScheduleError> {
        // The longest useful expression (a list of every minute) is under 200 characters;
        // anything far longer is a generator gone wrong, and every message and `status` line
        // would repeat it.
        if expr.len() > MAX_CRON_LEN {
            return Err(ScheduleError::BadCron {
                expr: expr.into(),
                why: format!("longer than {MAX_CRON_LEN} characters"),
            });
        }
        let tz = match timezone {
            None => Tz::UTC,
            Some(name) => {
                Tz::from_str(name).map_err(|_| ScheduleError::BadTimezone(name.into()))?
            }
        };
        let translated = to_cron_crate(expr)?;
        let schedule = parsed_cron(&translated).map_err(|e| ScheduleError::BadCron {
            expr: expr.into(),
            why: e.to_string(),
        })?;
        if schedule
            .after(&Utc::now().with_timezone(&tz))
            .next()
            .is_none()
        {
            return Err(ScheduleError::NeverFires { expr: expr.into() });
        }
        Ok(Self::Cron {
            expr: expr.into(),
            schedule,
            tz,
        })
    }

    /// Parses an interval such as `24h`, `90m` or `1h30m`.
    ///
    /// # Errors
    /// Not a duration, or shorter than [`MIN_INTERVAL`].
    pub fn every(given: &str) -> Result<Self, ScheduleError> {
        let d = parse_duration(given).map_err(|why| ScheduleError::BadInterval {
            given: given.into(),
            why,
        })?;
        if d < MIN_INTERVAL {
            return Err(ScheduleError::BadInterval {
                given: given.into(),
                why: "must be at least 1m".into(),
            });
        }
        if d > MAX_INTERVAL {
            return Err(ScheduleError::BadInterval {
                given: given.into(),
                why: "must be at most 3660d (10 years)".into(),
            });
        }
        Ok(Self::Every(d))
    }

    /// The shortest time between two consecutive slots: the interval of `every`, or the
    /// smallest gap among a cron expression's next [`GAP_SAMPLE`] slots after `from` (a rotation
    /// window must be shorter, or a jittered start could pass the next slot). `None` when no
    /// two slots follow `from`.
    #[must_use]
    pub fn shortest_gap(&self, from: DateTime<Utc>) -> Option<Duration> {
        match self {
            Self::Every(d) => Some(*d),
            Self::Cron { schedule, tz, .. } => {
                let slots: Vec<_> = schedule
                    .after(&within_cron_range(from)?.with_timezone(tz))
                    .take(GAP_SAMPLE)
                    .collect();
                slots
                    .windows(2)
                    .filter_map(|w| w[1].signed_duration_since(w[0]).to_std().ok())
                    .min()
            }
        }
    }

    /// The first due time strictly after `last` (the last successful rotation). With no
    /// rotation yet, the policy's first slot is the Unix epoch: due at once, and served by
    /// any rotation at all, so that several daemon replicas starting at different moments
    /// agree that one first rotation is enough.
    ///
    /// `None` when there is no such time: a cron expression whose slots have run out, or a
    /// time beyond chrono's range. The caller reports the policy and skips it.
    #[must_use]
    pub fn next_due(&self, last: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        let Some(last) = last else {
            return Some(DateTime::<Utc>::UNIX_EPOCH);
        };
        match self {
            Self::Every(d) => last.checked_add_signed(chrono::Duration::from_std(*d).ok()?),
            Self::Cron { schedule, tz, .. } => schedule
                .after(&within_cron_range(last)?.with_timezone(tz))
                .next()
                .map(|t| t.with_timezone(&Utc)),
        }
    }

    /// The first slot strictly after `now` in the series that `due` belongs to: the slot that
    /// supersedes `due` if `due` has not been served by then. For `every`, slots repeat the
    /// interval from `due`; for cron, they are the expression's own.
    #[must_use]
    pub fn slot_after(&self, due: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Every(d) => {
                let step = i64::try_from(d.as_millis()).ok()?.max(1);
                let behind = (now - due).num_milliseconds().max(0);
                let k = behind / step + 1;
                due.checked_add_signed(chrono::Duration::milliseconds(k.checked_mul(step)?))
            }
            Self::Cron { .. } => self.next_due(Some(now.max(due))),
        }
    }
}

/// `from`, if the `cron` crate can search for slots after it: it steps forward with unchecked
/// additions, which panic (`DateTime + TimeDelta overflowed`) within a few years of chrono's
/// last instant. Found by fuzzing (`* * * * *` after `DateTime::MAX_UTC`); such an instant only
/// comes from a clock or a stored rotation time gone wrong, and has no slot after it.
fn within_cron_range(from: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let horizon = DateTime::<Utc>::MAX_UTC.checked_sub_signed(chrono::Duration::days(3700))?;
    (from <= horizon).then_some(from)
}

/// How long after its `failures`-th consecutive failure (1 for the first) a policy is tried
/// again: `RETRY_MIN · 2^(failures−1)`, capped at `cap`, plus a jitter of up to half of that
/// (still within `cap`), never less than [`RETRY_MIN`]. The jitter is a hash of the policy and
/// the failure count, so replicas and `keyturn status` compute the same delay, while policies
/// that failed together (a Vault outage) come back at different moments.
#[must_use]
pub fn retry_delay(policy: &str, failures: u32, cap: Duration) -> Duration {
    let cap = cap.max(RETRY_MIN);
    let doublings = failures.saturating_sub(1).min(30);
    let base = RETRY_MIN.saturating_mul(1u32 << doublings).min(cap);
    let mut h = Sha256::new();
    h.update(policy.as_bytes());
    h.update([1]);
    h.update(failures.to_be_bytes());
    let digest = h.finalize();
    // A fraction in [0, 1) with 16 bits of resolution is plenty for a retry time.
    let frac = f64::from(u16::from_be_bytes([digest[0], digest[1]])) / 65_536.0;
    (base + base.mul_f64(frac / 2.0)).min(cap).max(RETRY_MIN)
}

/// When a policy whose rotation for slot `due` failed (for the `failures`-th time in a row) at
/// `now` is tried again, and which slot that attempt serves.
///
/// After [`retry_delay`], but never past the schedule's next slot (jittered in `window`):
/// when that comes first, it supersedes `due`. Never sooner than [`RETRY_MIN`] after `now`, so
/// a failure can never turn into a loop, whatever the schedule. `None` when no time can be
/// computed (see [`Schedule::next_due`]).
#[must_use]
pub fn retry_at(
    policy: &str,
    schedule: &Schedule,
    window: Duration,
    due: DateTime<Utc>,
    failures: u32,
    cap: Duration,
    now: DateTime<Utc>,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let floor = now.checked_add_signed(chrono::Duration::from_std(RETRY_MIN).ok()?)?;
    let backoff = now
        .checked_add_signed(chrono::Duration::from_std(retry_delay(policy, failures, cap)).ok()?)?;
    // "Due at once" (a first rotation, or one whose state could not be read) is no slot of
    // the schedule: counting slots from the epoch would invent one (for `every`, on whole
    // UTC multiples) that the last rotation, made by another process meanwhile, did not
    // serve, and the retry would rotate again. The retry stays due at once, after backoff.
    if due == DateTime::<Utc>::UNIX_EPOCH {
        return Some((due, backoff.max(floor)));
    }
    let (due, fire_at) = match schedule
        .slot_after(due, now)
        .and_then(|next| Some((next, jittered(policy, next, window)?)))
    {
        Some((next, start)) if start < backoff => (next, start),
        _ => (due, backoff),
    };
    Some((due, fire_at.max(floor)))
}

/// Where in `[due, due + window)` the rotation for `policy`'s slot `due` starts.
///
/// The offset is a hash of the policy name and the slot, so it is the same in every daemon
/// replica and across restarts (no thundering herd after a restart, and no replica
/// disagreement about when a slot starts), yet different policies, and different slots of
/// one policy, land at different points of the window. `None` past chrono's range.
#[must_use]
pub fn jittered(policy: &str, due: DateTime<Utc>, window: Duration) -> Option<DateTime<Utc>> {
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    if window_ms == 0 {
        return Some(due);
    }
    let mut h = Sha256::new();
    h.update(policy.as_bytes());
    h.update([0]);
    h.update(due.timestamp().to_be_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let offset = u64::from_be_bytes(first) % window_ms;
    due.checked_add_signed(chrono::Duration::milliseconds(i64::try_from(offset).ok()?))
}

/// Parses a duration: `30s`, `15m`, `24h`, `1h30m`, `7d`.
///
/// # Errors
/// A description of what is wrong.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| e.to_string())
}

/// Translates crontab(5) syntax into the `cron` crate's: prepends a seconds field, maps
/// day-of-week numbers (0/7 = Sunday) to the crate's (1 = Sunday), and expands `@` macros
/// the crate lacks.
///
/// # Errors
/// Not 5 fields, or both day fields restricted.
pub fn to_cron_crate(expr: &str) -> Result<String, ScheduleError> {
    let bad = |why: &str| ScheduleError::BadCron {
        expr: expr.into(),
        why: why.into(),
    };
    let trimmed = expr.trim();
    let five = match trimmed {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        s if s.starts_with('@') => {
            return Err(bad(
                "unknown macro (use @hourly, @daily, @weekly, @monthly or @yearly)",
            ));
        }
        s => s,
    };
    let fields: Vec<&str> = five.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(bad(&format!(
            "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
            fields.len()
        )));
    }
    if fields[2] != "*" && fields[2] != "?" && fields[4] != "*" && fields[4] != "?" {
        return Err(ScheduleError::DomAndDow { expr: expr.into() });
    }
    let dow = translate_dow(fields[4]).map_err(|why| bad(&why))?;
    Ok(format!(
        "0 {} {} {} {} {}",
        fields[0], fields[1], fields[2], fields[3], dow
    ))
}

/// Maps every day-of-week number in a field (lists, ranges, steps) from crontab's 0–7 with
/// Sunday at both ends to the crate's 1–7. Names (`MON`) pass through unchanged.
fn translate_dow(field: &str) -> Result<String, String> {
    let map_num = |n: &str| -> Result<String, String> {
        match n.parse::<u8>() {
            Ok(0 | 7) => Ok("1".into()),
            Ok(d @ 1..=6) => Ok((d + 1).to_string()),
            Ok(d) => Err(format!("day-of-week {d} is out of range 0-7")),
            Err(_) => Ok(n.to_owned()), // a name such as MON, or *
        }
    };
    let mut parts = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        let mapped = match range.split_once('-') {
            // 5-7 (Fri..Sun) would map to 6-1; spell it as a list instead.
            Some((a, b)) => {
                let (ma, mb) = (map_num(a)?, map_num(b)?);
                match (ma.parse::<u8>(), mb.parse::<u8>()) {
                    (Ok(x), Ok(1))
                        if x > 1 && b.parse::<u8>().ok() == Some(7) && step.is_none() =>
                    {
                        format!("{x}-7,1")
                    }
                    _ => format!("{ma}-{mb}"),
                }
            }
            None => map_num(range)?,
        };
        parts.push(match step {
            Some(s) => format!("{mapped}/{s}"),
            None => mapped,
        });
    }
    Ok(parts.join(","))
}

/// A UTC instant from its parts, for tests and examples.
///
/// # Panics
/// On an impossible date.
#[must_use]
pub fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .expect("valid date")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Timelike, Weekday};

    #[test]
    fn policies_on_one_cron_expression_share_its_parsed_schedule() {
        let parsed = |s: &Schedule| match s {
            Schedule::Cron { schedule, .. } => Arc::clone(schedule),
            Schedule::Every(_) => unreachable!(),
        };
        let a = Schedule::cron("17 3 * * 1-5", None).unwrap();
        let b = Schedule::cron("17 3 * * 1-5", Some("Europe/Paris")).unwrap();
        let c = Schedule::cron("18 3 * * 1-5", None).unwrap();
        assert!(Arc::ptr_eq(&parsed(&a), &parsed(&b)));
        assert!(!Arc::ptr_eq(&parsed(&a), &parsed(&c)));
        // The zone stays each policy's own.
        assert_ne!(a, b);
    }

    #[test]
    fn a_cron_slot_after_the_end_of_chronos_range_is_none_not_a_panic() {
        let s = Schedule::cron("* * * * *", None).unwrap();
        assert_eq!(s.next_due(Some(DateTime::<Utc>::MAX_UTC)), None);
        assert_eq!(s.shortest_gap(DateTime::<Utc>::MAX_UTC), None);
        assert_eq!(
            s.slot_after(DateTime::<Utc>::UNIX_EPOCH, DateTime::<Utc>::MAX_UTC),
            None
        );
        let later = utc(2090, 12, 31, 23, 59);
        assert!(s.next_due(Some(later)).is_some_and(|t| t > later));
    }

    #[test]
    fn daily_at_three_is_next_day_after_the_last_rotation() {
        let s = Schedule::cron("0 3 * * *", None).unwrap();
        let last = utc(2026, 3, 10, 3, 0);
        assert_eq!(s.next_due(Some(last)).unwrap(), utc(2026, 3, 11, 3, 0));
    }

    #[test]
    fn never_rotated_is_due_at_once_with_one_shared_slot() {
        let s = Schedule::cron("@daily", None).unwrap();
        // The first slot does not depend on when a replica starts: replicas starting minutes
        // apart name the same one, and it is in the past (due at once).
        assert_eq!(s.next_due(None), Some(DateTime::<Utc>::UNIX_EPOCH));
    }

    #[test]
    fn a_daemon_down_through_many_slots_finds_exactly_one_due_slot() {
        let s = Schedule::cron("0 * * * *", None).unwrap();
        let last = utc(2026, 5, 1, 0, 0);
        let now = utc(2026, 5, 3, 7, 30); // 55 hourly slots missed
        let due = s.next_due(Some(last)).unwrap();
        assert!(due <= now, "due now");
        // After rotating now, the next slot is in the future: one catch-up rotation only.
        assert!(s.next_due(Some(now)).unwrap() > now);
    }

    #[test]
    fn monday_is_one_and_sunday_is_zero_or_seven_as_in_crontab() {
        for (expr, want) in [
            ("0 0 * * 1", Weekday::Mon),
            ("0 0 * * 0", Weekday::Sun),
            ("0 0 * * 7", Weekday::Sun),
            ("0 0 * * 6", Weekday::Sat),
        ] {
            let s = Schedule::cron(expr, None).unwrap();
            let t = s.next_due(Some(utc(2026, 6, 1, 12, 0))).unwrap();
            assert_eq!(t.weekday(), want, "{expr}");
        }
    }

    #[test]
    fn weekday_ranges_and_steps_translate() {
        assert_eq!(to_cron_crate("0 9 * * 1-5").unwrap(), "0 0 9 * * 2-6");
        assert_eq!(to_cron_crate("0 9 * * 5-7").unwrap(), "0 0 9 * * 6-7,1");
        assert_eq!(to_cron_crate("0 9 * * 0-6/2").unwrap(), "0 0 9 * * 1-7/2");
        assert_eq!(
            to_cron_crate("0 9 * * MON,FRI").unwrap(),
            "0 0 9 * * MON,FRI"
        );
    }

    #[test]
    fn month_end_schedules_skip_short_months() {
        let s = Schedule::cron("0 0 31 * *", None).unwrap();
        let after_jan = s.next_due(Some(utc(2026, 1, 31, 0, 0))).unwrap();
        assert_eq!(after_jan, utc(2026, 3, 31, 0, 0)); // no February 31
        let leap = Schedule::cron("0 0 29 2 *", None).unwrap();
        assert_eq!(
            leap.next_due(Some(utc(2026, 3, 1, 0, 0))).unwrap(),
            utc(2028, 2, 29, 0, 0)
        );
    }

    #[test]
    fn a_cron_that_never_fires_is_an_error() {
        assert_eq!(
            Schedule::cron("0 0 30 2 *", None).unwrap_err(),
            ScheduleError::NeverFires {
                expr: "0 0 30 2 *".into()
            }
        );
    }

    #[test]
    fn malformed_cron_errors_name_the_expression() {
        let e = Schedule::cron("0 3 * *", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid cron expression \"0 3 * *\": expected 5 fields (minute hour day-of-month month day-of-week), found 4"
        );
        assert!(matches!(
            Schedule::cron("61 * * * *", None),
            Err(ScheduleError::BadCron { .. })
        ));
        assert!(matches!(
            Schedule::cron("0 0 * * 8", None),
            Err(ScheduleError::BadCron { .. })
        ));
        assert!(matches!(
            Schedule::cron("@fortnightly", None),
            Err(ScheduleError::BadCron { .. })
        ));
        assert!(matches!(
            Schedule::cron("0 0 1 * 1", None),
            Err(ScheduleError::DomAndDow { .. })
        ));
    }

    #[test]
    fn local_time_schedules_follow_daylight_saving_changes() {
        // Berlin is UTC+1 (CET) in winter and UTC+2 (CEST) in summer. Before the spring
        // change on 29 March 2026, 03:00 local is 02:00Z; from that day on, 01:00Z.
        let s = Schedule::cron("0 3 * * *", Some("Europe/Berlin")).unwrap();
        let before = s.next_due(Some(utc(2026, 3, 27, 3, 0))).unwrap();
        assert_eq!(before, utc(2026, 3, 28, 2, 0));
        let after = s.next_due(Some(before)).unwrap();
        assert_eq!(after, utc(2026, 3, 29, 1, 0));
        // 02:30 local does not exist on 29 March in Berlin: the slot is not fired twice or
        // at a made-up time; the next real 02:30 is on 30 March (00:30Z).
        let gap = Schedule::cron("30 2 * * *", Some("Europe/Berlin")).unwrap();
        let t = gap.next_due(Some(utc(2026, 3, 28, 1, 30))).unwrap();
        assert_eq!(t, utc(2026, 3, 30, 0, 30));
        // On 25 October 2026 the clock falls back and 02:30 happens twice; it fires once.
        let first = gap.next_due(Some(utc(2026, 10, 24, 0, 30))).unwrap();
        let second = gap.next_due(Some(first)).unwrap();
        assert_eq!(first.with_timezone(&chrono_tz::Europe::Berlin).hour(), 2);
        assert!(
            second - first >= chrono::Duration::hours(23),
            "fired twice: {first} then {second}"
        );
    }

    #[test]
    fn unknown_time_zone_is_an_error() {
        assert_eq!(
            Schedule::cron("@daily", Some("Mars/Olympus"))
                .unwrap_err()
                .to_string(),
            "unknown time zone \"Mars/Olympus\" (use an IANA name such as Europe/Berlin)"
        );
    }

    #[test]
    fn every_adds_the_interval_to_the_last_rotation() {
        let s = Schedule::every("1h30m").unwrap();
        let last = utc(2026, 1, 1, 0, 0);
        assert_eq!(s.next_due(Some(last)).unwrap(), utc(2026, 1, 1, 1, 30));
        assert!(matches!(
            Schedule::every("10s"),
            Err(ScheduleError::BadInterval { .. })
        ));
        assert!(matches!(
            Schedule::every("soon"),
            Err(ScheduleError::BadInterval { .. })
        ));
    }

    #[test]
    fn jitter_is_deterministic_inside_the_window_and_differs_between_policies() {
        let due = utc(2026, 1, 1, 3, 0);
        let w = Duration::from_secs(3600);
        let a = jittered("orders-db", due, w).unwrap();
        assert_eq!(Some(a), jittered("orders-db", due, w));
        assert!(a >= due && a < due + chrono::Duration::hours(1));
        let starts: std::collections::BTreeSet<_> = (0..50)
            .map(|i| jittered(&format!("p{i}"), due, w).unwrap())
            .collect();
        assert!(
            starts.len() > 45,
            "50 policies should land at distinct points"
        );
        assert_eq!(jittered("x", due, Duration::ZERO), Some(due));
    }

    #[test]
    fn an_interval_beyond_ten_years_is_refused_and_the_longest_one_computes() {
        for huge in ["100000000000y", "11y", "3661d"] {
            assert!(
                matches!(
                    Schedule::every(huge),
                    Err(ScheduleError::BadInterval { .. })
                ),
                "{huge}"
            );
        }
        let s = Schedule::every("3660d").unwrap();
        let last = utc(2026, 1, 1, 0, 0);
        assert!(s.next_due(Some(last)).unwrap() > last);
        assert!(s.slot_after(last, utc(2030, 1, 1, 0, 0)).is_some());
    }

    #[test]
    fn times_past_chronos_range_are_none_not_a_panic() {
        let far = DateTime::<Utc>::MAX_UTC - chrono::Duration::days(1);
        assert_eq!(Schedule::Every(MAX_INTERVAL).next_due(Some(far)), None);
        let end = DateTime::<Utc>::MAX_UTC;
        assert_eq!(jittered("p", end, Duration::from_secs(86_400 * 30)), None);
        // The cron crate's own horizon: no slot after the end of its range.
        let cron = Schedule::cron("@yearly", None).unwrap();
        assert_eq!(cron.next_due(Some(far)), None);
        // With no next slot, a retry still comes after the backoff; at the end of time,
        // no retry time exists at all.
        assert!(retry_at("p", &cron, Duration::ZERO, far, 1, RETRY_MAX_DEFAULT, far).is_some());
        assert_eq!(
            retry_at("p", &cron, Duration::ZERO, far, 1, RETRY_MAX_DEFAULT, end),
            None
        );
    }

    #[test]
    fn the_shortest_gap_of_a_cron_is_its_tightest_pair_of_slots() {
        let weekdays = Schedule::cron("0 9 * * 1-5", None).unwrap();
        let from = utc(2026, 1, 1, 0, 0);
        assert_eq!(
            weekdays.shortest_gap(from),
            Some(Duration::from_secs(86_400))
        );
        let twice = Schedule::cron("0 1,2 * * *", None).unwrap();
        assert_eq!(twice.shortest_gap(from), Some(Duration::from_secs(3600)));
        assert_eq!(
            Schedule::every("90m").unwrap().shortest_gap(from),
            Some(Duration::from_secs(5400))
        );
    }

    #[test]
    fn retry_delays_double_from_thirty_seconds_up_to_the_cap_with_jitter() {
        let cap = RETRY_MAX_DEFAULT;
        for failures in 1..=40 {
            let d = retry_delay("orders-db", failures, cap);
            let base = RETRY_MIN
                .saturating_mul(1 << (failures - 1).min(30))
                .min(cap);
            assert!(d >= RETRY_MIN && d >= base && d <= cap, "{failures}: {d:?}");
            assert!(d <= base + base / 2, "{failures}: {d:?}");
        }
        assert!(retry_delay("p", 1, cap) < Duration::from_secs(46));
        assert_eq!(retry_delay("p", 1_000, cap), cap);
        // A cap below the minimum cannot make retries faster than the minimum.
        assert_eq!(retry_delay("p", 3, Duration::from_secs(1)), RETRY_MIN);
        // Policies that failed together do not come back together.
        let spread: std::collections::BTreeSet<_> = (0..20)
            .map(|i| retry_delay(&format!("p{i}"), 2, cap))
            .collect();
        assert!(spread.len() > 15, "{spread:?}");
    }

    #[test]
    fn a_failed_slot_stays_due_until_the_next_slot_supersedes_it() {
        let daily = Schedule::cron("0 3 * * *", None).unwrap();
        let due = utc(2026, 3, 10, 3, 0);
        let failed = utc(2026, 3, 10, 3, 5);
        // The first failure: retried about 30 s later, for the same slot.
        let (slot, at) = retry_at(
            "p",
            &daily,
            Duration::ZERO,
            due,
            1,
            RETRY_MAX_DEFAULT,
            failed,
        )
        .unwrap();
        assert_eq!(slot, due);
        assert!(at >= failed + chrono::Duration::seconds(30));
        assert!(at < failed + chrono::Duration::seconds(46));
        // Late in the day with the backoff at its cap, the next slot comes first and
        // takes over: the retry is never later than the schedule.
        let late = utc(2026, 3, 11, 2, 50);
        let (slot, at) =
            retry_at("p", &daily, Duration::ZERO, due, 9, RETRY_MAX_DEFAULT, late).unwrap();
        assert_eq!(slot, utc(2026, 3, 11, 3, 0));
        assert_eq!(at, slot);
    }

    #[test]
    fn a_never_rotated_policy_that_fails_is_not_retried_at_once() {
        // The epoch slot's successors are all in the past; the retry is still 30 s out.
        let s = Schedule::every("1m").unwrap();
        let now = utc(2026, 5, 1, 12, 0);
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        let (slot, at) =
            retry_at("p", &s, Duration::ZERO, epoch, 1, RETRY_MAX_DEFAULT, now).unwrap();
        assert!(at >= now + chrono::Duration::seconds(30), "{at}");
        assert!(at <= now + chrono::Duration::seconds(60), "{at}");
        // Still due at once: no slot counted from the epoch (for `every`, a whole minute the
        // last rotation, by another process, may not have served) replaces it.
        assert_eq!(slot, epoch);
    }
}
