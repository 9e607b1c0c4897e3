//! How to reach Marathon: URLs, credentials, CA and timeouts.

use std::time::Duration;

/// How berth authenticates to Marathon.
#[derive(Clone, Default)]
pub enum MarathonAuth {
    #[default]
    None,
    /// `--http_credentials user:password` (the user cannot contain `:`).
    Basic { username: String, password: String },
    /// DC/OS: `Authorization: token=<authentication token>`.
    DcosToken(String),
}

impl std::fmt::Debug for MarathonAuth {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MarathonAuth::None => f.write_str("None"),
            MarathonAuth::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            MarathonAuth::DcosToken(_) => f.write_str("DcosToken(***)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MarathonConfig {
    /// Marathon base URLs, e.g. `https://m1:8443` or `https://master/service/marathon`; tried in
    /// order, starting with the last one that answered.
    pub urls: Vec<String>,
    pub auth: MarathonAuth,
    /// PEM bundle of the CA(s) Marathon's certificate chains to; when set, only these are trusted.
    pub ca_pem: Option<Vec<u8>>,
    /// Whole-request timeout (not applied to the event stream).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl MarathonConfig {
    pub fn new<S: Into<String>>(urls: impl IntoIterator<Item = S>) -> Self {
        Self {
            urls: urls.into_iter().map(Into::into).collect(),
            auth: MarathonAuth::None,
            ca_pem: None,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}
