//! AWS Secrets Manager as a store.
//!
//! - CURRENT, PREVIOUS and PENDING are Secrets Manager's own staging labels on the policy's
//!   secret (`AWSCURRENT`, `AWSPREVIOUS`, `AWSPENDING`), so apps, the AWS console and AWS's
//!   own tooling read them as they would after a native rotation. A credential's fields are
//!   one JSON object of strings in `SecretString` (`{"value": "…"}` or `{"username": "…",
//!   "password": "…"}`).
//! - The PENDING value is a version of that secret whose version id is the rotation id: the
//!   `create` state write puts it with `ClientRequestToken` = rotation id and the label
//!   `AWSPENDING` (idempotent by token), and `finish` moves `AWSCURRENT` onto it with
//!   `UpdateSecretVersionStage`, which makes Secrets Manager move `AWSPREVIOUS` to the old
//!   CURRENT by itself.
//! - The state record (rotation id, step, holder, lease, attempts, last rotation; never a
//!   value) lives in a second secret, [`default_state_id`]: `keyturn-state/<secret name>`.
//!   Its `AWSCURRENT` version id is the [`Fence`] (`absent` while the state secret does not
//!   exist).
//!
//! # Compare-and-set on the state
//!
//! Secrets Manager has no conditional write, but `UpdateSecretVersionStage` is one: moving
//! `AWSCURRENT` requires `RemoveFromVersionId`, and the call fails unless the label is on
//! that very version. A state write therefore (1) puts the new record as a proposal (a new
//! version labelled [`PROPOSED`] instead of `AWSCURRENT`), then (2) moves `AWSCURRENT` from
//! the fence to it. Of two writers starting from one fence, exactly one move succeeds; the
//! other gets [`StoreError::Conflict`]. The first state write creates the state secret with
//! `CreateSecret`, which fails for the second creator.
//!
//! A writer that starts a rotation puts its PENDING version *before* its state write, so a
//! state that names a rotation always has its value. A writer that then loses the race
//! leaves that version behind, never applied and without a label (it hands `AWSPENDING` back
//! to the winner); Secrets Manager removes such versions in time.
//!
//! A proposal's `ClientRequestToken` is a hash of the fence and the record, so a retried
//! write (the SDK retries timeouts) is idempotent, and a move whose answer was lost is
//! recognised as done. Why not the simpler "token = f(fence), one `PutSecretValue`" scheme,
//! where the second writer from a fence collides on the token: that relies on the
//! successor version still existing, and Secrets Manager deletes unlabelled versions once a
//! secret has more than 100 (after 24 hours), at which point a writer stalled on an old fence
//! would silently win. The label move is checked against the live label, always.
//!
//! # First rotation
//!
//! `PutSecretValue` on a secret with no versions makes that version `AWSCURRENT` whatever
//! labels were asked for, so a first PENDING value cannot be put on its own. When the secret
//! does not exist (or has no version), the store first gives it an empty placeholder version
//! (`{}`) as `AWSCURRENT`; a CURRENT with no fields reads as "no credential yet", and after the
//! first rotation the placeholder is what `AWSPREVIOUS` holds.
//!
//! # Access
//!
//! The state secret holds no value, only ids and times. The PENDING value is a version of
//! the app's own secret: restrict apps to `AWSCURRENT` with the IAM condition key
//! `secretsmanager:VersionStage` if they must not read it. The agent needs
//! `GetSecretValue`, `DescribeSecret`, `PutSecretValue`, `UpdateSecretVersionStage` and
//! `CreateSecret` on both secrets.
//!
//! # Quotas
//!
//! Every state write is a new version of the state secret (about six per rotation). Secrets
//! Manager keeps versions younger than 24 hours, so a policy should not rotate more often than
//! about twenty times a day.
//!
//! Values pass through the SDK's own `String`s (request and response bodies), which keyturn
//! cannot zeroize; keyturn's copies live in zeroizing buffers.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use chrono::{DateTime, Utc};
use keyturn_core::vault::SecretData;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::same_fields;
use super::{
    Current, Failures, Fence, InFlight, LastRotation, StateRecord, Step, Store, StoreError,
    StoreView, Taint,
};

/// The SDK, for callers that build their own client (tests point it at an emulator).
pub use aws_sdk_secretsmanager as sdk;

mod client;
mod error;
mod spec;

pub use client::{client_from_env, with_region};
pub use error::AwsSmError;
pub use spec::{ADMIN_ACTIONS, OWN_ACTIONS, Raw, Spec};

