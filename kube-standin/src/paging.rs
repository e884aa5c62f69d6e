//! List paging: `limit` and `continue`, as kube-apiserver serves them.
//!
//! Every list goes through here (`server` calls [`plan`] before the list handler and
//! [`Paging::finish`] after it), so secrets, pods, deployments, Leases, Events of both
//! versions, RBAC objects, CustomResourceDefinitions and custom resources page alike:
//!
//! - `limit=N` (N > 0): at most N items. When more remain, `metadata.continue` is a token for
//!   the rest and, when the list has no label or field selector, `metadata.remainingItemCount`
//!   says how many (with a selector the real server does not know it cheaply and leaves it
//!   out). The last page has neither.
//! - The token is the real server's: base64url (unpadded) JSON
//!   `{"v":"meta.k8s.io/v1","rv":RV,"start":KEY}`, KEY being the storage key after the last
//!   item returned plus `\u0000`, relative to the list's key prefix (`NAME` in a namespace or
//!   of a cluster-scoped kind, `NAMESPACE/NAME` across namespaces). Clients treat it as
//!   opaque; kubectl and client-go only hand it back.
//! - `continue=TOKEN`: the next page, read at the token's resourceVersion: every page of one
//!   list shows the same snapshot (the first page's `metadata.resourceVersion`), so objects
//!   written between pages neither appear nor change. A token the server cannot decode is
//!   `400 BadRequest` `invalid continue token: continue key is not valid…` with the real
//!   `DecodeContinue` reasons; a token with a `resourceVersion` other than `0` beside it is
//!   `400` `specifying resource version is not allowed when using continue`; a token whose
//!   resourceVersion the history no longer reaches (`KubeStandin::set_watch_history`,
//!   `KubeStandin::compact`; on a real server, an etcd compaction) is
//!   `410 Expired` with the real message and, in the Status's `metadata.continue`, a token
//!   that goes on from the same key at the latest resourceVersion (`rv: -1`), for a client
//!   that accepts an inconsistent list.
//! - `resourceVersion=0` (served from the watch cache on a real server) ignores `limit`: the
//!   whole list in one page, as the real cacher's `computeListLimit` makes it.
//! - `limit` with a `resourceVersion` other than `0` and no `resourceVersionMatch` lists at
//!   exactly that version (the legacy rule the API conventions keep), so its pages are
//!   consistent too.
//!
//! Differences from the real server: with a selector, the real server may hand out a token
//! when only non-matching objects remain (its next page is then empty); the stand-in hands out
//! one only when matching items remain. Namespaces (mostly virtual here, see `namespaces`)
//! have no history, so their pages are read from the latest state. A token's key is compared
//! in the stand-in's list order, (namespace, name), which is etcd's byte order of keys except
//! where one namespace's name is another's followed by `-`.

use base64::Engine as _;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::objects::Query;
use super::resources::ResourceKind;
use super::status::ApiError;
use super::store::{Store, TooOld};

/// The only token version the real server writes and reads.
const TOKEN_VERSION: &str = "meta.k8s.io/v1";

/// `inconsistentContinue` of the real etcd3 store: the 410 of a continued list whose snapshot
/// was compacted away.
const INCONSISTENT_CONTINUE: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

/// Go's `base64.RawURLEncoding`: no padding, and (not being `Strict`) lenient about the unused
/// bits of the last character.
const RAW_URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// `continueToken` of `k8s.io/apiserver/pkg/storage`, field for field.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Token {
    #[serde(rename = "v", default)]
    version: String,
    #[serde(rename = "rv", default)]
    resource_version: i64,
    #[serde(rename = "start", default)]
    start: String,
}

