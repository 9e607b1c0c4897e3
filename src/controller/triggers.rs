//! What makes an app due for a pass, besides its volumes' changes (which `cache.rs` reports):
//! Marathon's event stream, and a periodic bulk read of every app that keeps the app cache
//! fresh so that a resync pass costs no Marathon read.
//!
//! An event names an app (a change, a deployment that ended, a task that moved): the app's
//! cache entry is dropped and the app is triggered; the queue's debounce folds a burst (a task
//! that crash-loops sends a steady stream) into one pass. Every (re)connection of the stream
//! triggers every app: events may have been missed while it was down, and Marathon filters its
//! own `event_stream_attached` away, so berth does not wait for it.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{app_cache::AppCache, cache::VolumeCache, context::Context, metrics::Metrics, queue::AppQueue};
use crate::marathon::{MarathonClient, MarathonEvent};

/// Event types that can change what berth sees in an app.
pub const EVENT_TYPES: &[&str] = &[
    "api_post_event",
    "deployment_info",
    "deployment_success",
    "deployment_failed",
    "status_update_event",
    "instance_changed_event",
    "app_terminated_event",
];

/// What an event asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Wanted {
    /// Pass these apps.
    Apps(Vec<String>),
    /// The stream (re)connected: trust nothing cached, pass every app.
    Everything,
    /// The stream broke: the cache can no longer be trusted.
    Lost,
}

pub fn wanted(event: &MarathonEvent) -> Wanted {
    match event {
        MarathonEvent::Connected => Wanted::Everything,
        MarathonEvent::Disconnected => Wanted::Lost,
        MarathonEvent::DeploymentInfo(d)
        | MarathonEvent::DeploymentSuccess(d)
        | MarathonEvent::DeploymentFailed(d) => Wanted::Apps(d.affected_apps()),
        MarathonEvent::Other { data, .. } => Wanted::Apps(
            data.get("appId")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .into_iter()
                .collect(),
        ),
        other => Wanted::Apps(other.app_id().map(str::to_owned).into_iter().collect()),
    }
}

/// Follows Marathon's event stream until the controller stops.
pub async fn marathon_events(
    marathon: MarathonClient,
    queue: Arc<AppQueue>,
    volumes: Arc<VolumeCache>,
    apps: Arc<AppCache>,
) {
    let mut events = marathon.events(EVENT_TYPES);
    loop {
        match events.next().await {
            Ok(event) => match wanted(&event) {
                Wanted::Apps(ids) => {
                    for id in ids {
                        apps.invalidate(&id);
                        queue.trigger(&id);
                    }
                }
                Wanted::Everything => {
                    info!("connected to Marathon's event stream; passing every app");
                    apps.stream_connected();
                    for app in volumes.apps() {
                        queue.trigger(&app);
                    }
                }
                Wanted::Lost => {
                    debug!("Marathon's event stream broke; reconnecting");
                    apps.stream_lost();
                }
            },
            Err(e) => {
                // Only errors a reconnect cannot fix reach here (e.g. bad credentials): the
                // periodic resync still covers every app, reading each from Marathon.
                apps.stream_lost();
                warn!(error = %e, "Marathon event stream failed; relying on resync");
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    }
}

/// When Marathon answers again after an outage, passes at once the apps that failed while it
/// was away, instead of leaving each to its own back-off (up to 5 min) or to the event stream's
/// reconnection (up to 30 s later).
pub async fn marathon_return(ctx: Arc<Context>, queue: Arc<AppQueue>) {
    loop {
        ctx.marathon_returned().await;
        let apps = ctx.failing_apps();
        info!(
            apps = apps.len(),
            "Marathon answers again; passing the apps that waited for it"
        );
        for app in apps {
            queue.trigger(&app);
        }
    }
}

/// Every `period`, reads every app in one request and renews the cache, so that the passes of
/// a resync find their apps there.
pub async fn bulk_refresh(
    marathon: MarathonClient,
    apps: Arc<AppCache>,
    metrics: Arc<Metrics>,
    period: Duration,
) {
    let mut next = Instant::now();
    loop {
        tokio::time::sleep_until(next).await;
        next = Instant::now() + period;
        let ticket = apps.ticket();
        match marathon.list_apps("/").await {
            Ok(list) => {
                metrics.marathon("list_apps", "200");
                let n = list.len();
                for app in list {
                    let id = app.id.clone();
                    apps.store(ticket, &id, Arc::new(app.slim()));
                }
                debug!(apps = n, "read every app from Marathon");
            }
            Err(e) => {
                metrics.marathon("list_apps", super::metrics::marathon_code(&e));
                warn!(error = %e, "cannot list Marathon's apps; passes read their apps one by one");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::marathon::sse::SseFrame;

    fn event(data: serde_json::Value) -> MarathonEvent {
        MarathonEvent::from_frame(&SseFrame {
            event: data["eventType"].as_str().unwrap_or_default().into(),
            data: data.to_string(),
        })
    }

    #[test]
    fn events_name_the_apps_to_pass() {
        let deployed =
            event(json!({"eventType": "deployment_info", "plan": {"id": "d", "affectedApps": ["/a", "/b"]}}));
        assert_eq!(wanted(&deployed), Wanted::Apps(vec!["/a".into(), "/b".into()]));
        let status = event(
            json!({"eventType": "status_update_event", "taskId": "t", "taskStatus": "TASK_RUNNING", "appId": "/a", "host": "n"}),
        );
        assert_eq!(wanted(&status), Wanted::Apps(vec!["/a".into()]));
        let terminated = event(json!({"eventType": "app_terminated_event", "appId": "/gone"}));
        assert_eq!(wanted(&terminated), Wanted::Apps(vec!["/gone".into()]));
        assert_eq!(wanted(&MarathonEvent::Connected), Wanted::Everything);
        assert_eq!(wanted(&MarathonEvent::Disconnected), Wanted::Lost);
        assert_eq!(wanted(&MarathonEvent::StreamAttached), Wanted::Apps(vec![]));
    }
}
