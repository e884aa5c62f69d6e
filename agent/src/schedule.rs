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

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use sha2::{Digest, Sha256};

/// A schedule that cannot be used. Each variant names the expression; none fires never.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    /// Not a 5-field cron expression or a known `@` macro.
    #[error("invalid cron expression {expr:?}: {why}")]
    BadCron {
        /// The expression as written.
        expr: String,
        /// What is wrong.
        why: String,
    },
    /// A valid expression with no future slot (e.g. `0 0 30 2 *`, February 30).
    #[error("cron expression {expr:?} never fires")]
    NeverFires {
        /// The expression as written.
        expr: String,
    },
    /// Both day-of-month and day-of-week are restricted. crontab(5) ORs them, which is
    /// rarely what is meant; keyturn asks for one of them to be `*`.
    #[error(
        "cron expression {expr:?} restricts both day-of-month and day-of-week; set one of them to *"
    )]
    DomAndDow {
        /// The expression as written.
        expr: String,
    },
    /// Not an IANA time zone name.
    #[error("unknown time zone {0:?} (use an IANA name such as Europe/Berlin)")]
    BadTimezone(String),
    /// An `every` interval that is not a duration, or is shorter than a minute.
    #[error("invalid interval {given:?}: {why}")]
    BadInterval {
        /// The interval as written.
        given: String,
        /// What is wrong.
        why: String,
    },
}

/// When a policy's rotations fall due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// A cron expression evaluated in a time zone.
    Cron {
        /// The expression as the user wrote it.
        expr: String,
        /// The parsed schedule.
        schedule: Box<cron::Schedule>,
        /// The zone the expression's wall-clock times are in.
        tz: Tz,
    },
    /// A fixed interval after the last rotation.
    Every(Duration),
}

/// The shortest interval accepted: anything faster is a misconfiguration that would hammer
/// the target system.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);

