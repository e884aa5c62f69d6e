//! A test kubelet: runs a stored pod's init containers for real, as a node would, so a test
//! can assert what the pod's app containers would find in their volumes.
//!
//! Given a [`Pod`] (fetched from the cluster through kube-rs, or built by the test), it
//!
//! - materialises the pod's volumes on the host, each as the kubelet makes it:
//!   - `downwardAPI` items (and a projected volume's `downwardAPI` source): `metadata.annotations`
//!     and `metadata.labels` in the kubelet's format ([`format_map`]: one `key="value"` line per
//!     entry, keys sorted, the value quoted as Go's `%q` does ([`go_quote`]), no trailing
//!     newline), plus `metadata.name`, `.namespace`, `.uid` and `metadata.annotations['KEY']`.
//!     As a real kubelet does, the annotations include the two it adds itself,
//!     `kubernetes.io/config.seen` and `kubernetes.io/config.source`;
//!   - a projected `serviceAccountToken`: a token from the cluster's TokenRequest API (`POST
//!     serviceaccounts/NAME/token` with the volume's audience and `expirationSeconds`, bound to
//!     the Pod by name and uid), so what reads it authenticates as the pod's service account;
//!   - `secret` and `configMap` volumes (and projected sources): the object's data from the API;
//!   - `emptyDir`: a fresh directory, mode 0777, on tmpfs (`/dev/shm`) for `medium: Memory`,
//!     else on disk.
//!
//!   Secret, configMap, downwardAPI and projected volumes are written as the kubelet's atomic
//!   writer does: the files in a `..TIMESTAMP` directory, a `..data` symlink to it, and each
//!   top-level name a symlink through `..data`; default mode 0644, owned by root. The pod's
//!   `fsGroup` and the token's owner follow the kubelet's rules (see [`fs_user`] and
//!   `set_volume_ownership`). Secret, downwardAPI and projected volumes are on tmpfs, as the
//!   kubelet backs them with memory; configMap volumes on disk.
//! - runs each init container, in order, whose image it knows ([`Kubelet::image`]): the
//!   image's entrypoint and cmd unless the container's `command`/`args` replace them (with
//!   `$(VAR)` expanded as the kubelet does), with exactly the container's `env` (`value`, and
//!   `valueFrom.fieldRef` resolved from the pod as the kubelet does), in a private mount
//!   namespace: a root directory holding only the image's static binary at its entrypoint path
//!   and `/dev/{null,zero,random,urandom}`, read-only when `readOnlyRootFilesystem`, each
//!   `volumeMount` bind-mounted at its `mountPath` (read-only when `readOnly`), chrooted, as
//!   the container's `runAsUser`/`runAsGroup` (else the pod's, else the image's `USER`), with
//!   the group and the pod's `supplementalGroups`/`fsGroup` as supplementary groups, and no new
//!   privileges. A `runAsNonRoot` container that would run as root is not started, as the
//!   kubelet refuses it. The network is the host's (so a loopback OpenBao works). An init
//!   container whose image is unknown is reported as not run; one that fails stops the rest,
//!   as on a node.
//! - reports each init container's exit status, stdout and stderr, and for each app container
//!   the files it would see under each of its `volumeMounts` (path, bytes, mode, owner), with
//!   [`ContainerView::can_read`] saying whether its user may read one.
//!
//! Not modelled: `/proc`, `/sys`, `/etc/hosts` and the service-link environment variables a
//! runtime adds; env from Secrets/ConfigMaps (`secretKeyRef`, `envFrom`), `workingDir`, and
//! volume types other than the above are refused with an error naming them. Everything is
//! removed when the [`PodRun`] drops; the mounts live only in the container's own mount
//! namespace, so they go when its process exits.
//!
//! The mount namespace and chroot use util-linux/coreutils (`unshare`, `mount`, `setpriv`,
//! `chroot`), which needs root. Without root the container runs in a user namespace mapping
//! the caller to root (`unshare -Urm`): mounts and chroot still work, but it cannot switch to
//! the container's user, so ownership and permission assertions do not hold there.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, bail};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, PodSecurityContext, Secret,
    ServiceAccount, Volume,
};
use kube::api::{Api, PostParams};
use serde_json::json;

/// The kubelet's default mode for secret, configMap, downwardAPI and projected files.
const DEFAULT_MODE: u32 = 0o644;

/// What the kubelet knows of an image: the one static binary it holds, its entrypoint and
/// cmd, and its `USER`.
#[derive(Debug, Clone)]
pub struct Image {
    /// The host file put at `entrypoint[0]` inside the container's root.
    pub binary: PathBuf,
    /// `ENTRYPOINT`.
    pub entrypoint: Vec<String>,
    /// `CMD`.
    pub cmd: Vec<String>,
    /// `USER` as `UID[:GID]`, numeric; `None` runs as root, as a runtime does.
    pub user: Option<(u32, Option<u32>)>,
}

