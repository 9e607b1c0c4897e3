//! Connecting to Marathon: failover between two simulators, auth, and TLS with a custom CA.

use std::sync::Arc;
use std::time::Duration;

use berth::marathon::{App, MarathonAuth, MarathonClient, MarathonConfig, MarathonError};
use marathon_sim::{AgentConfig, Config, SimHandle, Simulator};

async fn sim_with(config: Config) -> SimHandle {
    Simulator::start(Config {
        agents: vec![AgentConfig::new("node-1")],
        step: Duration::from_millis(50),
        ..config
    })
    .await
    .expect("simulator starts")
}

async fn sim() -> SimHandle {
    sim_with(Config::default()).await
}

fn client(config: MarathonConfig) -> MarathonClient {
    berth::tls::install_crypto_provider();
    MarathonClient::new(config).expect("client builds")
}

/// A URL where nothing listens (a port that was just released).
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

#[tokio::test]
async fn unreachable_first_url_fails_over_and_sticks_to_the_live_one() {
    let live = sim().await;
    let client = client(MarathonConfig::new([dead_url().await, live.url()]));
    assert_eq!(client.info().await.unwrap().name, "marathon");
    assert_eq!(client.current_url(), live.url());
    // A POST never reached the dead URL, so it is safe to send it to the next one.
    let client = self::client(MarathonConfig::new([dead_url().await, live.url()]));
    client.create_app(&App::docker("/a", "busybox", 0)).await.unwrap();
}

#[tokio::test]
async fn server_error_fails_over_for_reads_but_not_for_creates() {
    let first = sim().await;
    let second = sim().await;
    let client = client(MarathonConfig::new([first.url(), second.url()]));
    first.inject_faults(1, Some(502), Duration::ZERO);
    assert!(client.deployments().await.unwrap().is_empty());
    assert_eq!(second.requests().len(), 1, "the read went to the second Marathon");
    assert_eq!(client.current_url(), second.url());

    let client = self::client(MarathonConfig::new([first.url(), second.url()]));
    first.inject_faults(1, Some(503), Duration::ZERO);
    let error = client
        .create_app(&App::docker("/a", "busybox", 0))
        .await
        .unwrap_err();
    assert!(
        matches!(error, MarathonError::Server { status: 503, .. }),
        "{error:?}"
    );
    assert!(
        second.write_requests().is_empty(),
        "a POST that may have been applied is not repeated"
    );
}

#[tokio::test]
async fn all_urls_down_is_a_retryable_connect_error() {
    let client = client(MarathonConfig::new([dead_url().await, dead_url().await]));
    let error = client.info().await.unwrap_err();
    assert!(matches!(error, MarathonError::Connect { .. }), "{error:?}");
    assert!(error.is_retryable());
    assert!(error.to_string().contains("check the URL"), "{error}");
}