impl Schedule {
    /// Parses a 5-field cron expression or `@` macro, evaluated in `timezone` (UTC if none).
    ///
    /// # Errors
    /// A malformed expression, one that never fires, both day fields restricted, or an
    /// unknown time zone.
    pub fn cron(expr: &str, timezone: Option<&str>) -> Result<Self, ScheduleError> {
        let tz = match timezone {
            None => Tz::UTC,
            Some(name) => {
                Tz::from_str(name).map_err(|_| ScheduleError::BadTimezone(name.into()))?
            }
        };
        let translated = to_cron_crate(expr)?;
        let schedule =
            cron::Schedule::from_str(&translated).map_err(|e| ScheduleError::BadCron {
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
            schedule: Box::new(schedule),
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
        Ok(Self::Every(d))
    }

    /// The first due time strictly after `last` (the last successful rotation). With no
    /// rotation yet, the policy's first slot is the Unix epoch: due at once, and served by
    /// any rotation at all, so that several daemon replicas starting at different moments
    /// agree that one first rotation is enough.
    #[must_use]
    pub fn next_due(&self, last: Option<DateTime<Utc>>, _now: DateTime<Utc>) -> DateTime<Utc> {
        let Some(last) = last else {
            return DateTime::<Utc>::UNIX_EPOCH;
        };
        match self {
            Self::Every(d) => {
                last + chrono::Duration::from_std(*d).unwrap_or(chrono::Duration::MAX)
            }
            Self::Cron { schedule, tz, .. } => schedule
                .after(&last.with_timezone(tz))
                .next()
                .map_or(DateTime::<Utc>::MAX_UTC, |t| t.with_timezone(&Utc)),
        }
    }
}

/// Where in `[due, due + window)` the rotation for `policy`'s slot `due` starts.
///
/// The offset is a hash of the policy name and the slot, so it is the same in every daemon
/// replica and across restarts (no thundering herd after a restart, and no replica
/// disagreement about when a slot starts), yet different policies, and different slots of
/// one policy, land at different points of the window.
#[must_use]
pub fn jittered(policy: &str, due: DateTime<Utc>, window: Duration) -> DateTime<Utc> {
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    if window_ms == 0 {
        return due;
    }
    let mut h = Sha256::new();
    h.update(policy.as_bytes());
    h.update([0]);
    h.update(due.timestamp().to_be_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let offset = u64::from_be_bytes(first) % window_ms;
    due + chrono::Duration::milliseconds(i64::try_from(offset).unwrap_or(i64::MAX))
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
    fn daily_at_three_is_next_day_after_the_last_rotation() {
        let s = Schedule::cron("0 3 * * *", None).unwrap();
        let last = utc(2026, 3, 10, 3, 0);
        assert_eq!(s.next_due(Some(last), last), utc(2026, 3, 11, 3, 0));
    }

    #[test]
    fn never_rotated_is_due_at_once_with_one_shared_slot() {
        let s = Schedule::cron("@daily", None).unwrap();
        let (a, b) = (utc(2026, 1, 1, 12, 0), utc(2026, 1, 1, 12, 5));
        assert!(s.next_due(None, a) <= a);
        // Two replicas starting minutes apart name the same first slot.
        assert_eq!(s.next_due(None, a), s.next_due(None, b));
    }

    #[test]
    fn a_daemon_down_through_many_slots_finds_exactly_one_due_slot() {
        let s = Schedule::cron("0 * * * *", None).unwrap();
        let last = utc(2026, 5, 1, 0, 0);
        let now = utc(2026, 5, 3, 7, 30); // 55 hourly slots missed
        let due = s.next_due(Some(last), now);
        assert!(due <= now, "due now");
        // After rotating now, the next slot is in the future: one catch-up rotation only.
        assert!(s.next_due(Some(now), now) > now);
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
            let t = s.next_due(Some(utc(2026, 6, 1, 12, 0)), utc(2026, 6, 1, 12, 0));
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
        let after_jan = s.next_due(Some(utc(2026, 1, 31, 0, 0)), utc(2026, 1, 31, 0, 0));
        assert_eq!(after_jan, utc(2026, 3, 31, 0, 0)); // no February 31
        let leap = Schedule::cron("0 0 29 2 *", None).unwrap();
        assert_eq!(
            leap.next_due(Some(utc(2026, 3, 1, 0, 0)), utc(2026, 3, 1, 0, 0)),
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
        let before = s.next_due(Some(utc(2026, 3, 27, 3, 0)), utc(2026, 3, 27, 3, 0));
        assert_eq!(before, utc(2026, 3, 28, 2, 0));
        let after = s.next_due(Some(before), before);
        assert_eq!(after, utc(2026, 3, 29, 1, 0));
        // 02:30 local does not exist on 29 March in Berlin: the slot is not fired twice or
        // at a made-up time; the next real 02:30 is on 30 March (00:30Z).
        let gap = Schedule::cron("30 2 * * *", Some("Europe/Berlin")).unwrap();
        let t = gap.next_due(Some(utc(2026, 3, 28, 1, 30)), utc(2026, 3, 28, 1, 30));
        assert_eq!(t, utc(2026, 3, 30, 0, 30));
        // On 25 October 2026 the clock falls back and 02:30 happens twice; it fires once.
        let first = gap.next_due(Some(utc(2026, 10, 24, 0, 30)), utc(2026, 10, 24, 0, 30));
        let second = gap.next_due(Some(first), first);
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
        assert_eq!(s.next_due(Some(last), last), utc(2026, 1, 1, 1, 30));
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
        let a = jittered("orders-db", due, w);
        assert_eq!(a, jittered("orders-db", due, w));
        assert!(a >= due && a < due + chrono::Duration::hours(1));
        let starts: std::collections::BTreeSet<_> = (0..50)
            .map(|i| jittered(&format!("p{i}"), due, w))
            .collect();
        assert!(
            starts.len() > 45,
            "50 policies should land at distinct points"
        );
        assert_eq!(jittered("x", due, Duration::ZERO), due);
    }
}