impl Image {
    /// The image `containerfile` describes (its `ENTRYPOINT`, `CMD` and `USER` lines, JSON
    /// form and numeric user), holding `binary`.
    ///
    /// # Errors
    /// When the file cannot be read, has no JSON `ENTRYPOINT`, or a `USER` that is not
    /// numeric.
    pub fn from_containerfile(containerfile: &Path, binary: PathBuf) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(containerfile)
            .with_context(|| format!("reading {}", containerfile.display()))?;
        let (mut entrypoint, mut cmd, mut user) = (None, Vec::new(), None);
        for line in text.lines().map(str::trim) {
            let json_list = |rest: &str| -> anyhow::Result<Vec<String>> {
                serde_json::from_str(rest.trim()).with_context(|| {
                    format!("{}: {line:?} is not JSON form", containerfile.display())
                })
            };
            if let Some(rest) = line.strip_prefix("ENTRYPOINT ") {
                entrypoint = Some(json_list(rest)?);
            } else if let Some(rest) = line.strip_prefix("CMD ") {
                cmd = json_list(rest)?;
            } else if let Some(rest) = line.strip_prefix("USER ") {
                let (u, g) = match rest.trim().split_once(':') {
                    Some((u, g)) => (u, Some(g)),
                    None => (rest.trim(), None),
                };
                let numeric = |s: &str| {
                    s.parse::<u32>().with_context(|| {
                        format!("{}: USER {rest} is not numeric", containerfile.display())
                    })
                };
                user = Some((numeric(u)?, g.map(numeric).transpose()?));
            }
        }
        let entrypoint = entrypoint
            .filter(|e| !e.is_empty())
            .with_context(|| format!("{} has no ENTRYPOINT", containerfile.display()))?;
        Ok(Self {
            binary,
            entrypoint,
            cmd,
            user,
        })
    }

    /// The keyturn-init image: images/keyturn-init.Containerfile holding the static
    /// keyturn-init the images ship ([`crate::bins::static_bins`]).
    ///
    /// # Panics
    /// When the static binary cannot be built or the Containerfile read.
    #[must_use]
    pub fn keyturn_init() -> Self {
        Self::from_containerfile(
            &crate::tools::repo_root().join("images/keyturn-init.Containerfile"),
            crate::bins::static_bins().1,
        )
        .expect("images/keyturn-init.Containerfile")
    }
}

/// A kubelet for tests: see the module documentation.
#[derive(Clone)]
pub struct Kubelet {
    client: kube::Client,
    images: BTreeMap<String, Image>,
    /// ConfigMaps given by the test, by (namespace, name), for a cluster without them.
    config_maps: BTreeMap<(String, String), BTreeMap<String, String>>,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet")
            .field("images", &self.images.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// One init container's run.
#[derive(Debug, Clone)]
pub struct ContainerRun {
    /// The container's name.
    pub name: String,
    /// Why it was not started (unknown image, runAsNonRoot as root, an earlier init
    /// container failed); `None` when it ran.
    pub not_run: Option<String>,
    /// Its exit code (`None` when it did not run or was killed by a signal).
    pub code: Option<i32>,
    /// What it wrote to stdout.
    pub stdout: String,
    /// What it wrote to stderr.
    pub stderr: String,
}

impl ContainerRun {
    /// Whether it ran and exited 0.
    #[must_use]
    pub fn succeeded(&self) -> bool {
        self.not_run.is_none() && self.code == Some(0)
    }
}

impl std::fmt::Display for ContainerRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.not_run {
            Some(why) => write!(f, "init container {}: not run: {why}", self.name),
            None => write!(
                f,
                "init container {}: exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
                self.name, self.code, self.stdout, self.stderr
            ),
        }
    }
}

/// A file an app container would see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenFile {
    /// Its content.
    pub bytes: Vec<u8>,
    /// Its permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
}

impl SeenFile {
    /// The content as UTF-8 (lossy), for assertions on text.
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// What one app container would see.
#[derive(Debug, Clone, Default)]
pub struct ContainerView {
    /// Its user and group when the pod spec says (container or pod `securityContext`); an
    /// app image's own `USER` is not known here.
    pub user: Option<(u32, u32)>,
    /// Its supplementary groups (the pod's `supplementalGroups` and `fsGroup`).
    pub groups: Vec<u32>,
    /// Every regular file under each of its volume mounts, by absolute path inside the
    /// container (the atomic writer's `..` entries left out), symlinks followed.
    pub files: BTreeMap<String, SeenFile>,
}

impl ContainerView {
    /// The file at `path`.
    ///
    /// # Panics
    /// When there is none, listing the files there are.
    #[must_use]
    pub fn file(&self, path: &str) -> &SeenFile {
        self.files.get(path).unwrap_or_else(|| {
            panic!(
                "no {path} in the container; it sees {:?}",
                self.files.keys().collect::<Vec<_>>()
            )
        })
    }

    /// Whether the container's user may read the file at `path` by its mode bits (owner,
    /// else group or a supplementary group, else other); `None` when the user is unknown or
    /// there is no such file. Root reads everything.
    #[must_use]
    pub fn can_read(&self, path: &str) -> Option<bool> {
        let (uid, gid) = self.user?;
        let f = self.files.get(path)?;
        Some(if uid == 0 {
            true
        } else if f.uid == uid {
            f.mode & 0o400 != 0
        } else if f.gid == gid || self.groups.contains(&f.gid) {
            f.mode & 0o040 != 0
        } else {
            f.mode & 0o004 != 0
        })
    }
}

/// The outcome of [`Kubelet::run_pod`]. Dropping it removes the volumes and roots.
#[derive(Debug)]
pub struct PodRun {
    /// The init containers, in the order the pod lists them.
    pub init: Vec<ContainerRun>,
    /// What each app container would see, by container name.
    pub apps: BTreeMap<String, ContainerView>,
    _disk: tempfile::TempDir,
    _memory: tempfile::TempDir,
}

impl PodRun {
    /// The init container `name`.
    ///
    /// # Panics
    /// When the pod has none of that name.
    #[must_use]
    pub fn init_container(&self, name: &str) -> &ContainerRun {
        self.init
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no init container {name} in the pod"))
    }

