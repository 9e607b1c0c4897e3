//! An agent on a host (or in an image) without the system's CA certificates still sends
//! transfers to plain-HTTP peers: it trusts no root then, instead of failing to build its client
//! (`internal error: HTTP client: builder error`, as agents in images without a CA bundle did).
//! A test binary of its own: the certificate locations are process-wide environment variables.

mod support_agent;

use berth::agent::{
    api::{ContainerOwner, EnsureVolumeRequest, IdentityCheck, TransferState, VolumeType},
    identity::Expect,
};
use support_agent::migration::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_to_a_plain_http_peer_needs_no_system_ca_certificates() {
    let empty = tempfile::tempdir().unwrap();
    // SAFETY: set before any thread of this test reads the environment (the runtime's workers
    // do not read it); no other test runs in this binary.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", empty.path().join("none.pem"));
        std::env::set_var("SSL_CERT_DIR", empty.path());
    }
    let source = Host::new("node-1", 165536).await;
    let target = Host::new("node-2", 231072).await;
    let req = EnsureVolumeRequest {
        tenant: "toto".into(),
        host_path: "/data".into(),
        volume_type: VolumeType::Directory,
        owner: Some(ContainerOwner { uid: 1000, gid: 1000 }),
        permissions: Some("0750".into()),
        seed: None,
    };
    let check = IdentityCheck {
        identity: Some(identity()),
        expect: Some(Expect::New),
    };
    source.client.ensure_volume_checked(&req, &check).await.unwrap();
    std::fs::write(source.volume("toto", "/data").join("rows"), b"42\n").unwrap();
    source
        .client
        .start_transfer(&request(&target, "no-ca", 1))
        .await
        .unwrap();
    let done = wait(&source.client, "no-ca").await;
    assert_eq!(done.state, TransferState::Succeeded, "{done:?}");
}
