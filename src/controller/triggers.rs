//! Marathon's event stream as reconcile triggers: when an app changes, a deployment ends or a
//! task moves, the volumes of that app are reconciled at once instead of at the next resync.
//!
//! Events are gathered for a short window and each app is triggered once per window. A task that
//! fails and relaunches in a loop sends a steady stream of events; passed on one by one, they
//! would keep pushing back the controller's debounce and starve the very reconcile that reports
//! the failure.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;
use tracing::warn;

use super::cache::VolumeCache;
use crate::{
    crd::StatefulLocalVolume,
    marathon::{MarathonClient, MarathonEvent},
};

/// Event types that can change what berth sees in an app.
pub const EVENT_TYPES: &[&str] = &[
    "api_post_event",
    "deployment_success",
    "deployment_failed",
    "status_update_event",
    "instance_changed_event",
];

/// What an event asks for: the volumes of some apps, or (after a reconnect, when events may
/// have been missed) all volumes.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    Apps(Vec<String>),
    Everything,
}

fn wanted(event: &MarathonEvent) -> Wanted {
    match event {
        MarathonEvent::StreamAttached => Wanted::Everything,
        MarathonEvent::DeploymentSuccess(d) | MarathonEvent::DeploymentFailed(d) => {
            Wanted::Apps(d.affected_apps())
        }
        other => Wanted::Apps(other.app_id().map(str::to_owned).into_iter().collect()),
    }
}

/// Reconcile requests for the volumes of apps Marathon reports changes for, at most one per app
/// per `window`.
pub fn marathon_events(
    marathon: MarathonClient,
    volumes: Arc<VolumeCache>,
    window: Duration,
) -> impl Stream<Item = ObjectRef<StatefulLocalVolume>> + Send + 'static {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(read_events(marathon, tx));
    futures::stream::unfold((rx, volumes), move |(mut rx, volumes)| async move {
        let first = rx.recv().await?;
        let mut apps = BTreeSet::new();
        let mut everything = false;
        let mut take = |w: Wanted| match w {
            Wanted::Everything => everything = true,
            Wanted::Apps(a) => apps.extend(a),
        };
        take(first);
        let deadline = tokio::time::Instant::now() + window;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                next = rx.recv() => match next {
                    Some(w) => take(w),
                    None => break,
                },
            }
        }
        let objs = if everything {
            volumes.all()
        } else {
            apps.iter().flat_map(|app| volumes.of_app(app)).collect()
        };
        let refs: Vec<ObjectRef<StatefulLocalVolume>> =
            objs.iter().map(|v| ObjectRef::from_obj(v.as_ref())).collect();
        Some((futures::stream::iter(refs), (rx, volumes)))
    })
    .flatten()
}

async fn read_events(marathon: MarathonClient, tx: mpsc::UnboundedSender<Wanted>) {
    let mut events = marathon.events(EVENT_TYPES);
    loop {
        match events.next().await {
            Ok(event) => {
                let w = wanted(&event);
                if w == Wanted::Apps(Vec::new()) {
                    continue;
                }
                if tx.send(w).is_err() {
                    return; // the controller stopped
                }
            }
            Err(e) => {
                // Only errors a reconnect cannot fix reach here (e.g. bad credentials): the
                // periodic resync still covers every volume.
                warn!(error = %e, "Marathon event stream failed; relying on resync");
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    }
}