    /// The app container `name`.
    ///
    /// # Panics
    /// When the pod has none of that name.
    #[must_use]
    pub fn app(&self, name: &str) -> &ContainerView {
        self.apps
            .get(name)
            .unwrap_or_else(|| panic!("no container {name} in the pod"))
    }
}

/// A volume on the host.
struct HostVolume {
    path: PathBuf,
}

impl Kubelet {
    /// A kubelet that talks to the cluster with `client` (for tokens, Secrets, ConfigMaps and
    /// stored pods) and knows no image yet.
    #[must_use]
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            images: BTreeMap::new(),
            config_maps: BTreeMap::new(),
        }
    }

    /// Gives the ConfigMap `namespace/name` holding `data`, used instead of asking the API:
    /// for a cluster that serves no ConfigMaps (the stand-in), e.g. the `kube-root-ca.crt`
    /// every namespace of a real cluster has and every pod's `kube-api-access-*` volume reads.
    #[must_use]
    pub fn config_map(mut self, namespace: &str, name: &str, data: &[(&str, &str)]) -> Self {
        self.config_maps.insert(
            (namespace.to_owned(), name.to_owned()),
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        self
    }

    /// Teaches it `image`, under the reference pods name it by (`image:` of a container).
    #[must_use]
    pub fn image(mut self, reference: impl Into<String>, image: Image) -> Self {
        self.images.insert(reference.into(), image);
        self
    }

    /// Fetches the stored pod `namespace/name` and runs it ([`Self::run_pod`]).
    ///
    /// # Errors
    /// When the pod cannot be fetched, or as [`Self::run_pod`].
    pub async fn run(&self, namespace: &str, name: &str) -> anyhow::Result<PodRun> {
        let pod = Api::<Pod>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .with_context(|| format!("getting pod {namespace}/{name}"))?;
        self.run_pod(&pod).await
    }

    /// Materialises `pod`'s volumes, runs its init containers and reports what its app
    /// containers would see.
    ///
    /// # Errors
    /// When a volume cannot be made (an unsupported kind, a Secret or token the API refuses),
    /// or a container asks for something not modelled (see the module documentation). A
    /// container that runs and fails is not an error: see [`PodRun::init`].
    pub async fn run_pod(&self, pod: &Pod) -> anyhow::Result<PodRun> {
        let name = pod
            .metadata
            .name
            .as_deref()
            .context("the pod has no name")?;
        let namespace = pod
            .metadata
            .namespace
            .as_deref()
            .context("the pod has no namespace")?;
        let spec = pod.spec.as_ref().context("the pod has no spec")?;
        let disk = tempfile::Builder::new()
            .prefix(&format!("keyturn-kubelet-{name}-"))
            .tempdir()?;
        let memory = tempfile::Builder::new()
            .prefix(&format!("keyturn-kubelet-{name}-"))
            .tempdir_in("/dev/shm")?;
        for d in [disk.path(), memory.path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        }
        let pod_sc = spec.security_context.clone().unwrap_or_default();
        let fs_group = pod_sc.fs_group.map(id).transpose()?;
        let fs_user = fs_user(pod)?;
        let mut volumes = BTreeMap::new();
        for v in spec.volumes.iter().flatten() {
            let hv = self
                .volume(
                    pod,
                    namespace,
                    v,
                    disk.path(),
                    memory.path(),
                    fs_user,
                    fs_group,
                )
                .await
                .with_context(|| format!("volume {}", v.name))?;
            volumes.insert(v.name.clone(), hv);
        }

        let mut init = Vec::new();
        let mut failed: Option<String> = None;
        for c in spec.init_containers.iter().flatten() {
            if let Some(first) = &failed {
                init.push(not_run(
                    c,
                    format!("init container {first} did not succeed"),
                ));
                continue;
            }
            let run = self
                .run_container(pod, &pod_sc, c, &volumes, disk.path())
                .await
                .with_context(|| format!("init container {}", c.name))?;
            if run.not_run.is_none() && !run.succeeded() {
                failed = Some(c.name.clone());
            }
            init.push(run);
        }

        let mut apps = BTreeMap::new();
        for c in &spec.containers {
            let view =
                app_view(&pod_sc, c, &volumes).with_context(|| format!("container {}", c.name))?;
            apps.insert(c.name.clone(), view);
        }
        Ok(PodRun {
            init,
            apps,
            _disk: disk,
            _memory: memory,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn volume(
        &self,
        pod: &Pod,
        namespace: &str,
        v: &Volume,
        disk: &Path,
        memory: &Path,
        fs_user: Option<u32>,
        fs_group: Option<u32>,
    ) -> anyhow::Result<HostVolume> {
        let on = |base: &Path| base.join("volumes").join(&v.name);
        if let Some(e) = &v.empty_dir {
            let memory_backed = e.medium.as_deref() == Some("Memory");
            let path = on(if memory_backed { memory } else { disk });
            std::fs::create_dir_all(&path)?;
            let mut mode = 0o777;
            if let Some(g) = fs_group {
                std::os::unix::fs::chown(&path, None, Some(g))?;
                mode |= 0o2000;
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            return Ok(HostVolume { path });
        }
        let mut payload = Payload::new();
        let path;
        if let Some(d) = &v.downward_api {
            path = on(memory);
            let mode = d.default_mode.map(mode_bits).transpose()?;
            downward_items(pod, d.items.iter().flatten(), mode, &mut payload)?;
        } else if let Some(s) = &v.secret {
            path = on(memory);
            let mode = s.default_mode.map(mode_bits).transpose()?;
            let name = s
                .secret_name
                .as_deref()
                .context("secret volume without secretName")?;
            self.secret_items(
                namespace,
                name,
                s.items.as_deref(),
                s.optional,
                mode,
                &mut payload,
            )
            .await?;
        } else if let Some(c) = &v.config_map {
            path = on(disk);
            let mode = c.default_mode.map(mode_bits).transpose()?;
            self.config_map_items(
                namespace,
                &c.name,
                c.items.as_deref(),
                c.optional,
                mode,
                &mut payload,
            )
            .await?;
        } else if let Some(p) = &v.projected {
            path = on(memory);
            let default = p.default_mode.map(mode_bits).transpose()?;
            for source in p.sources.iter().flatten() {
                if let Some(t) = &source.service_account_token {
                    let token = self
                        .token(pod, namespace, t.audience.as_deref(), t.expiration_seconds)
                        .await?;
                    // The kubelet's projected volume: 0600 as soon as it knows an owner, the
                    // pod's common user or its fsGroup; else the volume's mode.
                    let mode = if fs_user.is_some() || fs_group.is_some() {
                        0o600
                    } else {
                        default.unwrap_or(DEFAULT_MODE)
                    };
                    payload.insert(t.path.clone(), (token.into_bytes(), mode, fs_user));
                } else if let Some(d) = &source.downward_api {
                    downward_items(pod, d.items.iter().flatten(), default, &mut payload)?;
                } else if let Some(s) = &source.secret {
                    self.secret_items(
                        namespace,
                        &s.name,
                        s.items.as_deref(),
                        s.optional,
                        default,
                        &mut payload,
                    )
                    .await?;
                } else if let Some(c) = &source.config_map {
                    self.config_map_items(
                        namespace,
                        &c.name,
                        c.items.as_deref(),
                        c.optional,
                        default,
                        &mut payload,
                    )
                    .await?;
                } else {
                    bail!(
                        "a projected source other than serviceAccountToken, downwardAPI, secret or configMap"
                    );
                }
            }
        } else {
            bail!(
                "not a volume type this kubelet makes (emptyDir, downwardAPI, secret, configMap, projected)"
            );
        }
        atomic_write(&path, &payload)?;
        if let Some(g) = fs_group {
            set_volume_ownership(&path, g)?;
        }
        Ok(HostVolume { path })
    }

    /// A token for the pod's service account from the TokenRequest API, bound to the pod.
    async fn token(
        &self,
        pod: &Pod,
        namespace: &str,
        audience: Option<&str>,
        expiration: Option<i64>,
    ) -> anyhow::Result<String> {
        let spec = pod.spec.as_ref().context("no spec")?;
        let account = spec
            .service_account_name
            .as_deref()
            .or(spec.service_account.as_deref())
            .filter(|a| !a.is_empty())
            .unwrap_or("default");
        let audiences: Vec<&str> = audience.filter(|a| !a.is_empty()).into_iter().collect();
        let mut spec = json!({
            "audiences": audiences,
            "expirationSeconds": expiration.unwrap_or(3600),
        });
        // A pod the API never stored has no uid, and a real API server refuses to bind a
        // token to a pod it does not have: such a pod's token is bound to nothing.
        if let Some(uid) = &pod.metadata.uid {
            spec["boundObjectRef"] = json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod.metadata.name,
                "uid": uid,
            });
        }
        let request: TokenRequest = serde_json::from_value(json!({ "spec": spec }))?;
        let issued = Api::<ServiceAccount>::namespaced(self.client.clone(), namespace)
            .create_token_request(account, &PostParams::default(), &request)
            .await
            .with_context(|| format!("TokenRequest for service account {namespace}/{account}"))?;
        issued
            .status
            .map(|s| s.token)
            .context("TokenRequest answered without a token")
    }

    async fn secret_items(
        &self,
        namespace: &str,
        name: &str,
        items: Option<&[KeyToPath]>,
        optional: Option<bool>,
        mode: Option<u32>,
        payload: &mut Payload,
    ) -> anyhow::Result<()> {
        let secret = Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .with_context(|| format!("getting Secret {namespace}/{name}"))?;
        let Some(secret) = secret else {
            if optional == Some(true) {
                return Ok(());
            }
            bail!("Secret {namespace}/{name} not found");
        };
        let data: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        key_items(&data, items, mode, payload).with_context(|| format!("Secret {name}"))
    }

    async fn config_map_items(
        &self,
        namespace: &str,
        name: &str,
        items: Option<&[KeyToPath]>,
        optional: Option<bool>,
        mode: Option<u32>,
        payload: &mut Payload,
    ) -> anyhow::Result<()> {
        let given = self
            .config_maps
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|data| ConfigMap {
                data: Some(data.clone()),
                ..ConfigMap::default()
            });
        let cm = match given {
            Some(cm) => Some(cm),
            None => Api::<ConfigMap>::namespaced(self.client.clone(), namespace)
                .get_opt(name)
                .await
                .with_context(|| format!("getting ConfigMap {namespace}/{name}"))?,
        };
        let Some(cm) = cm else {
            if optional == Some(true) {
                return Ok(());
            }
            bail!("ConfigMap {namespace}/{name} not found");
        };
        let mut data: BTreeMap<String, Vec<u8>> = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        data.extend(
            cm.binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        key_items(&data, items, mode, payload).with_context(|| format!("ConfigMap {name}"))
    }

    async fn run_container(
        &self,
        pod: &Pod,
        pod_sc: &PodSecurityContext,
        c: &Container,
        volumes: &BTreeMap<String, HostVolume>,
        disk: &Path,
    ) -> anyhow::Result<ContainerRun> {
        let reference = c.image.as_deref().unwrap_or("");
        let Some(image) = self.images.get(reference) else {
            return Ok(not_run(
                c,
                format!("image {reference:?} is not known to the test kubelet"),
            ));
        };
        if c.working_dir.as_deref().is_some_and(|w| w != "/") {
            bail!("workingDir is not modelled");
        }
        let sc = c.security_context.clone().unwrap_or_default();
        let uid = match sc.run_as_user.or(pod_sc.run_as_user) {
            Some(u) => id(u)?,
            None => image.user.map_or(0, |(u, _)| u),
        };
        let gid = match sc.run_as_group.or(pod_sc.run_as_group) {
            Some(g) => id(g)?,
            None => image.user.and_then(|(_, g)| g).unwrap_or(0),
        };
        if sc.run_as_non_root.or(pod_sc.run_as_non_root) == Some(true) && uid == 0 {
            // The kubelet's CreateContainerConfigError.
            return Ok(not_run(
                c,
                "container has runAsNonRoot and image will run as root".to_owned(),
            ));
        }
        let mut groups = vec![gid];
        for g in pod_sc
            .supplemental_groups
            .iter()
            .flatten()
            .copied()
            .chain(pod_sc.fs_group)
        {
            let g = id(g)?;
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        let env = container_env(pod, c)?;
        let argv = command_line(c, image, &env)?;

        // The container's root: the image's one binary, device nodes' mount points, and a
        // directory for every mount point.
        let root = disk.join("roots").join(&c.name);
        std::fs::create_dir_all(&root)?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        let entry = inside(&root, &image.entrypoint[0])?;
        std::fs::create_dir_all(entry.parent().context("entrypoint has no parent")?)?;
        std::fs::copy(&image.binary, &entry)
            .with_context(|| format!("copying {}", image.binary.display()))?;
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o755))?;
        std::fs::create_dir_all(root.join("dev"))?;
        let mut script = String::from("set -e\n");
        let _ = writeln!(script, "/usr/bin/mount --bind {0} {0}", sh(&root));
        if sc.read_only_root_filesystem == Some(true) {
            let _ = writeln!(script, "/usr/bin/mount -o remount,bind,ro {}", sh(&root));
        }
        for dev in ["null", "zero", "random", "urandom"] {
            let target = root.join("dev").join(dev);
            std::fs::write(&target, b"")?;
            let _ = writeln!(script, "/usr/bin/mount --bind /dev/{dev} {}", sh(&target));
        }
        // Shallow mounts first, as containerd and CRI-O order them, so a nested mountPath
        // lands on top of its parent's volume rather than under it.
        let mut mounts: Vec<_> = c.volume_mounts.iter().flatten().collect();
        mounts.sort_by_key(|m| m.mount_path.trim_end_matches('/').matches('/').count());
        for m in mounts {
            let v = volumes
                .get(&m.name)
                .with_context(|| format!("volumeMount {} names no volume of the pod", m.name))?;
            let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => inside(&v.path, sub)?,
                None => v.path.clone(),
            };
            let target = inside(&root, &m.mount_path)?;
            if source.is_dir() {
                std::fs::create_dir_all(&target)?;
            } else {
                std::fs::create_dir_all(target.parent().context("mountPath /")?)?;
                std::fs::write(&target, b"")?;
            }
            let _ = writeln!(
                script,
                "/usr/bin/mount --bind {} {}",
                sh(&source),
                sh(&target)
            );
            if m.read_only == Some(true) {
                let _ = writeln!(script, "/usr/bin/mount -o remount,bind,ro {}", sh(&target));
            }
        }
        // Only the container's variables reach the program: `env -i` clears what the shell
        // exports (PWD) before setpriv and chroot, which pass the environment on unchanged.
        script.push_str("exec /usr/bin/env -i --");
        for (k, v) in &env {
            let _ = write!(script, " {}", sh(format!("{k}={v}")));
        }
        script.push_str(" /usr/bin/setpriv --no-new-privs -- /usr/sbin/chroot");
        // /proc/self belongs to the process's effective user.
        let root_user = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if root_user {
            let list: Vec<String> = groups.iter().map(u32::to_string).collect();
            let _ = write!(
                script,
                " --userspec={uid}:{gid} --groups={}",
                list.join(",")
            );
        }
        let _ = write!(script, " {}", sh(&root));
        for a in &argv {
            let _ = write!(script, " {}", sh(a));
        }
        script.push('\n');

        let mut cmd = tokio::process::Command::new("/usr/bin/unshare");
        if root_user {
            cmd.args(["--mount", "--propagation", "private"]);
        } else {
            // Not root: a user namespace mapping us to root makes mounts and chroot possible,
            // but the container then runs as that mapped root, not as its runAsUser.
            cmd.args([
                "--user",
                "--map-root-user",
                "--mount",
                "--propagation",
                "private",
            ]);
        }
        let out = cmd
            .arg("--")
            .arg("/bin/sh")
            .arg("-c")
            .arg(&script)
            .env_clear()
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .context("running unshare")?;
        Ok(ContainerRun {
            name: c.name.clone(),
            not_run: None,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

fn not_run(c: &Container, why: String) -> ContainerRun {
    ContainerRun {
        name: c.name.clone(),
        not_run: Some(why),
        code: None,
        stdout: String::new(),
        stderr: String::new(),
    }
}

/// A uid, gid or group from the spec's `i64`.
fn id(v: i64) -> anyhow::Result<u32> {
    u32::try_from(v).with_context(|| format!("{v} is not a valid user or group id"))
}

fn mode_bits(m: i32) -> anyhow::Result<u32> {
    u32::try_from(m)
        .ok()
        .filter(|m| *m <= 0o777)
        .with_context(|| format!("mode {m} is not between 0 and 0777"))
}

/// The kubelet's `FsUser` for a pod: the one `runAsUser` every container (init and app) runs
/// as, from its own `securityContext` or the pod's; `None` when any container names none or
/// they differ. A projected token is then owned by that user, mode 0600.
///
/// # Errors
/// When a `runAsUser` is out of range.
pub fn fs_user(pod: &Pod) -> anyhow::Result<Option<u32>> {
    let Some(spec) = &pod.spec else {
        return Ok(None);
    };
    let pod_user = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    let mut common = None;
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        let Some(u) = c
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user)
            .or(pod_user)
        else {
            return Ok(None);
        };
        let u = id(u)?;
        match common {
            None => common = Some(u),
            Some(x) if x != u => return Ok(None),
            Some(_) => {}
        }
    }
    Ok(common)
}

/// A volume's files before they are written: relative path → (bytes, mode, owner).
type Payload = BTreeMap<String, (Vec<u8>, u32, Option<u32>)>;

fn key_items(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    mode: Option<u32>,
    payload: &mut Payload,
) -> anyhow::Result<()> {
    let default = mode.unwrap_or(DEFAULT_MODE);
    match items {
        None => {
            for (k, v) in data {
                payload.insert(k.clone(), (v.clone(), default, None));
            }
        }
        Some(items) => {
            for item in items {
                let v = data
                    .get(&item.key)
                    .with_context(|| format!("no key {:?}", item.key))?;
                let m = item.mode.map(mode_bits).transpose()?.unwrap_or(default);
                payload.insert(item.path.clone(), (v.clone(), m, None));
            }
        }
    }
    Ok(())
}

fn downward_items<'a>(
    pod: &Pod,
    items: impl Iterator<Item = &'a DownwardAPIVolumeFile>,
    mode: Option<u32>,
    payload: &mut Payload,
) -> anyhow::Result<()> {
    for item in items {
        let f = item.field_ref.as_ref().with_context(|| {
            format!("downwardAPI item {}: only fieldRef is modelled", item.path)
        })?;
        let value = field_value(pod, &f.field_path, true)?;
        let m = item
            .mode
            .map(mode_bits)
            .transpose()?
            .unwrap_or(mode.unwrap_or(DEFAULT_MODE));
        payload.insert(item.path.clone(), (value.into_bytes(), m, None));
    }
    Ok(())
}

/// The annotations a kubelet shows a pod: the stored ones plus the two it adds when it
/// admits the pod (`kubernetes.io/config.seen`, `kubernetes.io/config.source`).
fn kubelet_annotations(pod: &Pod) -> BTreeMap<String, String> {
    let mut a = pod.metadata.annotations.clone().unwrap_or_default();
    a.insert(
        "kubernetes.io/config.seen".into(),
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
    );
    a.insert("kubernetes.io/config.source".into(), "api".into());
    a
}

/// A downward-API field: in a volume (`volume`), `metadata.annotations` and `metadata.labels`
/// as whole maps too; in env, only single fields.
fn field_value(pod: &Pod, path: &str, volume: bool) -> anyhow::Result<String> {
    let m = &pod.metadata;
    let subscript = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
    };
    let labels = m.labels.clone().unwrap_or_default();
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "metadata.annotations" if volume => format_map(&kubelet_annotations(pod)),
        "metadata.labels" if volume => format_map(&labels),
        _ => {
            if let Some(k) = subscript("metadata.annotations") {
                kubelet_annotations(pod).get(k).cloned().unwrap_or_default()
            } else if let Some(k) = subscript("metadata.labels") {
                labels.get(k).cloned().unwrap_or_default()
            } else {
                bail!("fieldRef {path} is not modelled");
            }
        }
    })
}