impl Token {
    fn encode(&self) -> String {
        RAW_URL.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// `DecodeContinue`: the token, or why it is not one (worded as the real errors are; the
    /// detail after a base64 or JSON failure is the stand-in's).
    fn decode(raw: &str) -> Result<Self, String> {
        const INVALID: &str = "continue key is not valid";
        let bytes = RAW_URL.decode(raw).map_err(|e| {
            let at = match e {
                base64::DecodeError::InvalidByte(at, _)
                | base64::DecodeError::InvalidLastSymbol(at, _) => at,
                _ => raw.len().saturating_sub(1),
            };
            format!("{INVALID}: illegal base64 data at input byte {at}")
        })?;
        let token: Self = serde_json::from_slice(&bytes).map_err(|e| format!("{INVALID}: {e}"))?;
        if token.version != TOKEN_VERSION {
            return Err(format!(
                "{INVALID}: server does not recognize this encoded version {}",
                token.version
            ));
        }
        if token.resource_version == 0 {
            return Err(format!(
                "{INVALID}: incorrect encoded start resourceVersion (version {TOKEN_VERSION})"
            ));
        }
        if token.start.is_empty() {
            return Err(format!(
                "{INVALID}: encoded start key empty (version {TOKEN_VERSION})"
            ));
        }
        // The real server refuses a key that `path.Clean` would change, so that no token
        // ranges outside the list's key prefix.
        let key = if token.start.starts_with('/') {
            token.start.clone()
        } else {
            format!("/{}", token.start)
        };
        if !is_clean(&key) {
            return Err(format!("{INVALID}: {}", token.start));
        }
        Ok(token)
    }
}

/// Whether Go's `path.Clean` leaves `path` (which starts with `/`) as it is: no empty, `.` or
/// `..` segment and no trailing slash, except the root itself.
fn is_clean(path: &str) -> bool {
    path == "/"
        || path
            .split('/')
            .skip(1)
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

/// Where an item sits in list order: (namespace, name) across the namespaces of a namespaced
/// kind, ("", name) otherwise.
type Position = (String, String);

/// How one list is paged, decided before it is read.
#[derive(Debug)]
pub(crate) struct Paging {
    /// What the list handler is to serve: the request's query, with `continue` replaced by
    /// the token's resourceVersion (`Exact`), or the legacy exact match made explicit.
    pub query: Query,
    /// `limit`; `None`: one page.
    limit: Option<usize>,
    /// The first position the page may show (from the token).
    start: Option<Position>,
    /// Keys are `NAMESPACE/NAME`.
    across_namespaces: bool,
    /// No label or field selector: `remainingItemCount` is exact.
    unfiltered: bool,
}

/// `limit`: Go's `strconv.ParseInt` on the parameter; 0 or less means no limit.
fn parse_limit(query: &Query) -> Result<Option<usize>, ApiError> {
    let Some(raw) = query.get("limit") else {
        return Ok(None);
    };
    let limit = raw.parse::<i64>().map_err(|e| {
        let why = match e.kind() {
            std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                "value out of range"
            }
            _ => "invalid syntax",
        };
        ApiError::bad_request(format!(
            "strconv.ParseInt: parsing {}: {why}",
            super::status::go_quote(raw)
        ))
    })?;
    Ok(usize::try_from(limit).ok().filter(|l| *l > 0))
}

/// Checks `limit` and `continue` of a list of `kind` (in `namespace`, if given) as the real
/// server checks them, and says how to page it and at which resourceVersion to read it.
///
/// # Errors
/// The 422 of the list options, the 400 of a bad `limit` or `continue`, the 410 of a token
/// whose resourceVersion is compacted away.
pub(crate) fn plan(
    store: &Store,
    kind: &ResourceKind,
    namespace: Option<&str>,
    query: &Query,
) -> Result<Paging, ApiError> {
    // `ValidateListOptions` (422) comes before storage reads the token.
    super::watch::check_list_options(query, false)?;
    super::watch::parse_resource_version(kind, query)?;
    let mut limit = parse_limit(query)?;
    let across_namespaces = kind.namespaced && namespace.is_none();
    let unfiltered = query.get("labelSelector").is_none() && query.get("fieldSelector").is_none();
    let rv = query.get("resourceVersion");
    let mut handler_query = query.clone();
    let mut start = None;
    if let Some(raw) = query.get("continue") {
        let token = Token::decode(raw)
            .map_err(|why| ApiError::bad_request(format!("invalid continue token: {why}")))?;
        if rv.is_some_and(|v| v != "0") {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        handler_query.0.remove("continue");
        handler_query.0.remove("resourceVersionMatch");
        if token.resource_version > 0 {
            let at = token.resource_version.unsigned_abs();
            if let Err(TooOld::Expired(_)) = store.check_resource_version(at) {
                let go_on = Token {
                    version: TOKEN_VERSION.into(),
                    resource_version: -1,
                    start: token.start.clone(),
                };
                return Err(ApiError::expired(INCONSISTENT_CONTINUE).with_continue(go_on.encode()));
            }
            handler_query
                .0
                .insert("resourceVersion".into(), at.to_string());
            handler_query
                .0
                .insert("resourceVersionMatch".into(), "Exact".into());
        } else {
            // `rv: -1`: go on at the latest resourceVersion (after a 410, see above).
            handler_query.0.remove("resourceVersion");
        }
        start = Some(position_of_key(&token.start, across_namespaces));
    } else if rv == Some("0") {
        // Served from the watch cache on a real server, which ignores `limit` then.
        limit = None;
    } else if limit.is_some() && rv.is_some() && query.get("resourceVersionMatch").is_none() {
        handler_query
            .0
            .insert("resourceVersionMatch".into(), "Exact".into());
    }
    Ok(Paging {
        query: handler_query,
        limit,
        start,
        across_namespaces,
        unfiltered,
    })
}

/// The position a token's start key names (relative to the list's key prefix).
fn position_of_key(key: &str, across_namespaces: bool) -> Position {
    let key = key.strip_prefix('/').unwrap_or(key);
    if across_namespaces {
        let (namespace, name) = key.split_once('/').unwrap_or((key, ""));
        (namespace.to_owned(), name.to_owned())
    } else {
        (String::new(), key.to_owned())
    }
}

impl Paging {
    fn position_of(&self, item: &Value) -> Position {
        let meta = |k: &str| {
            item.pointer(&format!("/metadata/{k}"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let namespace = if self.across_namespaces {
            meta("namespace")
        } else {
            String::new()
        };
        (namespace, meta("name"))
    }

    /// Cuts the list `body` (every item the list handler selected, in list order) to this
    /// page and sets `metadata.continue` and `metadata.remainingItemCount` when more remain.
    pub fn finish(&self, body: &mut Value) {
        let rv = body
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        let Some(items) = body.get_mut("items").and_then(Value::as_array_mut) else {
            return;
        };
        if let Some(start) = &self.start {
            items.retain(|item| self.position_of(item) >= *start);
        }
        let Some(limit) = self.limit.filter(|l| items.len() > *l) else {
            return;
        };
        let remaining = items.len() - limit;
        items.truncate(limit);
        let (namespace, name) = items
            .last()
            .map(|i| self.position_of(i))
            .unwrap_or_default();
        let key = if self.across_namespaces {
            format!("{namespace}/{name}\u{0}")
        } else {
            format!("{name}\u{0}")
        };
        let token = Token {
            version: TOKEN_VERSION.into(),
            resource_version: rv,
            start: key,
        }
        .encode();
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("continue".into(), json!(token));
            if self.unfiltered {
                meta.insert("remainingItemCount".into(), json!(remaining));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    fn list(names: &[(&str, &str)], rv: &str) -> Value {
        let items: Vec<Value> = names
            .iter()
            .map(|(ns, n)| json!({"metadata": {"namespace": ns, "name": n}}))
            .collect();
        json!({"kind": "SecretList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items})
    }

    fn names(body: &Value) -> Vec<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_token_is_the_real_servers_base64url_json() {
        let token = Token {
            version: TOKEN_VERSION.into(),
            resource_version: 42,
            start: "db\u{0}".into(),
        };
        let encoded = token.encode();
        assert!(!encoded.contains('=') && !encoded.contains('+') && !encoded.contains('/'));
        assert_eq!(
            RAW_URL.decode(&encoded).unwrap(),
            br#"{"v":"meta.k8s.io/v1","rv":42,"start":"db\u0000"}"#
        );
        assert_eq!(Token::decode(&encoded).unwrap(), token);
    }

    #[test]
    fn undecodable_tokens_are_refused_with_the_real_reasons() {
        let encode = |json: &str| RAW_URL.encode(json);
        for (raw, why) in [
            (
                "%%%".to_owned(),
                "continue key is not valid: illegal base64 data at input byte 0",
            ),
            (
                encode(r#"{"v":"v1","rv":1,"start":"a"}"#),
                "continue key is not valid: server does not recognize this encoded version v1",
            ),
            (
                encode(r#"{"v":"meta.k8s.io/v1","rv":0,"start":"a"}"#),
                "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
            ),
            (
                encode(r#"{"v":"meta.k8s.io/v1","rv":1,"start":""}"#),
                "continue key is not valid: encoded start key empty (version meta.k8s.io/v1)",
            ),
            (
                encode(r#"{"v":"meta.k8s.io/v1","rv":1,"start":"../kube-system/x"}"#),
                "continue key is not valid: ../kube-system/x",
            ),
        ] {
            assert_eq!(Token::decode(&raw).unwrap_err(), why, "{raw}");
        }
        assert!(
            Token::decode(&encode("not json"))
                .unwrap_err()
                .starts_with("continue key is not valid: ")
        );
        // The root is a clean key: the list from its start.
        assert!(Token::decode(&encode(r#"{"v":"meta.k8s.io/v1","rv":1,"start":"/"}"#)).is_ok());
    }

    /// A store whose latest write is resourceVersion 1.
    fn written_store() -> Store {
        let mut store = Store::default();
        store.put(
            &resources::SECRETS,
            "n",
            "s",
            json!({"metadata": {"name": "s", "namespace": "n"}}),
            crate::managed::ManagedFields::default(),
        );
        store
    }

    #[test]
    fn pages_follow_one_another_to_the_end() {
        let store = written_store();
        let all = [("a", "x"), ("a", "y"), ("b", "x"), ("b", "z"), ("c", "w")];
        let mut query = "limit=2".to_owned();
        let mut pages = Vec::new();
        loop {
            let paging = plan(
                &store,
                &resources::SECRETS,
                None,
                &Query::parse(Some(&query)),
            )
            .unwrap();
            // The handler is told to read every later page at the first page's version.
            if !pages.is_empty() {
                assert_eq!(paging.query.get("resourceVersion"), Some("1"));
                assert_eq!(paging.query.get("resourceVersionMatch"), Some("Exact"));
            }
            let mut body = list(&all, "1");
            paging.finish(&mut body);
            let positions: Vec<(String, String)> = body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| paging.position_of(i))
                .collect();
            pages.push((positions, body["metadata"]["remainingItemCount"].clone()));
            match body["metadata"]["continue"].as_str() {
                Some(token) => query = format!("limit=2&continue={token}"),
                None => break,
            }
        }
        let pos = |ns: &str, n: &str| (ns.to_owned(), n.to_owned());
        assert_eq!(
            pages,
            [
                (vec![pos("a", "x"), pos("a", "y")], json!(3)),
                (vec![pos("b", "x"), pos("b", "z")], json!(1)),
                (vec![pos("c", "w")], Value::Null),
            ]
        );
    }

    #[test]
    fn across_namespaces_a_key_is_namespace_slash_name() {
        let store = written_store();
        let paging = plan(
            &store,
            &resources::SECRETS,
            None,
            &Query::parse(Some("limit=1")),
        )
        .unwrap();
        let mut body = list(&[("a", "x"), ("b", "y")], "1");
        paging.finish(&mut body);
        let token = Token::decode(body["metadata"]["continue"].as_str().unwrap()).unwrap();
        assert_eq!(
            (token.resource_version, token.start.as_str()),
            (1, "a/x\u{0}")
        );
        assert_eq!(
            position_of_key(&token.start, true),
            ("a".to_owned(), "x\u{0}".to_owned())
        );
        assert_eq!(
            position_of_key("x\u{0}", false),
            (String::new(), "x\u{0}".to_owned())
        );
    }

    #[test]
    fn the_last_page_has_no_token_and_selectors_hide_the_count() {
        let store = written_store();
        let rv = store.resource_version().to_string();
        let paging = plan(
            &store,
            &resources::SECRETS,
            Some("n"),
            &Query::parse(Some("limit=2&labelSelector=app%3Dweb")),
        )
        .unwrap();
        let mut body = list(&[("n", "a"), ("n", "b"), ("n", "c")], &rv);
        paging.finish(&mut body);
        assert_eq!(names(&body), ["a", "b"]);
        assert!(body["metadata"].get("remainingItemCount").is_none());
        let token = body["metadata"]["continue"].as_str().unwrap().to_owned();
        assert_eq!(Token::decode(&token).unwrap().start, "b\u{0}");

        let next = plan(
            &store,
            &resources::SECRETS,
            Some("n"),
            &Query::parse(Some(&format!("limit=2&continue={token}"))),
        )
        .unwrap();
        assert_eq!(next.query.get("resourceVersion"), Some(rv.as_str()));
        assert_eq!(next.query.get("resourceVersionMatch"), Some("Exact"));
        assert_eq!(next.query.get("continue"), None);
        let mut body = list(&[("n", "a"), ("n", "b"), ("n", "c")], &rv);
        next.finish(&mut body);
        assert_eq!(names(&body), ["c"]);
        assert!(body["metadata"].get("continue").is_none());
        assert!(body["metadata"].get("remainingItemCount").is_none());
    }

    #[test]
    fn resource_version_zero_ignores_the_limit_and_others_are_exact() {
        let store = Store::default();
        let paging = plan(
            &store,
            &resources::SECRETS,
            Some("n"),
            &Query::parse(Some("limit=1&resourceVersion=0")),
        )
        .unwrap();
        let mut body = list(&[("n", "a"), ("n", "b")], "0");
        paging.finish(&mut body);
        assert_eq!(names(&body), ["a", "b"]);
        assert!(body["metadata"].get("continue").is_none());

        let legacy = plan(
            &store,
            &resources::SECRETS,
            Some("n"),
            &Query::parse(Some("limit=1&resourceVersion=7")),
        )
        .unwrap();
        assert_eq!(legacy.query.get("resourceVersionMatch"), Some("Exact"));
        let not_older = plan(
            &store,
            &resources::SECRETS,
            Some("n"),
            &Query::parse(Some(
                "limit=1&resourceVersion=7&resourceVersionMatch=NotOlderThan",
            )),
        )
        .unwrap();
        assert_eq!(
            not_older.query.get("resourceVersionMatch"),
            Some("NotOlderThan")
        );
    }

    #[test]
    fn bad_limits_and_versions_beside_a_token_are_bad_requests() {
        let store = Store::default();
        let err = plan(
            &store,
            &resources::SECRETS,
            None,
            &Query::parse(Some("limit=ten")),
        )
        .unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            (400, r#"strconv.ParseInt: parsing "ten": invalid syntax"#)
        );
        let token = Token {
            version: TOKEN_VERSION.into(),
            resource_version: 3,
            start: "a\u{0}".into(),
        }
        .encode();
        let err = plan(
            &store,
            &resources::SECRETS,
            None,
            &Query::parse(Some(&format!("continue={token}&resourceVersion=3"))),
        )
        .unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            (
                400,
                "specifying resource version is not allowed when using continue"
            )
        );
        let err = plan(
            &store,
            &resources::SECRETS,
            None,
            &Query::parse(Some(&format!(
                "continue={token}&resourceVersion=3&resourceVersionMatch=Exact"
            ))),
        )
        .unwrap_err();
        assert_eq!(err.code, 422, "ValidateListOptions comes first");
    }

    #[test]
    fn a_token_from_before_a_compaction_expires_with_one_to_go_on_inconsistently() {
        let mut store = Store::default();
        for name in ["a", "b"] {
            store.put(
                &resources::SECRETS,
                "n",
                name,
                json!({"metadata": {"name": name, "namespace": "n"}}),
                crate::managed::ManagedFields::default(),
            );
        }
        let token = Token {
            version: TOKEN_VERSION.into(),
            resource_version: 1,
            start: "a\u{0}".into(),
        }
        .encode();
        let query = Query::parse(Some(&format!("limit=1&continue={token}")));
        assert!(plan(&store, &resources::SECRETS, Some("n"), &query).is_ok());
        store.compact();
        let err = plan(&store, &resources::SECRETS, Some("n"), &query).unwrap_err();
        assert_eq!((err.code, err.reason), (410, "Expired"));
        assert_eq!(err.message, INCONSISTENT_CONTINUE);
        let go_on = Token::decode(err.continue_token.as_deref().unwrap()).unwrap();
        assert_eq!(
            (go_on.resource_version, go_on.start.as_str()),
            (-1, "a\u{0}")
        );
        assert_eq!(
            err.to_status_json()["metadata"]["continue"],
            json!(err.continue_token)
        );

        // That token lists at the latest resourceVersion.
        let latest = plan(
            &store,
            &resources::SECRETS,
            Some("n"),
            &Query::parse(Some(&format!(
                "limit=1&continue={}",
                err.continue_token.unwrap()
            ))),
        )
        .unwrap();
        assert_eq!(latest.query.get("resourceVersion"), None);
        assert_eq!(latest.query.get("resourceVersionMatch"), None);
    }
}
