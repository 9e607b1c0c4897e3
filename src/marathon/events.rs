//! Marathon's event stream (`GET /v2/events`, SSE) as typed events, reconnecting with
//! exponential backoff. Ordering is not guaranteed: use events to trigger a re-read.

use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use tracing::{debug, warn};

use super::client::MarathonClient;
use super::error::MarathonError;
use super::sse::{SseFrame, SseParser};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiPostEvent {
    #[serde(default)]
    pub client_ip: Option<String>,
    #[serde(default)]
    pub uri: String,
    #[serde(default)]
    pub app_definition: Value,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentEvent {
    /// Set on `deployment_success`/`deployment_failed`; for info/step events, `plan.id`.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub plan: Value,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub current_step: Value,
}

impl DeploymentEvent {
    pub fn deployment_id(&self) -> Option<&str> {
        self.id
            .as_deref()
            .or_else(|| self.plan.get("id").and_then(Value::as_str))
    }

    /// App ids the deployment touches (`plan.affectedApps`, with a fallback on `plan.original`
    /// absent in light plans).
    pub fn affected_apps(&self) -> Vec<String> {
        self.plan
            .get("affectedApps")
            .and_then(Value::as_array)
            .map(|apps| {
                apps.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusUpdateEvent {
    #[serde(default)]
    pub slave_id: Option<String>,
    pub task_id: String,
    pub task_status: String,
    #[serde(default)]
    pub message: String,
    pub app_id: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceChangedEvent {
    pub instance_id: String,
    pub condition: String,
    pub run_spec_id: String,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub run_spec_version: Option<String>,
}

/// A Marathon event, by its `eventType`, or a change of the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum MarathonEvent {
    /// Not Marathon's: the stream (re)connected. Events may have been missed before it, so
    /// whatever was cached may be stale: re-read state. Sent on every successful connection,
    /// whatever the filter (Marathon filters its own `event_stream_attached` like any event).
    Connected,
    /// Not Marathon's: the stream broke; berth reconnects by itself. Until [`Self::Connected`],
    /// events are missed.
    Disconnected,
    /// Marathon's `event_stream_attached`: only seen when the filter lets it through.
    StreamAttached,
    ApiPost(ApiPostEvent),
    DeploymentInfo(DeploymentEvent),
    DeploymentStepSuccess(DeploymentEvent),
    DeploymentStepFailure(DeploymentEvent),
    DeploymentSuccess(DeploymentEvent),
    DeploymentFailed(DeploymentEvent),
    StatusUpdate(StatusUpdateEvent),
    InstanceChanged(InstanceChangedEvent),
    /// Any other type, or one whose body did not parse: the type and the raw JSON.
    Other {
        event_type: String,
        data: Value,
    },
}

impl MarathonEvent {
    /// Types from the `eventType` field of the data (the `event:` line is the fallback).
    pub fn from_frame(frame: &SseFrame) -> MarathonEvent {
        let data: Value = serde_json::from_str(&frame.data).unwrap_or(Value::String(frame.data.clone()));
        let event_type = data
            .get("eventType")
            .and_then(Value::as_str)
            .unwrap_or(frame.event.as_str())
            .to_string();
        fn typed<T: serde::de::DeserializeOwned>(data: &Value) -> Option<T> {
            serde_json::from_value(data.clone()).ok()
        }
        let parsed = match event_type.as_str() {
            "event_stream_attached" => Some(MarathonEvent::StreamAttached),
            "api_post_event" => typed(&data).map(MarathonEvent::ApiPost),
            "deployment_info" => typed(&data).map(MarathonEvent::DeploymentInfo),
            "deployment_step_success" => typed(&data).map(MarathonEvent::DeploymentStepSuccess),
            "deployment_step_failure" => typed(&data).map(MarathonEvent::DeploymentStepFailure),
            "deployment_success" => typed(&data).map(MarathonEvent::DeploymentSuccess),
            "deployment_failed" => typed(&data).map(MarathonEvent::DeploymentFailed),
            "status_update_event" => typed(&data).map(MarathonEvent::StatusUpdate),
            "instance_changed_event" => typed(&data).map(MarathonEvent::InstanceChanged),
            _ => None,
        };
        parsed.unwrap_or(MarathonEvent::Other { event_type, data })
    }

    /// The app an event is about, when it names one.
    pub fn app_id(&self) -> Option<&str> {
        match self {
            MarathonEvent::StatusUpdate(e) => Some(&e.app_id),
            MarathonEvent::InstanceChanged(e) => Some(&e.run_spec_id),
            MarathonEvent::ApiPost(e) => e.app_definition.get("id").and_then(Value::as_str),
            _ => None,
        }
    }
}

/// Backoff between reconnections: doubles from `initial` up to `max`, with jitter so that many
/// controllers do not reconnect in step, reset by a successful
/// connection.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    fn delays(&self) -> backon::ExponentialBackoff {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_min_delay(self.initial)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

/// A subscription to `/v2/events` that reconnects by itself. Call [`EventStream::next`] in a
/// loop; every successful connection is announced by [`MarathonEvent::Connected`] and every
/// break by [`MarathonEvent::Disconnected`].
pub struct EventStream {
    client: MarathonClient,
    event_types: Vec<String>,
    backoff: Backoff,
    delays: backon::ExponentialBackoff,
    body: Option<futures::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>>,
    parser: SseParser,
    ready: std::collections::VecDeque<SseFrame>,
    reconnects: u64,
    /// A break to announce, then wait out, before connecting again.
    broke: bool,
}

impl EventStream {
    pub(crate) fn new(client: MarathonClient, event_types: Vec<String>, backoff: Backoff) -> Self {
        Self {
            client,
            event_types,
            backoff,
            delays: backoff.delays(),
            body: None,
            parser: SseParser::new(),
            ready: Default::default(),
            reconnects: 0,
            broke: false,
        }
    }

    /// How many times the stream had to reconnect.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// The next event. Connection failures and ends are retried with backoff; only errors a
    /// retry cannot fix (bad credentials, a non-SSE endpoint) are returned.
    pub async fn next(&mut self) -> Result<MarathonEvent, MarathonError> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Ok(MarathonEvent::from_frame(&frame));
            }
            let Some(body) = self.body.as_mut() else {
                if std::mem::take(&mut self.broke) {
                    self.wait_and_grow().await;
                }
                match self.client.open_event_stream(&self.event_types).await {
                    Ok(response) => {
                        self.delays = self.backoff.delays();
                        self.parser.reset();
                        // Chunks are copied out so no `bytes` dependency is needed; events are small.
                        self.body = Some(response.bytes_stream().map(|r| r.map(|b| b.to_vec())).boxed());
                        return Ok(MarathonEvent::Connected);
                    }
                    Err(e) if e.is_retryable() => {
                        warn!(error = %e, "Marathon event stream unavailable; retrying");
                        self.wait_and_grow().await;
                    }
                    Err(e) => return Err(e),
                }
                continue;
            };
            match body.next().await {
                Some(Ok(chunk)) => self.ready.extend(self.parser.push(&chunk)),
                Some(Err(e)) => {
                    debug!(error = %e, "Marathon event stream broke; reconnecting");
                    return Ok(self.broken());
                }
                None => {
                    debug!("Marathon event stream ended; reconnecting");
                    return Ok(self.broken());
                }
            }
        }
    }

    fn broken(&mut self) -> MarathonEvent {
        self.body = None;
        self.reconnects += 1;
        self.broke = true;
        MarathonEvent::Disconnected
    }

    async fn wait_and_grow(&mut self) {
        let delay = self.delays.next().unwrap_or(self.backoff.max);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(event: &str, data: &str) -> SseFrame {
        SseFrame {
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn unknown_or_malformed_events_are_kept_raw() {
        let event = MarathonEvent::from_frame(&frame(
            "pod_created_event",
            r#"{"eventType":"pod_created_event","x":1}"#,
        ));
        match event {
            MarathonEvent::Other { event_type, data } => {
                assert_eq!(event_type, "pod_created_event");
                assert_eq!(data["x"], 1);
            }
            other => panic!("{other:?}"),
        }
        // A known type whose body lacks required fields does not fail the stream.
        let broken = MarathonEvent::from_frame(&frame(
            "status_update_event",
            r#"{"eventType":"status_update_event"}"#,
        ));
        assert!(matches!(broken, MarathonEvent::Other { .. }));
    }

    #[test]
    fn event_type_comes_from_the_json_body() {
        let data = r#"{"eventType":"deployment_failed","id":"d1","plan":{"id":"d1","affectedApps":["/a"]},"reason":"x"}"#;
        match MarathonEvent::from_frame(&frame("message", data)) {
            MarathonEvent::DeploymentFailed(e) => {
                assert_eq!(e.deployment_id(), Some("d1"));
                assert_eq!(e.affected_apps(), ["/a"]);
                assert_eq!(e.reason.as_deref(), Some("x"));
            }
            other => panic!("{other:?}"),
        }
    }
}