/// The kubelet's downward-API format for a map (`fieldpath.FormatMap`): `key="value"` lines
/// in key order (bytewise, as Go sorts strings), each value quoted as Go's `%q`, joined by
/// newlines with none at the end.
#[must_use]
pub fn format_map(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Go's `%q` (`strconv.Quote`) for a string: `"` and `\` escaped; printable characters
/// kept; `\a \b \f \n \r \t \v`; other ASCII controls and DEL as `\xNN`; other characters Go
/// does not print as `\uNNNN` or `\UNNNNNNNN`. Go's "printable" is Unicode's letters,
/// marks, numbers, punctuation, symbols and the ASCII space; the characters outside it
/// recognised here are the controls, the other space separators, the line and paragraph
/// separators, the format characters, private use and noncharacters (code points Unicode
/// has not assigned are kept as they are, where Go would escape them).
#[must_use]
pub fn go_quote(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\x07' => o.push_str("\\a"),
            '\x08' => o.push_str("\\b"),
            '\x0c' => o.push_str("\\f"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            '\x0b' => o.push_str("\\v"),
            c if c < ' ' || c == '\x7f' => {
                let _ = write!(o, "\\x{:02x}", u32::from(c));
            }
            c if !go_printable(c) => {
                let n = u32::from(c);
                if n < 0x10000 {
                    let _ = write!(o, "\\u{n:04x}");
                } else {
                    let _ = write!(o, "\\U{n:08x}");
                }
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Go's `unicode.IsPrint`, but for unassigned code points (see [`go_quote`]).
fn go_printable(c: char) -> bool {
    let n = u32::from(c);
    let not = c.is_control()
        // Space separators other than ' ', and the line and paragraph separators.
        || matches!(n, 0xa0 | 0x1680 | 0x2000..=0x200a | 0x2028 | 0x2029 | 0x202f | 0x205f | 0x3000)
        // Format characters (Cf).
        || matches!(
            n,
            0xad | 0x600..=0x605
                | 0x61c
                | 0x6dd
                | 0x70f
                | 0x890..=0x891
                | 0x8e2
                | 0x180e
                | 0x200b..=0x200f
                | 0x202a..=0x202e
                | 0x2060..=0x2064
                | 0x2066..=0x206f
                | 0xfeff
                | 0xfff9..=0xfffb
                | 0x110bd
                | 0x110cd
                | 0x13430..=0x1343f
                | 0x1bca0..=0x1bca3
                | 0x1d173..=0x1d17a
                | 0xe0001
                | 0xe0020..=0xe007f
        )
        // Private use, and the noncharacters.
        || matches!(n, 0xe000..=0xf8ff | 0xf0000..=0x10ffff | 0xfdd0..=0xfdef)
        || n & 0xfffe == 0xfffe;
    !not
}

/// Writes `payload` into `dir` as the kubelet's atomic writer does: the files in a
/// `..TIMESTAMP` directory, `..data` a symlink to it, and each top-level name a symlink
/// `NAME -> ..data/NAME`.
fn atomic_write(dir: &Path, payload: &Payload) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
    let stamp = format!(
        "..{}.{}",
        chrono::Utc::now().format("%Y_%m_%d_%H_%M_%S"),
        rand::random::<u32>()
    );
    let ts = dir.join(&stamp);
    std::fs::create_dir(&ts)?;
    std::fs::set_permissions(&ts, std::fs::Permissions::from_mode(0o755))?;
    let mut top = BTreeSet::new();
    for (rel, (bytes, mode, owner)) in payload {
        let target = inside(&ts, rel)?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, bytes)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode))?;
        if let Some(u) = owner {
            std::os::unix::fs::chown(&target, Some(*u), None)?;
        }
        if let Some(Component::Normal(first)) = Path::new(rel).components().next() {
            top.insert(first.to_owned());
        }
    }
    std::os::unix::fs::symlink(&stamp, dir.join("..data"))?;
    for name in top {
        std::os::unix::fs::symlink(Path::new("..data").join(&name), dir.join(&name))?;
    }
    Ok(())
}