/// The prefix of the state secret's name.
pub const STATE_PREFIX: &str = "keyturn-state/";
/// The fence of a state secret that does not exist yet.
pub const ABSENT: &str = "absent";
/// The label of a state version proposed but not yet made `AWSCURRENT`.
pub const PROPOSED: &str = "KEYTURN_PROPOSED";

const CURRENT: &str = "AWSCURRENT";
const PENDING: &str = "AWSPENDING";
const STATE_FORMAT: u32 = 1;

/// The state secret's name for `secret_id`: `keyturn-state/<name>`. For an ARN, the name is
/// the part after `:secret:` without the six-character suffix Secrets Manager appends, so the
/// name and the ARN of one secret share one state.
#[must_use]
pub fn default_state_id(secret_id: &str) -> String {
    let name = match secret_id.split_once(":secret:") {
        Some((arn, name)) if arn.starts_with("arn:") => {
            let b = name.as_bytes();
            let suffixed = b.len() > 7
                && b[b.len() - 7] == b'-'
                && b[b.len() - 6..].iter().all(u8::is_ascii_alphanumeric);
            if suffixed {
                &name[..name.len() - 7]
            } else {
                name
            }
        }
        _ => secret_id,
    };
    format!("{STATE_PREFIX}{name}")
}

/// A policy's credential in AWS Secrets Manager.
#[derive(Debug, Clone)]
pub struct AwsSmStore {
    client: Client,
    secret_id: String,
    state_id: String,
}

impl AwsSmStore {
    /// The store for `secret_id` (a name or ARN), keeping its rotation state in the secret
    /// `state_id`, through `client`.
    #[must_use]
    pub fn new(client: Client, secret_id: &str, state_id: &str) -> Self {
        Self {
            client,
            secret_id: secret_id.to_owned(),
            state_id: state_id.to_owned(),
        }
    }

    /// The store for `secret_id` with its state in [`default_state_id`].
    #[must_use]
    pub fn for_secret(client: Client, secret_id: &str) -> Self {
        Self::new(client, secret_id, &default_state_id(secret_id))
    }

    /// The secret holding the credential.
    #[must_use]
    pub fn secret_id(&self) -> &str {
        &self.secret_id
    }

    /// The secret holding the rotation state.
    #[must_use]
    pub fn state_id(&self) -> &str {
        &self.state_id
    }

    fn backend(&self, e: AwsSmError) -> StoreError {
        let (kind, retryable) = (e.kind(), e.is_retryable());
        StoreError::Backend {
            store: self.location(),
            source: Box::new(e),
            kind,
            retryable,
        }
    }

    fn conflict(&self) -> StoreError {
        StoreError::Conflict {
            store: self.location(),
        }
    }