/// The message says why (the OS's "Connection refused"), and names the URL once: reqwest's own
/// message ("error sending request for url (…)") repeated the URL and left the cause out.
#[tokio::test]
async fn a_refused_connection_says_so_once_with_the_url_once() {
    let url = dead_url().await;
    let client = client(MarathonConfig::new([url.clone()]));
    let error = client.get_app("/toto/web").await.unwrap_err();
    assert!(matches!(error, MarathonError::Connect { .. }), "{error:?}");
    let text = error.to_string();
    eprintln!("{text}");
    assert_eq!(text.matches("Connection refused").count(), 1, "{text}");
    assert_eq!(text.matches(url.as_str()).count(), 1, "{text}");
    // Printed as berth prints errors (with every cause), nothing is repeated.
    let printed = berth::report::error_chain(&error);
    assert_eq!(printed, text);
    // As the controller wraps it (its error keeps the Marathon error as its source).
    #[derive(Debug, thiserror::Error)]
    #[error("Marathon: {0}")]
    struct Wrapped(#[from] MarathonError);
    let printed = berth::report::error_chain(&Wrapped(error));
    assert_eq!(printed.matches("Connection refused").count(), 1, "{printed}");
    assert_eq!(printed.matches(url.as_str()).count(), 1, "{printed}");
}

#[tokio::test]
async fn basic_auth() {
    let sim = sim_with(Config {
        basic_auth: Some(("berth".into(), "pw".into())),
        ..Config::default()
    })
    .await;
    let good = client(MarathonConfig {
        auth: MarathonAuth::Basic {
            username: "berth".into(),
            password: "pw".into(),
        },
        ..MarathonConfig::new([sim.url()])
    });
    assert!(good.info().await.is_ok());
    let bad = client(MarathonConfig {
        auth: MarathonAuth::Basic {
            username: "berth".into(),
            password: "wrong".into(),
        },
        ..MarathonConfig::new([sim.url()])
    });
    let error = bad.info().await.unwrap_err();
    assert!(
        matches!(error, MarathonError::Unauthorized { status: 401, .. }),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    assert!(
        !format!(
            "{:?}",
            MarathonAuth::Basic {
                username: "u".into(),
                password: "pw".into()
            }
        )
        .contains("pw")
    );
    // The event stream is authenticated too.
    let mut stream = good.events(&[]);
    assert!(
        tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .is_ok()
    );
    let mut refused = bad.events(&[]);
    assert!(matches!(
        refused.next().await,
        Err(MarathonError::Unauthorized { .. })
    ));
}

#[tokio::test]
async fn dcos_token_auth() {
    let sim = sim_with(Config {
        dcos_token: Some("eyJ0eXAi".into()),
        ..Config::default()
    })
    .await;
    let with_token = client(MarathonConfig {
        auth: MarathonAuth::DcosToken("eyJ0eXAi".into()),
        ..MarathonConfig::new([sim.url()])
    });
    assert!(with_token.info().await.is_ok());
    let anonymous = client(MarathonConfig::new([sim.url()]));
    assert!(matches!(
        anonymous.info().await,
        Err(MarathonError::Unauthorized { .. })
    ));
}

#[tokio::test]
async fn invalid_configuration_is_rejected_early() {
    berth::tls::install_crypto_provider();
    assert!(matches!(
        MarathonClient::new(MarathonConfig::new(Vec::<String>::new())),
        Err(MarathonError::Config(_))
    ));
    assert!(matches!(
        MarathonClient::new(MarathonConfig::new(["ftp://x"])),
        Err(MarathonError::Config(_))
    ));
    let bad_ca = MarathonConfig {
        ca_pem: Some(b"not a certificate".to_vec()),
        ..MarathonConfig::new(["https://127.0.0.1:1"])
    };
    assert!(matches!(
        MarathonClient::new(bad_ca),
        Err(MarathonError::Config(_))
    ));
}

/// A test-only CA (P-256, valid until 2126) and a server certificate it signed for IP 127.0.0.1,
/// made once with openssl; the keys protect nothing.
const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBdzCCARygAwIBAgIUPi3wMMvFdLlTOnOPFdKLxQCNi+cwCgYIKoZIzj0EAwIw
GDEWMBQGA1UEAwwNYmVydGggdGVzdCBDQTAgFw0yNjExMjgwNTIyNDdaGA8yMTI2
MTEwNDA1MjI0N1owGDEWMBQGA1UEAwwNYmVydGggdGVzdCBDQTBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABKlznRNCTyT5XbWXB5HF/M96ojKagMovDOBEoG8DIYWb
LYQvBNckRdOrJDNZTTkkBrEA8Qf+4MoE12+EVc1pw2GjQjBAMA8GA1UdEwEB/wQF
MAMBAf8wDgYDVR0PAQH/BAQDAgEGMB0GA1UdDgQWBBT6dctZuopiWOzrrP5g+WGv
aC2N8DAKBggqhkjOPQQDAgNJADBGAiEAx4VE4MTMrNirDFeQH87aWu7j/bH+XU4D
h8Qb3xuj0aECIQDq5jOrfDvjyhcPzyYOxONGpwzCsmfE77OuxLIZyqSlZA==
-----END CERTIFICATE-----
";
const SERVER_CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBsDCCAVegAwIBAgIUbJ0irCQlzhLF8ydtXAp0OMk2E50wCgYIKoZIzj0EAwIw
GDEWMBQGA1UEAwwNYmVydGggdGVzdCBDQTAgFw0yNjExMjgwNTIyNDdaGA8yMTI2
MTEwNDA1MjI0N1owFDESMBAGA1UEAwwJMTI3LjAuMC4xMFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAEzbbMCn5ew8DnsftVRuZgCfUqC5l8i4c/fqHXq8FP+XirMQgY
m59oRFaH5mJPnXyr3SrMgV+KfXKR/sxkP7sJCqOBgDB+MA8GA1UdEQQIMAaHBH8A
AAEwCQYDVR0TBAIwADALBgNVHQ8EBAMCB4AwEwYDVR0lBAwwCgYIKwYBBQUHAwEw
HQYDVR0OBBYEFBuJ0muXNzkcA9ieTLB/X7rAk5wwMB8GA1UdIwQYMBaAFPp1y1m6
imJY7Ous/mD5Ya9oLY3wMAoGCCqGSM49BAMCA0cAMEQCICavTthzDhK9UZfGmXZe
T+IgrYkoOrDZrU3RrP+dGsEUAiAbJYtHK5zDZANvvAzLqMexBB6aIePQSDVt8Awx
gsy8UQ==
-----END CERTIFICATE-----
";
const SERVER_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgPS3OiCwQ7YnfKbti
BaklxkVfVDf4hf48BiyaPchbwSGhRANCAATNtswKfl7DwOex+1VG5mAJ9SoLmXyL
hz9+oderwU/5eKsxCBibn2hEVofmYk+dfKvdKsyBX4p9cpH+zGQ/uwkK
-----END PRIVATE KEY-----
";

/// Terminates TLS on a local port and forwards the plain bytes to the simulator.
async fn tls_front(backend: std::net::SocketAddr) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(SERVER_CERT_PEM.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(SERVER_KEY_PEM.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    url
}

#[tokio::test]
async fn tls_with_a_custom_ca() {
    berth::tls::install_crypto_provider();
    let sim = sim().await;
    let url = tls_front(sim.addr()).await;
    let trusted = client(MarathonConfig {
        ca_pem: Some(TEST_CA_PEM.as_bytes().to_vec()),
        ..MarathonConfig::new([url.clone()])
    });
    assert_eq!(trusted.info().await.unwrap().name, "marathon");
    let untrusted = client(MarathonConfig::new([url]));
    let error = untrusted.info().await.unwrap_err();
    assert!(
        matches!(
            error,
            MarathonError::Connect { .. } | MarathonError::Transport { .. }
        ),
        "{error:?}"
    );
}
