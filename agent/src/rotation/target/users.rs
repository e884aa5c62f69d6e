//! Database-style users, shared by every target that rotates a user's password (PostgreSQL,
//! Redis, MySQL/MariaDB): the `users` + `strategy` a policy declares, their validation, and
//! which user the next credential is for.
//!
//! - `single`: one user; each rotation changes its password in place.
//! - `alternating`: two users taking turns. A rotation changes the user *not* named by
//!   CURRENT, so apps logged in with CURRENT keep working until they pick up the new value;
//!   the user CURRENT names is never touched by the rotation that supersedes it.
//!
//! A credential has the fields [`USERNAME`] and [`PASSWORD`].

use keyturn_core::SecretValue;
use keyturn_core::text::echo;
use keyturn_core::vault::SecretData;

use crate::policy::{S, Validator};

/// The credential field holding the user name.
pub const USERNAME: &str = "username";
/// The credential field holding the password.
pub const PASSWORD: &str = "password";
/// The fields of a user credential, for a delivery's `keys`.
pub const FIELDS: &[&str] = &[USERNAME, PASSWORD];

/// How users are rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// One user; its password changes in place.
    #[default]
    Single,
    /// Two users; each rotation changes the one not in use, then switches.
    Alternating,
}

/// The users of one target and how they take turns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Users {
    /// One for `single`, two (different) for `alternating`.
    pub names: Vec<String>,
    /// Single user, or two users taking turns.
    pub strategy: Strategy,
}

impl Users {
    /// `users` with `strategy`; the caller has checked the count.
    #[must_use]
    pub fn new(names: Vec<String>, strategy: Strategy) -> Self {
        Self { names, strategy }
    }

    /// Validates a target's `users` and `strategy` at `field` (`spec.target.KIND`), with
    /// `name_rule` saying why a name is not one the target system accepts. `None` when an
    /// error was reported.
    pub(crate) fn validate(
        v: &mut Validator<'_>,
        users: &S<Vec<S<String>>>,
        strategy: Option<&S<String>>,
        field: &str,
        name_rule: impl Fn(&str) -> Result<(), &'static str>,
    ) -> Option<Self> {
        let before = v.error_count();
        let strategy = match strategy {
            None => Strategy::Single,
            Some(s) => match s.value.as_str() {
                "single" => Strategy::Single,
                "alternating" => Strategy::Alternating,
                other => {
                    v.err(
                        s,
                        &format!("{field}.strategy"),
                        format!("unknown strategy {} (single or alternating)", echo(other)),
                    );
                    Strategy::Single
                }
            },
        };
        let names: Vec<String> = users.value.iter().map(|u| u.value.clone()).collect();
        let want = match strategy {
            Strategy::Single => 1,
            Strategy::Alternating => 2,
        };
        if names.len() != want {
            v.err(
                users,
                &format!("{field}.users"),
                format!(
                    "strategy {strategy:?} needs exactly {want} user(s), found {}",
                    names.len()
                )
                .to_lowercase(),
            );
        } else if want == 2 && names[0] == names[1] {
            v.err(
                users,
                &format!("{field}.users"),
                "the two alternating users must differ",
            );
        }
        for u in &users.value {
            if let Err(why) = name_rule(&u.value) {
                v.err(u, &format!("{field}.users"), why);
            }
        }
        (v.error_count() == before).then(|| Self::new(names, strategy))
    }

    /// Whether `user` is one of these users.
    #[must_use]
    pub fn contains(&self, user: &str) -> bool {
        self.names.iter().any(|u| u == user)
    }

    /// The user the next credential is for, given CURRENT: the first user for `single`; for
    /// `alternating`, the user CURRENT does not name (the first when CURRENT is absent or
    /// names neither, e.g. after the policy's users changed).
    #[must_use]
    pub fn next(&self, current: Option<&SecretData>) -> &str {
        let first = self.names.first().map_or("", String::as_str);
        match (self.strategy, current.and_then(|c| field_str(c, USERNAME))) {
            (Strategy::Alternating, Some(cur)) if cur == first => {
                self.names.get(1).map_or(first, String::as_str)
            }
            _ => first,
        }
    }

    /// For `alternating`, the user CURRENT does not name; `None` for `single`.
    #[must_use]
    pub fn standby(&self, current: &SecretData) -> Option<&str> {
        if self.strategy != Strategy::Alternating {
            return None;
        }
        let in_use = field_str(current, USERNAME);
        self.names
            .iter()
            .map(String::as_str)
            .find(|u| Some(*u) != in_use)
    }

    /// The next credential: [`Self::next`]'s user with `password`.
    #[must_use]
    pub fn compose(&self, password: SecretValue, current: Option<&SecretData>) -> SecretData {
        let mut d = SecretData::new();
        d.insert(USERNAME, SecretValue::from_str_copy(self.next(current)));
        d.insert(PASSWORD, password);
        d
    }
}

/// A field as text, if present, UTF-8 and not empty.
#[must_use]
pub fn field_str<'a>(d: &'a SecretData, key: &str) -> Option<&'a str> {
    d.get(key)
        .and_then(|v| v.expose_str().ok())
        .filter(|s| !s.is_empty())
}