    fn corrupt(&self, what: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            store: self.location(),
            what: what.into(),
        }
    }

    // ---- raw calls, each mapping its error to an `AwsSmError` -------------------------

    /// `GetSecretValue` by label or version id; `None` when the secret or that version does
    /// not exist. Returns the version id, the `SecretString` and when the version was created.
    async fn get(
        &self,
        id: &str,
        stage: Option<&str>,
        version: Option<&str>,
    ) -> Result<Option<(String, Zeroizing<String>, Option<DateTime<Utc>>)>, AwsSmError> {
        let r = self
            .client
            .get_secret_value()
            .secret_id(id)
            .set_version_stage(stage.map(str::to_owned))
            .set_version_id(version.map(str::to_owned))
            .send()
            .await;
        match r {
            Ok(mut out) => {
                let text = Zeroizing::new(out.secret_string.take().unwrap_or_default());
                let created = out
                    .created_date
                    .and_then(|d| DateTime::<Utc>::from_timestamp(d.secs(), d.subsec_nanos()));
                Ok(Some((
                    out.version_id.take().unwrap_or_default(),
                    text,
                    created,
                )))
            }
            Err(e) => match AwsSmError::from_sdk("GetSecretValue", id, e) {
                e if e.code() == Some("ResourceNotFoundException") => Ok(None),
                e => Err(e),
            },
        }
    }

    /// `DescribeSecret`: version id → labels, and whether native rotation is on; `None` when
    /// the secret does not exist.
    async fn describe(
        &self,
        id: &str,
    ) -> Result<Option<(HashMap<String, Vec<String>>, bool)>, AwsSmError> {
        match self.client.describe_secret().secret_id(id).send().await {
            Ok(out) => Ok(Some((
                out.version_ids_to_stages.unwrap_or_default(),
                out.rotation_enabled.unwrap_or(false),
            ))),
            Err(e) => match AwsSmError::from_sdk("DescribeSecret", id, e) {
                e if e.code() == Some("ResourceNotFoundException") => Ok(None),
                e => Err(e),
            },
        }
    }

    /// `PutSecretValue` with one label; returns the labels the version carries afterwards.
    async fn put(
        &self,
        id: &str,
        token: &str,
        text: &str,
        stage: &str,
    ) -> Result<Vec<String>, AwsSmError> {
        self.client
            .put_secret_value()
            .secret_id(id)
            .client_request_token(token)
            .secret_string(text)
            .version_stages(stage)
            .send()
            .await
            .map(|out| out.version_stages.unwrap_or_default())
            .map_err(|e| AwsSmError::from_sdk("PutSecretValue", id, e))
    }

    /// `CreateSecret` with a first version (which Secrets Manager labels `AWSCURRENT`).
    async fn create(
        &self,
        name: &str,
        token: &str,
        text: &str,
        description: &str,
    ) -> Result<(), AwsSmError> {
        self.client
            .create_secret()
            .name(name)
            .client_request_token(token)
            .secret_string(text)
            .description(description)
            .send()
            .await
            .map(drop)
            .map_err(|e| AwsSmError::from_sdk("CreateSecret", name, e))
    }

    /// `UpdateSecretVersionStage`: moves (or, with no `to`, removes) `stage`.
    async fn move_stage(
        &self,
        id: &str,
        stage: &str,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<(), AwsSmError> {
        self.client
            .update_secret_version_stage()
            .secret_id(id)
            .version_stage(stage)
            .set_remove_from_version_id(from.map(str::to_owned))
            .set_move_to_version_id(to.map(str::to_owned))
            .send()
            .await
            .map(drop)
            .map_err(|e| AwsSmError::from_sdk("UpdateSecretVersionStage", id, e))
    }

    // ---- the credential secret ----------------------------------------------------------

    fn parse_fields(&self, text: &str, what: &str) -> Result<SecretData, StoreError> {
        // serde's message could quote the value ("invalid type: string …"): never pass it on.
        serde_json::from_str::<SecretData>(text).map_err(|_| {
            self.corrupt(format!(
                "{what} of {} is not a JSON object of fields",
                self.secret_id
            ))
        })
    }

    /// Gives a secret with no version an empty placeholder `AWSCURRENT`, creating the secret
    /// if need be, so that a PENDING version put next stays PENDING.
    async fn ensure_placeholder(&self, exists: bool) -> Result<(), StoreError> {
        let token = token(&[b"keyturn-placeholder", self.secret_id.as_bytes()]);
        let r = if exists {
            self.put(&self.secret_id, &token, "{}", CURRENT)
                .await
                .map(drop)
        } else {
            let what = "Managed by keyturn. Its first version, {}, stands for 'no credential yet'.";
            self.create(&self.secret_id, &token, "{}", what).await
        };
        match r {
            // A concurrent first rotation created it first: just as good.
            Err(e) if e.code() == Some("ResourceExistsException") => Ok(()),
            r => r.map_err(|e| self.backend(e)),
        }
    }

    /// Makes `rec`'s PENDING value durable as the `AWSPENDING` version `rotation_id`.
    async fn put_pending(&self, rec: &InFlight) -> Result<(), StoreError> {
        let described = self
            .describe(&self.secret_id)
            .await
            .map_err(|e| self.backend(e))?;
        if described.as_ref().is_some_and(|(_, native)| *native) {
            return Err(self.backend(AwsSmError::NativeRotationEnabled {
                secret_id: self.secret_id.clone(),
            }));
        }
        match &described {
            Some((versions, _)) if !versions.is_empty() => {
                if let Some(stale) = labelled(versions, PENDING).find(|v| *v != rec.rotation_id) {
                    // Left by a rotation that crashed before its state write, or by another
                    // tool: the state does not know it, so nothing will ever promote it.
                    tracing::warn!(secret = %self.secret_id, stale_version = stale, rotation_id = %rec.rotation_id, "moving a stale AWSPENDING label to the new rotation");
                }
            }
            Some(_) => self.ensure_placeholder(true).await?,
            None => self.ensure_placeholder(false).await?,
        }
        let json = encode_fields(&rec.pending)
            .ok_or_else(|| self.corrupt("the pending value has a field that is not text"))?;
        let labels = match self
            .put(&self.secret_id, &rec.rotation_id, json.as_str(), PENDING)
            .await
        {
            Ok(labels) => labels,
            Err(e) if e.code() == Some("ResourceExistsException") => {
                // The version exists with other bytes: fine if it holds the same fields (an
                // earlier keyturn wrote it), not if it is someone else's.
                let stored = self
                    .get(&self.secret_id, None, Some(&rec.rotation_id))
                    .await
                    .map_err(|e| self.backend(e))?;
                match stored {
                    Some((_, text, _))
                        if same_fields(
                            &self.parse_fields(&text, "pending version")?,
                            &rec.pending,
                        ) =>
                    {
                        Vec::new()
                    }
                    _ => {
                        return Err(self.corrupt(format!(
                            "version {} already exists with another value",
                            rec.rotation_id
                        )));
                    }
                }
            }
            Err(e) => return Err(self.backend(e)),
        };
        if !labels.iter().any(|l| l == PENDING) {
            // An idempotent put leaves labels as they were, and a racing writer's put may
            // have taken the label: put it back where the state will say PENDING is. The
            // label is for people and for Secrets Manager's version clean-up (which spares a
            // day-old version anyway); keyturn finds PENDING by version id, so this is not
            // worth failing the rotation for.
            if let Err(e) = self.label_pending(&rec.rotation_id).await {
                tracing::warn!(secret = %self.secret_id, rotation_id = %rec.rotation_id, error = %e, "could not label the pending version AWSPENDING");
            }
        }
        Ok(())
    }

    /// Moves `AWSPENDING` onto `version` (from wherever it is).
    async fn label_pending(&self, version: &str) -> Result<(), StoreError> {
        let Some((versions, _)) = self
            .describe(&self.secret_id)
            .await
            .map_err(|e| self.backend(e))?
        else {
            return Err(self.corrupt(format!("{} vanished during a rotation", self.secret_id)));
        };
        let from: Vec<&str> = labelled(&versions, PENDING).collect();
        if from == [version] {
            return Ok(());
        }
        for f in from.iter().filter(|f| **f != version) {
            self.move_stage(&self.secret_id, PENDING, Some(f), None)
                .await
                .map_err(|e| self.backend(e))?;
        }
        if !from.contains(&version) {
            self.move_stage(&self.secret_id, PENDING, None, Some(version))
                .await
                .map_err(|e| self.backend(e))?;
        }
        Ok(())
    }

    /// Removes `AWSPENDING` from every version that carries it.
    async fn clear_pending(&self) -> Result<(), StoreError> {
        let Some((versions, _)) = self
            .describe(&self.secret_id)
            .await
            .map_err(|e| self.backend(e))?
        else {
            return Ok(());
        };
        for v in labelled(&versions, PENDING) {
            match self
                .move_stage(&self.secret_id, PENDING, Some(v), None)
                .await
            {
                // Gone since the describe: that is the goal.
                Err(e) if e.code() == Some("InvalidParameterException") => {}
                r => r.map_err(|e| self.backend(e))?,
            }
        }
        Ok(())
    }

    /// After losing the state race: the label this writer's put may have taken goes back to
    /// the winner's PENDING version, or away. Best effort; the winner's end of rotation
    /// clears any `AWSPENDING` anyway.
    async fn release_pending(&self, mine: &str) {
        let r: Result<(), StoreError> = async {
            let Some((versions, _)) = self
                .describe(&self.secret_id)
                .await
                .map_err(|e| self.backend(e))?
            else {
                return Ok(());
            };
            if !labelled(&versions, PENDING).any(|v| v == mine) {
                return Ok(());
            }
            let (state, _) = self.read_state().await?;
            let winner = state
                .in_flight
                .map(|f| f.rotation_id)
                .filter(|w| versions.contains_key(w));
            self.move_stage(&self.secret_id, PENDING, Some(mine), winner.as_deref())
                .await
                .map_err(|e| self.backend(e))?;
            // The winner may have finished between the state read and the move: its end of
            // rotation cleared AWSPENDING before the label came back, which would then stay
            // on a promoted version. Read the state again: if the winner is no longer in
            // flight, take the label off. (If it still is, its own end of rotation comes
            // after this read and clears the label.)
            let Some(w) = winner else { return Ok(()) };
            let (now, _) = self.read_state().await?;
            if now.in_flight.is_some_and(|f| f.rotation_id == w) {
                return Ok(());
            }
            match self
                .move_stage(&self.secret_id, PENDING, Some(&w), None)
                .await
            {
                Err(e) if e.code() == Some("InvalidParameterException") => Ok(()),
                r => r.map_err(|e| self.backend(e)),
            }
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(secret = %self.secret_id, rotation_id = mine, error = %e, "could not hand back the AWSPENDING label after losing a state race");
        }
    }

    // ---- the state secret ---------------------------------------------------------------

    async fn read_state(&self) -> Result<(StateRecord, Fence), StoreError> {
        match self
            .get(&self.state_id, Some(CURRENT), None)
            .await
            .map_err(|e| self.backend(e))?
        {
            None => Ok((StateRecord::default(), Fence(ABSENT.into()))),
            Some((version, text, _)) => Ok((self.decode_state(&text)?, Fence(version))),
        }
    }

    fn decode_state(&self, text: &str) -> Result<StateRecord, StoreError> {
        let doc: StateDoc = serde_json::from_str(text)
            .map_err(|e| self.corrupt(format!("state secret {}: {e}", self.state_id)))?;
        if doc.format != STATE_FORMAT {
            return Err(self.corrupt(format!(
                "state secret {} has format {}, this keyturn reads {STATE_FORMAT}",
                self.state_id, doc.format
            )));
        }
        let last = doc.last;
        // The pending fields are filled in by `view` from the AWSPENDING version.
        let in_flight = doc
            .in_flight
            .map(|f| {
                let step = Step::parse(&f.step)
                    .ok_or_else(|| self.corrupt(format!("unknown step {:?}", f.step)))?;
                Ok::<_, StoreError>(InFlight {
                    rotation_id: f.rotation_id,
                    step,
                    pending: SecretData::new(),
                    started_at: f.started_at,
                    holder: f.holder,
                    lease_until: f.lease_until,
                    attempts: f.attempts,
                })
            })
            .transpose()?;
        Ok(StateRecord {
            in_flight,
            last,
            taint: doc.taint,
            failures: doc.failures,
        })
    }

    /// The compare-and-set: propose the record, then move `AWSCURRENT` to it from `fence`.
    async fn cas_state(&self, fence: &Fence, state: &StateRecord) -> Result<Fence, StoreError> {
        let body = encode_state(state);
        let proposal = token(&[b"keyturn-state", fence.0.as_bytes(), body.as_bytes()]);
        if fence.0 == ABSENT {
            let what = format!(
                "keyturn rotation state for {} (no secret values)",
                self.secret_id
            );
            return match self.create(&self.state_id, &proposal, &body, &what).await {
                Ok(()) => Ok(Fence(proposal)),
                Err(e) if e.code() == Some("ResourceExistsException") => Err(self.conflict()),
                Err(e) => Err(self.backend(e)),
            };
        }
        match self.put(&self.state_id, &proposal, &body, PROPOSED).await {
            // A retry of a write that already went through.
            Ok(labels) if labels.iter().any(|l| l == CURRENT) => return Ok(Fence(proposal)),
            Ok(_) => {}
            // The state secret is gone, so it is not at `fence` any more.
            Err(e)
                if matches!(
                    e.code(),
                    Some("ResourceExistsException" | "ResourceNotFoundException")
                ) =>
            {
                return Err(self.conflict());
            }
            Err(e) => return Err(self.backend(e)),
        }
        match self
            .move_stage(&self.state_id, CURRENT, Some(&fence.0), Some(&proposal))
            .await
        {
            Ok(()) => Ok(Fence(proposal)),
            Err(e) => {
                // The usual failure is "AWSCURRENT is not on RemoveFromVersionId": somebody
                // else moved it. Tell that apart from our own earlier move (a retried call)
                // and from a real error.
                let now = self
                    .describe(&self.state_id)
                    .await
                    .map_err(|e| self.backend(e))?;
                match now.as_ref().and_then(|(v, _)| labelled(v, CURRENT).next()) {
                    Some(v) if v == proposal => Ok(Fence(proposal)),
                    Some(v) if v == fence.0 => Err(self.backend(e)),
                    _ => Err(self.conflict()),
                }
            }
        }
    }
}

