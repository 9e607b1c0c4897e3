//! What a user sees for a bad spec, through the real stack: manifests applied with kubectl 1.37
//! to the real kube-apiserver 1.20, and `berth controller` (with the chart's RBAC) refusing them.
//! 1.20 drops the CRD's CEL rules, so the controller is the authority there; either way the
//! message says what is wrong in words, never as a regular expression (servers that run CEL
//! answer with the same words, see `src/crd/rules/tests.rs`).
mod support;
mod support_helm;

use std::collections::BTreeMap;

use support::{
    admin_client, install_crd, kubectl, namespace,
    stack::{Stack, eventually},
};

/// `kubectl apply -f -` of a YAML manifest; panics unless kubectl accepts it.
fn apply(manifest: &str) -> String {
    use std::io::Write;
    let mut child = kubectl()
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubectl apply refused:\n{manifest}\n{stderr}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every volume's name and the message of its `Ready` condition, as kubectl prints them.
fn ready_messages(ns: &str) -> BTreeMap<String, String> {
    let out = kubectl()
        .args(["get", "slv", "-n", ns, "-o"])
        .arg(r#"jsonpath={range .items[*]}{.metadata.name}{"\t"}{.status.conditions[?(@.type=="Ready")].message}{"\n"}{end}"#)
        .output()
        .expect("run kubectl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, m)| !m.is_empty())
        .map(|(n, m)| (n.to_owned(), m.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_explained_in_words() {
    let client = admin_client().await;
    install_crd(&client).await;
    support_helm::grant_chart_rbac_once(&client).await;
    let ns = namespace(&client, "toto").await;
    let stack = Stack::start(&["node-1"]).await;
    let _controller = stack.controller(&ns, &[]).await;

    let deep = "/a".repeat(33);
    // Not here: an empty hostPath. This 1.20 build stores every "" in a custom resource as null
    // and refuses it as "must be of type string"; the controller's message for it is tested in
    // src/crd/rules/tests.rs.
    // (name, spec lines as a user writes them in YAML, the message the user gets)
    let cases: Vec<(&str, String, String)> = vec![
        ("dotdot", "hostPath: /a/../b".into(), "spec.hostPath: must not contain a '..' component".into()),
        ("relative", "hostPath: a/b".into(), "spec.hostPath: must be an absolute path starting with '/' (got \"a/b\")".into()),
        ("home", "hostPath: ~/x".into(), "spec.hostPath: must be an absolute path starting with '/' (got \"~/x\")".into()),
        ("mode-suffix", "hostPath: /a/b:ro".into(), "spec.hostPath: must not contain ':' (it splits Docker's -v source:target:mode)".into()),
        ("accent", "hostPath: /héllo".into(), "spec.hostPath: may contain only ASCII characters (found 'é')".into()),
        (
            "trailing-space",
            "hostPath: \"/a/b \"".into(),
            "spec.hostPath: has a component that starts or ends with a space (\"b \"): such names are easy to mistake; remove the space".into(),
        ),
        ("deep", format!("hostPath: {deep}"), "spec.hostPath: has 33 components; the limit is 32".into()),
        (
            "unquoted-mode",
            "hostPath: /data\n  permissions: 0755".into(),
            "spec.permissions: is the number 493 (YAML reads an unquoted 0755 as an octal number): write permissions as a quoted string such as \"0755\"".into(),
        ),
        (
            "group-itself",
            format!("hostPath: /data\n  app: /{ns}"),
            format!("spec.app: \"/{ns}\" is the tenant's Marathon group itself, not an app: name an app inside /{ns}/, e.g. /{ns}/web"),
        ),
    ];
    let mut manifest = String::new();
    for (name, spec, _) in &cases {
        let app = if spec.contains("app:") {
            String::new()
        } else {
            format!("\n  app: /{ns}/web")
        };
        manifest.push_str(&format!(
            "---\napiVersion: berth.dev/v1alpha1\nkind: StatefulLocalVolume\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  containerPath: /data{app}\n  {spec}\n"
        ));
    }
    // The 1.20 apiserver stores them all (no pattern refuses them with a regular expression).
    let out = apply(&manifest);
    assert_eq!(out.matches(" created").count(), cases.len(), "{out}");

    let messages = eventually(60, "every volume to have a Ready message", || async {
        let m = ready_messages(&ns);
        (m.len() == cases.len()).then_some(m)
    })
    .await;
    for (name, _, expect) in &cases {
        let got = &messages[*name];
        assert_eq!(got, expect, "volume {name}");
        assert!(!got.contains("should match") && !got.contains("^("), "{got}");
    }
    assert!(
        stack.sim.write_requests().is_empty(),
        "nothing was written to Marathon"
    );
}
