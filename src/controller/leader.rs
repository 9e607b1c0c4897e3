//! Leader election on a coordination.k8s.io Lease, so that standby replicas can wait.

use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::info;

use super::StartError;

/// Waits until this replica holds the Lease (or `stop` is set). Returns a future that resolves
/// when the lease is lost, so the controller can stop instead of running beside a new leader.
pub async fn acquire(
    client: kube::Client,
    name: &str,
    namespace: &str,
    identity: &str,
    mut stop: watch::Receiver<bool>,
) -> Result<impl std::future::Future<Output = ()> + Send + Sync + 'static, StartError> {
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .map_err(|e| StartError::Leader(e.to_string()))?;
    let (mut leading, task) = manager.watch().await;
    info!(lease = %format!("{namespace}/{name}"), %identity, "waiting for the leader lease");
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leading.changed() => {
                if changed.is_err() {
                    return Err(StartError::Leader("the lease manager stopped".into()));
                }
            }
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    info!(%identity, "holding the leader lease");
    Ok(async move {
        let _task = task;
        let _ = leading.wait_for(|l| !*l).await;
    })
}