#[async_trait]
impl Store for AwsSmStore {
    fn location(&self) -> String {
        format!("aws-secretsmanager:{}", self.secret_id)
    }

    async fn state(&self) -> Result<StateRecord, StoreError> {
        Ok(self.read_state().await?.0)
    }

    async fn view(&self) -> Result<StoreView, StoreError> {
        let current = match self
            .get(&self.secret_id, Some(CURRENT), None)
            .await
            .map_err(|e| self.backend(e))?
        {
            None => None,
            Some((version, text, created)) => {
                let fields = self.parse_fields(&text, "AWSCURRENT")?;
                // `{}` is the placeholder of a secret that never had a credential.
                (!fields.is_empty()).then_some(Current {
                    fields,
                    version,
                    created,
                })
            }
        };
        let (mut state, fence) = self.read_state().await?;
        if let Some(f) = &mut state.in_flight {
            let Some((_, text, _)) = self
                .get(&self.secret_id, None, Some(&f.rotation_id))
                .await
                .map_err(|e| self.backend(e))?
            else {
                return Err(self.corrupt(format!(
                    "rotation {} is in flight but {} has no version {}",
                    f.rotation_id, self.secret_id, f.rotation_id
                )));
            };
            f.pending = self.parse_fields(&text, "the pending version")?;
            if f.pending.is_empty() {
                return Err(self.corrupt(format!(
                    "the pending version {} has no fields",
                    f.rotation_id
                )));
            }
        }
        Ok(StoreView {
            current,
            state,
            fence,
        })
    }