/// The kubelet's `SetVolumeOwnership` for a read-only volume with an `fsGroup`: everything's
/// group becomes the fsGroup, files gain owner and group read (0440), directories also
/// search (0110) and set-group-ID.
fn set_volume_ownership(dir: &Path, fs_group: u32) -> anyhow::Result<()> {
    for entry in walk(dir)? {
        let meta = std::fs::symlink_metadata(&entry)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        std::os::unix::fs::chown(&entry, None, Some(fs_group))?;
        let mut mode = (meta.mode() & 0o7777) | 0o440;
        if meta.is_dir() {
            mode |= 0o110 | 0o2000;
        }
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// `dir` and everything under it (symlinks not followed).
fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        i += 1;
        if std::fs::symlink_metadata(&p)?.is_dir() {
            for e in std::fs::read_dir(&p)? {
                out.push(e?.path());
            }
        }
    }
    Ok(out)
}

/// `rel` (absolute inside the container, or relative) under `base`, refusing `..`.
fn inside(base: &Path, rel: &str) -> anyhow::Result<PathBuf> {
    let mut p = base.to_path_buf();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(n) => p.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => bail!("{rel:?} leaves its directory"),
        }
    }
    Ok(p)
}

/// The container's environment, in order, as the kubelet builds it: `value` with `$(VAR)`
/// expanded from the variables before it, `valueFrom.fieldRef` from the pod.
fn container_env(pod: &Pod, c: &Container) -> anyhow::Result<Vec<(String, String)>> {
    let mut env: Vec<(String, String)> = Vec::new();
    if c.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        bail!("envFrom is not modelled");
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(from) = &e.value_from {
            let f = from
                .field_ref
                .as_ref()
                .with_context(|| format!("env {}: only valueFrom.fieldRef is modelled", e.name))?;
            field_value(pod, &f.field_path, false).with_context(|| format!("env {}", e.name))?
        } else {
            expand(e.value.as_deref().unwrap_or(""), &env)
        };
        env.retain(|(k, _)| *k != e.name);
        env.push((e.name.clone(), value));
    }
    Ok(env)
}