/// The user and the non-empty password of `pending`, or what is missing, in words.
///
/// # Errors
/// The credential has no user name or no password.
pub fn user_and_password(d: &SecretData) -> Result<(&str, &SecretValue), String> {
    let user = field_str(d, USERNAME).ok_or("credential has no username")?;
    let password = d
        .get(PASSWORD)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| format!("credential for user \"{user}\" has no password"))?;
    Ok((user, password))
}

/// Why `user` may not be given `password` by a target of `users` (`noun`: `role`, `user`,
/// `account`, as the target system says): not one of its users, or an empty password. Checked
/// before any connection, so a stray name never reaches the server.
///
/// # Errors
/// The refusal, in words naming the user (never the value).
pub fn check_change(
    users: &Users,
    user: &str,
    password: &SecretValue,
    noun: &str,
) -> Result<(), String> {
    if !users.contains(user) {
        return Err(format!(
            "{noun} \"{user}\" is not one of this target's {noun}s ({}); refusing to change it",
            users.names.join(", ")
        ));
    }
    if password.is_empty() {
        return Err(format!(
            "refusing to set an empty password on {noun} \"{user}\""
        ));
    }
    Ok(())
}

/// What a revert must put back: CURRENT's user and password when `set` changed the user
/// CURRENT names (always with `single`), `None` when there is nothing to undo (`alternating`
/// changed the idle user only; the very first rotation has no CURRENT).
///
/// # Errors
/// CURRENT names the changed user but has no password to restore.
pub fn to_restore<'a>(
    current: Option<&'a SecretData>,
    pending: &SecretData,
) -> Result<Option<(&'a str, &'a SecretValue)>, String> {
    let Some(current) = current else {
        return Ok(None);
    };
    match (field_str(current, USERNAME), field_str(pending, USERNAME)) {
        (Some(cur), Some(pend)) if cur == pend => match current.get(PASSWORD) {
            Some(p) => Ok(Some((cur, p))),
            None => Err(format!(
                "CURRENT credential for user \"{cur}\" has no password to restore"
            )),
        },
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(user: &str) -> SecretData {
        let mut d = SecretData::new();
        d.insert(USERNAME, SecretValue::from_str_copy(user));
        d.insert(PASSWORD, SecretValue::from_str_copy("p"));
        d
    }

    #[test]
    fn single_always_names_its_one_user() {
        let u = Users::new(vec!["app".into()], Strategy::Single);
        assert_eq!(u.next(None), "app");
        assert_eq!(u.next(Some(&cred("app"))), "app");
        assert_eq!(u.standby(&cred("app")), None);
    }

    #[test]
    fn alternating_names_the_user_not_in_use() {
        let u = Users::new(vec!["a".into(), "b".into()], Strategy::Alternating);
        assert_eq!(u.next(None), "a");
        assert_eq!(u.next(Some(&cred("a"))), "b");
        assert_eq!(u.next(Some(&cred("b"))), "a");
        // A CURRENT naming neither (the policy's users changed) starts over with the first.
        assert_eq!(u.next(Some(&cred("old"))), "a");
        assert_eq!(u.standby(&cred("a")), Some("b"));
        assert_eq!(u.standby(&cred("b")), Some("a"));
    }

    #[test]
    fn compose_carries_the_next_user_and_the_password() {
        let u = Users::new(vec!["a".into(), "b".into()], Strategy::Alternating);
        let d = u.compose(SecretValue::from_str_copy("new"), Some(&cred("a")));
        assert_eq!(field_str(&d, USERNAME), Some("b"));
        assert_eq!(d.get(PASSWORD).unwrap().expose(), b"new");
    }

    #[test]
    fn a_revert_restores_current_only_when_set_changed_its_user() {
        let a = cred("a");
        assert!(to_restore(None, &a).unwrap().is_none());
        assert!(to_restore(Some(&a), &cred("b")).unwrap().is_none());
        let (user, password) = to_restore(Some(&a), &a).unwrap().unwrap();
        assert_eq!((user, password.expose()), ("a", &b"p"[..]));
        let mut no_password = SecretData::new();
        no_password.insert(USERNAME, SecretValue::from_str_copy("a"));
        assert_eq!(
            to_restore(Some(&no_password), &a).unwrap_err(),
            "CURRENT credential for user \"a\" has no password to restore"
        );
    }

    #[test]
    fn only_the_targets_users_and_a_non_empty_password_may_be_set() {
        let u = Users::new(vec!["a".into(), "b".into()], Strategy::Alternating);
        let p = SecretValue::from_str_copy("x");
        assert_eq!(check_change(&u, "a", &p, "role"), Ok(()));
        assert_eq!(
            check_change(&u, "postgres", &p, "role"),
            Err(
                "role \"postgres\" is not one of this target's roles (a, b); refusing to change it"
                    .to_owned()
            )
        );
        assert_eq!(
            check_change(&u, "b", &SecretValue::from_str_copy(""), "user"),
            Err("refusing to set an empty password on user \"b\"".to_owned())
        );
    }

    #[test]
    fn a_credential_without_user_or_password_says_which() {
        assert_eq!(
            user_and_password(&SecretData::new()).unwrap_err(),
            "credential has no username"
        );
        let mut d = SecretData::new();
        d.insert(USERNAME, SecretValue::from_str_copy("u"));
        assert!(
            user_and_password(&d)
                .unwrap_err()
                .contains("\"u\" has no password")
        );
        assert_eq!(user_and_password(&cred("u")).unwrap().0, "u");
    }
}