    async fn write_state(&self, fence: &Fence, state: &StateRecord) -> Result<Fence, StoreError> {
        if let Some(f) = &state.in_flight {
            // The rotation id is the version id, and a ClientRequestToken is 32 to 64 long.
            if !(32..=64).contains(&f.rotation_id.len()) {
                return Err(self.corrupt(format!(
                    "rotation id {:?} is not a 32 to 64 character token",
                    f.rotation_id
                )));
            }
            if f.step == Step::Created {
                // Before the state names it, so a state that names a rotation always has its
                // PENDING version.
                self.put_pending(f).await?;
            }
        }
        match self.cas_state(fence, state).await {
            Err(StoreError::Conflict { store }) => {
                if let Some(f) = state.in_flight.as_ref().filter(|f| f.step == Step::Created) {
                    self.release_pending(&f.rotation_id).await;
                }
                Err(StoreError::Conflict { store })
            }
            Ok(new) if state.in_flight.is_none() => {
                // Only after the state says nothing is in flight, and only by the writer that
                // said so: a writer that lost must not strip a live rotation's label. The
                // state has moved, so a failure here is not the caller's: the label is left
                // for the next rotation's PENDING put, which moves it.
                if let Err(e) = self.clear_pending().await {
                    tracing::warn!(secret = %self.secret_id, error = %e, "could not remove AWSPENDING after the rotation ended; the next rotation moves it");
                }
                Ok(new)
            }
            r => r,
        }
    }