/// The argv the runtime starts: `command` (else the image's entrypoint) and `args` (else,
/// without a `command`, the image's cmd), with `$(VAR)` expanded from the container's env.
fn command_line(
    c: &Container,
    image: &Image,
    env: &[(String, String)],
) -> anyhow::Result<Vec<String>> {
    let mut argv: Vec<String> = match &c.command {
        Some(cmd) if !cmd.is_empty() => cmd.iter().map(|a| expand(a, env)).collect(),
        _ => image.entrypoint.clone(),
    };
    match &c.args {
        Some(args) if !args.is_empty() => argv.extend(args.iter().map(|a| expand(a, env))),
        _ if c.command.as_ref().is_none_or(Vec::is_empty) => argv.extend(image.cmd.iter().cloned()),
        _ => {}
    }
    if argv.is_empty() || !argv[0].starts_with('/') {
        bail!(
            "the command {:?} is not an absolute path in the image",
            argv.first()
        );
    }
    Ok(argv)
}

/// The kubelet's `$(VAR)` expansion: a defined variable's value, `$$` a literal `$`, and
/// anything else (an undefined `$(VAR)`, a lone `$`) left as written.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(')
            && let Some(end) = r.find(')')
        {
            let name = &r[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `s` single-quoted for `sh`.
fn sh(s: impl AsRef<std::ffi::OsStr>) -> String {
    let s = s.as_ref().to_string_lossy();
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What app container `c` would see under its volume mounts.
fn app_view(
    pod_sc: &PodSecurityContext,
    c: &Container,
    volumes: &BTreeMap<String, HostVolume>,
) -> anyhow::Result<ContainerView> {
    let sc = c.security_context.clone().unwrap_or_default();
    let user = match (
        sc.run_as_user.or(pod_sc.run_as_user),
        sc.run_as_group.or(pod_sc.run_as_group),
    ) {
        (Some(u), g) => Some((id(u)?, g.map(id).transpose()?.unwrap_or(0))),
        (None, _) => None,
    };
    let mut groups = Vec::new();
    for g in pod_sc
        .supplemental_groups
        .iter()
        .flatten()
        .copied()
        .chain(pod_sc.fs_group)
    {
        groups.push(id(g)?);
    }
    let mut files = BTreeMap::new();
    for m in c.volume_mounts.iter().flatten() {
        let v = volumes
            .get(&m.name)
            .with_context(|| format!("volumeMount {} names no volume of the pod", m.name))?;
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => inside(&v.path, sub)?,
            None => v.path.clone(),
        };
        let mount = m.mount_path.trim_end_matches('/');
        seen_files(&source, mount, &mut files)?;
    }
    Ok(ContainerView {
        user,
        groups,
        files,
    })
}

/// The regular files under `host` (symlinks followed, the atomic writer's `..` entries
/// skipped) into `files`, keyed by `at`/relative path.
fn seen_files(host: &Path, at: &str, files: &mut BTreeMap<String, SeenFile>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(host).with_context(|| format!("stat {}", host.display()))?;
    if meta.is_file() {
        files.insert(
            at.to_owned(),
            SeenFile {
                bytes: std::fs::read(host)?,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
            },
        );
    } else if meta.is_dir() {
        for e in std::fs::read_dir(host)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("..") {
                continue;
            }
            seen_files(&e.path(), &format!("{at}/{name}"), files)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_quote_escapes_as_go_does() {
        assert_eq!(go_quote("a\"b\\c\nd\te"), r#""a\"b\\c\nd\te""#);
        assert_eq!(go_quote("\x01\x7f"), r#""\x01\x7f""#);
        assert_eq!(go_quote("é€😀"), "\"é€😀\"");
        assert_eq!(
            go_quote("\u{a0}\u{200b}\u{feff}"),
            r#""\u00a0\u200b\ufeff""#
        );
        assert_eq!(go_quote("\u{f0000}"), r#""\U000f0000""#);
    }

    #[test]
    fn format_map_sorts_keys_and_ends_without_a_newline() {
        let m: BTreeMap<String, String> = [("b", "2"), ("a", "x\ny")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(format_map(&m), "a=\"x\\ny\"\nb=\"2\"");
    }

    #[test]
    fn expansion_follows_the_kubelets_rules() {
        let env = vec![("A".to_owned(), "1".to_owned())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$x", &env), "1-$(B)-$(A)-$x");
    }

    #[test]
    fn the_keyturn_init_containerfile_describes_its_image() {
        let image = Image::from_containerfile(
            &crate::tools::repo_root().join("images/keyturn-init.Containerfile"),
            PathBuf::from("/nonexistent"),
        )
        .unwrap();
        assert_eq!(image.entrypoint, ["/keyturn-init"]);
        assert_eq!(image.user, Some((65532, Some(65532))));
    }
}
