//! The injection decision for one pod. (Being written.)

/// What the webhook adds to a pod, from its flags.
#[derive(Debug, Clone, Default)]
pub struct InjectConfig {
    /// The keyturn-init image.
    pub init_image: String,
}

/// The webhook's answer for one pod.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Not for keyturn (no inject annotation, already injected, an excluded namespace).
    Skip {
        /// Why, for the debug log.
        reason: &'static str,
    },
    /// Inject: the JSONPatch to return and the warnings to show the user.
    Inject {
        /// RFC 6902 operations on the pod.
        patch: json_patch::Patch,
        /// AdmissionReview `warnings`: annotations keyturn answers differently.
        warnings: Vec<String>,
    },
    /// Refuse the pod: the message names the annotation.
    Deny {
        /// Shown to whoever created the pod.
        message: String,
    },
}

/// Decides for pods.
#[derive(Debug, Clone)]
pub struct Injector {
    /// The settings.
    pub config: InjectConfig,
}

impl Injector {
    /// The decision for `pod` (the AdmissionReview's `object`) created in `namespace`.
    #[must_use]
    pub fn decide(&self, _namespace: &str, _pod: &serde_json::Value) -> Decision {
        todo!("being written")
    }
}