    async fn promote(&self, rec: &InFlight, base: Option<&Current>) -> Result<(), StoreError> {
        let rid = rec.rotation_id.as_str();
        let Some((versions, _)) = self
            .describe(&self.secret_id)
            .await
            .map_err(|e| self.backend(e))?
        else {
            return Err(self.corrupt(format!(
                "{} does not exist, so rotation {rid} has nothing to promote",
                self.secret_id
            )));
        };
        if !versions.contains_key(rid) {
            return Err(self.corrupt(format!(
                "{} has no version {rid} to promote",
                self.secret_id
            )));
        }
        let current = labelled(&versions, CURRENT).next().map(str::to_owned);
        // Resuming after a crash that followed the move: moving again would push the old
        // value out of AWSPREVIOUS.
        if current.as_deref() != Some(rid) {
            // Compare-and-set on CURRENT: whatever replaced the CURRENT this rotation was
            // based on since is somebody else's write, except the empty placeholder.
            match (&current, base) {
                (Some(cur), Some(b)) if *cur != b.version => return Err(self.conflict()),
                (Some(cur), None) => {
                    let text = self
                        .get(&self.secret_id, None, Some(cur))
                        .await
                        .map_err(|e| self.backend(e))?;
                    if let Some((_, text, _)) = text
                        && !self.parse_fields(&text, "AWSCURRENT")?.is_empty()
                    {
                        return Err(self.conflict());
                    }
                }
                _ => {}
            }
            if let Err(e) = self
                .move_stage(&self.secret_id, CURRENT, current.as_deref(), Some(rid))
                .await
            {
                let now = self
                    .describe(&self.secret_id)
                    .await
                    .map_err(|e| self.backend(e))?;
                match now.as_ref().and_then(|(v, _)| labelled(v, CURRENT).next()) {
                    // Our own move, answered late (a retried call).
                    Some(v) if v == rid => {}
                    Some(v) if Some(v) == current.as_deref() => return Err(self.backend(e)),
                    _ => return Err(self.conflict()),
                }
            }
        }
        if versions
            .get(rid)
            .is_some_and(|l| l.iter().any(|l| l == PENDING))
        {
            match self
                .move_stage(&self.secret_id, PENDING, Some(rid), None)
                .await
            {
                Err(e) if e.code() == Some("InvalidParameterException") => {}
                r => r.map_err(|e| self.backend(e))?,
            }
        }
        Ok(())
    }
}

