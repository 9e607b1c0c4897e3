//! `GET /v2/events`: Server-Sent Events with `event:` and `data:` frames.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream};
use serde_json::json;
use tokio::sync::{broadcast, watch};

use crate::Shared;
use crate::errors::ApiError;
use crate::state::SimEvent;
use crate::util::{iso_millis, now_millis};

struct Subscription {
    events: broadcast::Receiver<SimEvent>,
    generation: watch::Receiver<u64>,
    filters: Vec<String>,
    attached: Option<SimEvent>,
}

/// Jetty's `EventSourceServlet` answers 405 unless the client accepts `text/event-stream`.
pub async fn stream(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let accepts = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    if !accepts {
        return ApiError::message(StatusCode::METHOD_NOT_ALLOWED, "HTTP 405 Method Not Allowed")
            .into_response();
    }
    {
        let state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if state
            .events_refused_until
            .is_some_and(|until| std::time::Instant::now() < until)
        {
            return ApiError::message(StatusCode::SERVICE_UNAVAILABLE, "the event stream is unavailable")
                .into_response();
        }
    }
    if let Some(leader) = &shared.config.events_leader {
        let query = params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let location = format!("{}/v2/events?{query}", leader.trim_end_matches('/'));
        return (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response();
    }
    let filters: Vec<String> = params
        .into_iter()
        .filter(|(k, _)| k == "event_type")
        .map(|(_, v)| v)
        .collect();
    let subscription = {
        let state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let attached = SimEvent {
            event_type: "event_stream_attached".into(),
            data: json!({
                "remoteAddress": "127.0.0.1",
                "eventType": "event_stream_attached",
                "timestamp": iso_millis(now_millis()),
            }),
        };
        let mut generation = state.stream_generation.subscribe();
        generation.mark_unchanged();
        // Marathon's filter applies to every event, `event_stream_attached` included
        // (`HttpEventSSEHandle`; its test "events should be filtered").
        let wanted = filters.is_empty() || filters.contains(&attached.event_type);
        Subscription {
            events: state.events.subscribe(),
            generation,
            filters,
            attached: wanted.then_some(attached),
        }
    };
    Sse::new(event_stream(subscription))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn frame(event: &SimEvent) -> Event {
    Event::default()
        .event(&event.event_type)
        .data(event.data.to_string())
}

fn event_stream(subscription: Subscription) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(subscription, |mut sub| async move {
        if let Some(attached) = sub.attached.take() {
            return Some((Ok(frame(&attached)), sub));
        }
        loop {
            tokio::select! {
                // A test control ends every open stream by bumping the generation.
                _ = sub.generation.changed() => return None,
                received = sub.events.recv() => match received {
                    Ok(event) => {
                        if sub.filters.is_empty() || sub.filters.contains(&event.event_type) {
                            return Some((Ok(frame(&event)), sub));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    })
}
