//! The event stream against the simulator: typed events, filters, reconnection.

use std::time::Duration;

use berth::marathon::{App, Backoff, EventStream, MarathonClient, MarathonConfig, MarathonEvent};
use marathon_sim::{AgentConfig, Config, SimHandle, Simulator};

async fn sim() -> SimHandle {
    Simulator::start(Config {
        agents: vec![AgentConfig::new("node-1")],
        step: Duration::from_millis(50),
        ..Config::default()
    })
    .await
    .expect("simulator starts")
}

fn client(urls: Vec<String>) -> MarathonClient {
    berth::tls::install_crypto_provider();
    MarathonClient::new(MarathonConfig::new(urls)).expect("client builds")
}

const FAST: Backoff = Backoff {
    initial: Duration::from_millis(20),
    max: Duration::from_millis(200),
};

async fn next(stream: &mut EventStream) -> MarathonEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event in time")
        .expect("no fatal stream error")
}

/// Reads events until `pred` matches one; panics after 200 events.
async fn until(stream: &mut EventStream, pred: impl Fn(&MarathonEvent) -> bool) -> MarathonEvent {
    for _ in 0..200 {
        let event = next(stream).await;
        if pred(&event) {
            return event;
        }
    }
    panic!("event not seen");
}

#[tokio::test]
async fn events_are_typed() {
    let sim = sim().await;
    let client = client(vec![sim.url()]);
    let mut stream = client.events_with_backoff(&[], FAST);
    assert_eq!(next(&mut stream).await, MarathonEvent::Connected);
    assert_eq!(
        next(&mut stream).await,
        MarathonEvent::StreamAttached,
        "unfiltered, Marathon's own attachment comes through"
    );
    let created = client
        .create_app(&App::docker("/toto/web", "busybox", 1))
        .await
        .unwrap();
    let deployment_id = created.deployments.unwrap()[0].id.clone();

    let post = until(&mut stream, |e| matches!(e, MarathonEvent::ApiPost(_))).await;
    assert_eq!(post.app_id(), Some("/toto/web"));
    let MarathonEvent::StatusUpdate(status) = until(
        &mut stream,
        |e| matches!(e, MarathonEvent::StatusUpdate(s) if s.task_status == "TASK_RUNNING"),
    )
    .await
    else {
        unreachable!()
    };
    assert_eq!(status.app_id, "/toto/web");
    assert_eq!(status.host, "node-1");
    assert_eq!(status.slave_id.as_deref(), Some("node-1-S0"));
    let MarathonEvent::InstanceChanged(instance) =
        until(&mut stream, |e| matches!(e, MarathonEvent::InstanceChanged(_))).await
    else {
        unreachable!()
    };
    assert_eq!(instance.run_spec_id, "/toto/web");
    let MarathonEvent::DeploymentSuccess(done) =
        until(&mut stream, |e| matches!(e, MarathonEvent::DeploymentSuccess(_))).await
    else {
        unreachable!()
    };
    assert_eq!(done.deployment_id(), Some(deployment_id.as_str()));
    assert_eq!(done.affected_apps(), ["/toto/web"]);
}

#[tokio::test]
async fn event_type_filters_are_sent() {
    let sim = sim().await;
    let client = client(vec![sim.url()]);
    let mut stream = client.events_with_backoff(&["deployment_success", "deployment_failed"], FAST);
    assert_eq!(next(&mut stream).await, MarathonEvent::Connected);
    client.create_app(&App::docker("/a", "busybox", 1)).await.unwrap();
    assert!(
        matches!(next(&mut stream).await, MarathonEvent::DeploymentSuccess(_)),
        "nothing else passes the filter"
    );
    let log = sim.requests();
    let request = log.iter().find(|r| r.path == "/v2/events").unwrap();
    assert_eq!(
        request.query,
        "event_type=deployment_success&event_type=deployment_failed"
    );
}

#[tokio::test]
async fn stream_reconnects_after_the_server_drops_it() {
    let sim = sim().await;
    let client = client(vec![sim.url()]);
    let mut stream = client.events_with_backoff(&["api_post_event"], FAST);
    assert_eq!(next(&mut stream).await, MarathonEvent::Connected);
    sim.drop_event_streams();
    // The break and the new connection are announced although the filter hides Marathon's
    // own `event_stream_attached`: the consumer knows to re-read state.
    assert_eq!(next(&mut stream).await, MarathonEvent::Disconnected);
    assert_eq!(next(&mut stream).await, MarathonEvent::Connected);
    assert_eq!(stream.reconnects(), 1);
    client
        .create_app(&App::docker("/after", "busybox", 0))
        .await
        .unwrap();
    assert_eq!(next(&mut stream).await.app_id(), Some("/after"));
}

#[tokio::test]
async fn stream_fails_over_to_the_next_marathon() {
    let first = sim().await;
    let second = sim().await;
    let client = client(vec![first.url(), second.url()]);
    let mut stream = client.events_with_backoff(&["api_post_event"], FAST);
    assert_eq!(next(&mut stream).await, MarathonEvent::Connected);
    first.shutdown().await;
    assert_eq!(next(&mut stream).await, MarathonEvent::Disconnected);
    assert_eq!(next(&mut stream).await, MarathonEvent::Connected);
    client
        .create_app(&App::docker("/moved", "busybox", 0))
        .await
        .unwrap();
    assert_eq!(next(&mut stream).await.app_id(), Some("/moved"));
    assert_eq!(client.current_url(), second.url());
}

#[tokio::test]
async fn redirect_to_the_leader_keeps_credentials() {
    let credentials = Some(("berth".to_string(), "pw".to_string()));
    let leader = Simulator::start(Config {
        agents: vec![AgentConfig::new("node-1")],
        basic_auth: credentials.clone(),
        ..Config::default()
    })
    .await
    .unwrap();
    let follower = Simulator::start(Config {
        agents: vec![AgentConfig::new("node-1")],
        basic_auth: credentials,
        // Another host name for the same leader, as a redirect across hosts would have.
        events_leader: Some(format!("http://localhost:{}", leader.addr().port())),
        ..Config::default()
    })
    .await
    .unwrap();
    berth::tls::install_crypto_provider();
    let client = MarathonClient::new(MarathonConfig {
        auth: berth::marathon::MarathonAuth::Basic {
            username: "berth".into(),
            password: "pw".into(),
        },
        ..MarathonConfig::new([follower.url()])
    })
    .unwrap();
    let mut stream = client.events_with_backoff(&["event_stream_attached"], FAST);
    assert_eq!(next(&mut stream).await, MarathonEvent::Connected);
    assert_eq!(next(&mut stream).await, MarathonEvent::StreamAttached);
    assert!(
        leader.requests().iter().any(|r| r.path == "/v2/events"),
        "the stream is served by the leader"
    );
}