/// The versions that carry `label` (one, unless the service misbehaves).
fn labelled<'a>(
    versions: &'a HashMap<String, Vec<String>>,
    label: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    versions
        .iter()
        .filter(move |(_, l)| l.iter().any(|l| l == label))
        .map(|(v, _)| v.as_str())
}

/// A `ClientRequestToken` (a UUID, 36 characters) derived from `parts`.
fn token(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// A credential's fields as one JSON object of strings, built in a zeroizing buffer large
/// enough never to reallocate (JSON escapes a byte into at most six). `None` when a value is
/// not UTF-8.
fn encode_fields(fields: &SecretData) -> Option<Zeroizing<String>> {
    struct Fields<'a>(&'a SecretData);
    impl Serialize for Fields<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut m = s.serialize_map(Some(self.0.len()))?;
            for (k, v) in self.0.iter() {
                m.serialize_entry(
                    k,
                    v.expose_str()
                        .map_err(|_| serde::ser::Error::custom("not text"))?,
                )?;
            }
            m.end()
        }
    }
    let cap = 2 + fields
        .iter()
        .map(|(k, v)| 6 * (k.len() + v.len()) + 6)
        .sum::<usize>();
    let mut buf = Zeroizing::new(Vec::with_capacity(cap));
    serde_json::to_writer(&mut *buf, &Fields(fields)).ok()?;
    let bytes = std::mem::take(&mut *buf);
    // serde_json writes UTF-8; the Vec moves into the String without a copy.
    String::from_utf8(bytes).ok().map(Zeroizing::new)
}

/// The state secret's JSON: no values, only ids, steps and times.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateDoc {
    format: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    in_flight: Option<InFlightDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last: Option<LastRotation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    taint: Option<Taint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failures: Option<Failures>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InFlightDoc {
    rotation_id: String,
    step: String,
    holder: String,
    lease_until: DateTime<Utc>,
    started_at: DateTime<Utc>,
    attempts: u32,
}

