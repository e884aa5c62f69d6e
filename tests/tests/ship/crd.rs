//! The chart ships the RotationPolicy CustomResourceDefinition as `keyturn crd` prints it:
//! `charts/keyturn/crds/rotationpolicies.yaml` is generated, and this keeps it from drifting
//! from the policy file's types it is generated from.

use keyturn_tests::bins;
use keyturn_tests::tools::repo_root;

#[test]
fn chart_crd_is_what_keyturn_crd_prints() {
    let out = std::process::Command::new(bins::keyturn())
        .arg("crd")
        .output()
        .expect("run keyturn crd");
    assert!(
        out.status.success(),
        "keyturn crd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let file = repo_root().join("charts/keyturn/crds/rotationpolicies.yaml");
    let shipped = std::fs::read_to_string(&file).unwrap();
    assert!(
        shipped == printed,
        "{} differs from `keyturn crd`; regenerate it: keyturn crd > {}",
        file.display(),
        file.display()
    );
    let crd: serde_json::Value = serde_yaml::from_str(&shipped).unwrap();
    assert_eq!(crd["metadata"]["name"], "rotationpolicies.keyturn.dev");
}