fn encode_state(state: &StateRecord) -> String {
    let doc = StateDoc {
        format: STATE_FORMAT,
        in_flight: state.in_flight.as_ref().map(|f| InFlightDoc {
            rotation_id: f.rotation_id.clone(),
            step: f.step.as_str().to_owned(),
            holder: f.holder.clone(),
            lease_until: f.lease_until,
            started_at: f.started_at,
            attempts: f.attempts,
        }),
        last: state.last.clone(),
        taint: state.taint.clone(),
        failures: state.failures.clone(),
    };
    // Only strings, numbers and times: serializing cannot fail.
    serde_json::to_string(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use keyturn_core::SecretValue;

    use super::*;
    use crate::rotation::store::StoreErrorKind;

    fn service(code: &str, status: u16, secret_id: &str, message: &str) -> StoreError {
        let e = AwsSmError::Service {
            op: "GetSecretValue",
            secret_id: secret_id.into(),
            code: code.into(),
            message: message.into(),
            status,
        };
        StoreError::Backend {
            store: format!("aws-sm:{secret_id}"),
            kind: e.kind(),
            retryable: e.is_retryable(),
            source: Box::new(e),
        }
    }

    #[test]
    fn a_denial_is_known_by_its_code_not_by_words_in_the_message() {
        let denied = service(
            "AccessDeniedException",
            400,
            "apps/db",
            "User: arn:aws:iam::1:user/x is not authorized to perform: secretsmanager:GetSecretValue",
        );
        assert!(denied.is_permission_denied());
        // Credentials the service does not accept: the message names no denial at all.
        let bad_key = service(
            "UnrecognizedClientException",
            400,
            "apps/db",
            "The security token included in the request is invalid.",
        );
        assert!(bad_key.is_permission_denied());
        // A missing secret whose name (quoted in the message) happens to read like a denial.
        let missing = service(
            "ResourceNotFoundException",
            400,
            "AccessDenied-audit",
            "Secrets Manager can't find the specified secret AccessDenied-audit: not authorized",
        );
        assert!(!missing.is_permission_denied());
        let throttled = service("ThrottlingException", 400, "apps/db", "Rate exceeded");
        assert!(!throttled.is_permission_denied() && throttled.is_retryable());
    }

    /// The kind is set from the code where the error arises, so every command exits alike:
    /// 77 for a denial (as for Vault's 403), 66 for a missing secret, 69 for throttling or an
    /// outage, 70 for a request the service found invalid.
    #[test]
    fn an_aws_failure_exits_by_its_code() {
        use keyturn_core::exit::{ExitCode, HasExitCode};
        let cases = [
            ("AccessDeniedException", 400, ExitCode::NoPermission),
            ("ExpiredTokenException", 400, ExitCode::NoPermission),
            ("Whatever", 403, ExitCode::NoPermission),
            ("ResourceNotFoundException", 400, ExitCode::NotFound),
            ("ThrottlingException", 400, ExitCode::Unavailable),
            ("InternalServiceError", 500, ExitCode::Unavailable),
            ("InvalidRequestException", 400, ExitCode::Software),
        ];
        for (code, status, want) in cases {
            // The message quotes the secret's name, which reads like another kind.
            let e = service(
                code,
                status,
                "AccessDenied-NotFound",
                "not authorized: not found",
            );
            assert_eq!(e.exit_code(), want, "{code} {status}");
        }
        let transport = |retryable| AwsSmError::Transport {
            op: "GetSecretValue",
            secret_id: "apps/db".into(),
            detail: "connection refused".into(),
            retryable,
        };
        assert_eq!(transport(true).kind(), StoreErrorKind::Unavailable);
        assert_eq!(transport(false).kind(), StoreErrorKind::Other);
    }

    #[test]
    fn the_state_name_of_an_arn_is_the_state_name_of_its_secret_name() {
        assert_eq!(default_state_id("apps/db"), "keyturn-state/apps/db");
        assert_eq!(
            default_state_id("arn:aws:secretsmanager:eu-west-1:123456789012:secret:apps/db-AbC123"),
            "keyturn-state/apps/db"
        );
        assert_eq!(
            default_state_id("arn:aws:secretsmanager:eu-west-1:123456789012:secret:db"),
            "keyturn-state/db"
        );
    }

    #[test]
    fn fields_encode_as_one_json_object_of_strings_even_with_escapes() {
        let mut d = SecretData::new();
        d.insert("password", SecretValue::from_str_copy("a\"b\\c\u{1}é"));
        d.insert("username", SecretValue::from_str_copy("orders_a"));
        let json = encode_fields(&d).unwrap();
        let back: SecretData = serde_json::from_str(&json).unwrap();
        assert!(same_fields(&d, &back));
        d.insert("bin", SecretValue::new(vec![0xff]));
        assert!(encode_fields(&d).is_none());
    }

    #[test]
    fn a_client_can_be_pointed_at_another_region() {
        let base = sdk::Config::builder()
            .behavior_version(sdk::config::BehaviorVersion::latest())
            .region(sdk::config::Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:1")
            .build();
        let c = with_region(&Client::from_conf(base), "eu-west-1");
        assert_eq!(c.config().region().map(|r| r.as_ref()), Some("eu-west-1"));
    }

    #[test]
    fn tokens_are_uuids_that_depend_on_every_part() {
        let a = token(&[b"x", b"yz"]);
        assert_eq!(a.len(), 36);
        assert_ne!(a, token(&[b"xy", b"z"]));
        assert_eq!(a, token(&[b"x", b"yz"]));
    }

    #[test]
    fn a_state_record_round_trips_without_its_pending_value() {
        let now = Utc::now();
        let mut pending = SecretData::new();
        pending.insert("value", SecretValue::from_str_copy("canary-not-in-state"));
        let rec = StateRecord {
            in_flight: Some(InFlight {
                rotation_id: uuid::Uuid::new_v4().to_string(),
                step: Step::Tested,
                pending,
                started_at: now,
                holder: "agent-a".into(),
                lease_until: now,
                attempts: 2,
            }),
            last: Some(LastRotation {
                rotation_id: "r".into(),
                started_at: now,
                outcome: "ok".into(),
            }),
            taint: None,
            failures: None,
        };
        let text = encode_state(&rec);
        assert!(!text.contains("canary-not-in-state"));
        let store = AwsSmStore::new(
            Client::from_conf(
                sdk::Config::builder()
                    .behavior_version(sdk::config::BehaviorVersion::latest())
                    .build(),
            ),
            "s",
            "keyturn-state/s",
        );
        let back = store.decode_state(&text).unwrap();
        let f = back.in_flight.unwrap();
        assert_eq!(
            (f.step, f.attempts, f.holder.as_str(), f.lease_until),
            (Step::Tested, 2, "agent-a", now)
        );
        assert_eq!(back.last, rec.last);
        assert!(matches!(
            store.decode_state("{\"format\":2}"),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
