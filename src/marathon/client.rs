//! The Marathon REST client: apps, tasks, deployments, queue, info and events, with basic or
//! DC/OS token auth, a custom CA, several Marathon URLs with failover, timeouts, and a tracing
//! span per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::{Instrument, debug, info_span, warn};

use super::app::{App, AppUpdate, Task};
use super::config::{MarathonAuth, MarathonConfig};
use super::error::MarathonError;
use super::events::{Backoff, EventStream};
use super::responses::{Deployment, DeploymentResult, MarathonInfo, QueueEntry};

/// Whether a request may be sent again to another Marathon after an ambiguous failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// GET, PUT/PATCH of the same body, DELETE: repeating has the same effect.
    Idempotent,
    /// POST: only retried when the connection was never made.
    OnlyIfNotSent,
}

struct Inner {
    http: reqwest::Client,
    /// Without a whole-request timeout: the event stream stays open.
    stream_http: reqwest::Client,
    urls: Vec<String>,
    auth: MarathonAuth,
    preferred: AtomicUsize,
}

/// A cheap-to-clone Marathon client.
#[derive(Clone)]
pub struct MarathonClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MarathonClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarathonClient")
            .field("urls", &self.inner.urls)
            .finish()
    }
}

/// What is escaped in a request path: everything but unreserved characters, `/` (app ids keep
/// their slashes) and `*` (a group's apps, `/v2/apps/group/*`).
const PATH: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'*');

fn encode_path(path: &str) -> String {
    percent_encoding::utf8_percent_encode(path, PATH).to_string()
}

/// A URL for messages: `user:password@` replaced by `***@`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme && !url[scheme + 3..at].contains('/') => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// `/prod/web` from `prod/web` or `/prod/web/`.
fn absolute_id(id: &str) -> String {
    format!("/{}", id.trim_matches('/'))
}

impl MarathonClient {
    /// Builds the client. Needs rustls' process-wide provider (`berth::tls::install_crypto_provider`).
    pub fn new(config: MarathonConfig) -> Result<Self, MarathonError> {
        if config.urls.is_empty() {
            return Err(MarathonError::Config(
                "at least one Marathon URL is needed".into(),
            ));
        }
        // Credentials written into a URL (`http://user:pw@marathon:8080`) are taken out of it, so
        // that no log line, span or error ever shows them, and used as basic auth.
        let mut auth = config.auth.clone();
        let mut urls = Vec::with_capacity(config.urls.len());
        for url in &config.urls {
            let mut parsed = reqwest::Url::parse(url).map_err(|e| {
                MarathonError::Config(format!("Marathon URL '{}' is invalid: {e}", redact(url)))
            })?;
            if parsed.scheme() != "http" && parsed.scheme() != "https" {
                return Err(MarathonError::Config(format!(
                    "Marathon URL '{}' must be http or https",
                    redact(url)
                )));
            }
            if !parsed.username().is_empty() {
                let user = percent_encoding::percent_decode_str(parsed.username())
                    .decode_utf8_lossy()
                    .into_owned();
                let password = parsed
                    .password()
                    .map(|p| {
                        percent_encoding::percent_decode_str(p)
                            .decode_utf8_lossy()
                            .into_owned()
                    })
                    .unwrap_or_default();
                if matches!(auth, MarathonAuth::None) {
                    auth = MarathonAuth::Basic {
                        username: user,
                        password,
                    };
                }
                let _ = parsed.set_username("");
                let _ = parsed.set_password(None);
            }
            urls.push(parsed.as_str().trim_end_matches('/').to_string());
        }
        let build = |timeout: Option<Duration>| -> Result<reqwest::Client, MarathonError> {
            let builder = || {
                let b = reqwest::Client::builder().connect_timeout(config.connect_timeout);
                match timeout {
                    Some(timeout) => b.timeout(timeout),
                    // The event stream follows Marathon's redirect to the leader itself, so that
                    // the credentials go along (reqwest drops them on a redirect to another host).
                    None => b.redirect(reqwest::redirect::Policy::none()),
                }
            };
            let mut roots = None;
            if let Some(pem) = &config.ca_pem {
                let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                    MarathonError::Config(format!("Marathon CA bundle is not valid PEM: {e}"))
                })?;
                if certs.is_empty() {
                    return Err(MarathonError::Config(
                        "Marathon CA bundle holds no certificate".into(),
                    ));
                }
                roots = Some(certs);
            }
            crate::tls::http_client(builder, roots).map_err(|e| {
                MarathonError::Config(format!(
                    "cannot build the HTTP client: {e} (was the TLS crypto provider installed?)"
                ))
            })
        };
        Ok(Self {
            inner: Arc::new(Inner {
                http: build(Some(config.request_timeout))?,
                stream_http: build(None)?,
                urls,
                auth,
                preferred: AtomicUsize::new(0),
            }),
        })
    }

    /// The Marathon base URLs, without any credentials they were given with.
    pub fn urls(&self) -> &[String] {
        &self.inner.urls
    }

    /// The base URL that answered last (requests start there).
    pub fn current_url(&self) -> &str {
        let index = self.inner.preferred.load(Ordering::Relaxed) % self.inner.urls.len();
        &self.inner.urls[index]
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.inner.auth {
            MarathonAuth::None => request,
            MarathonAuth::Basic { username, password } => request.basic_auth(username, Some(password)),
            MarathonAuth::DcosToken(token) => request.header(header::AUTHORIZATION, format!("token={token}")),
        }
    }

    /// Sends one request, failing over to the next URL on retryable errors; returns the status
    /// and body of the first answer that is not a retryable failure.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        retry: Retry,
    ) -> Result<(StatusCode, String), MarathonError> {
        let count = self.inner.urls.len();
        let start = self.inner.preferred.load(Ordering::Relaxed);
        let mut last_error = None;
        for attempt in 0..count {
            let index = (start + attempt) % count;
            let base = &self.inner.urls[index];
            let url = format!("{base}{}", encode_path(path));
            let span = info_span!("marathon_request", http.method = %method, url = %url, status = tracing::field::Empty);
            let result = async {
                let mut request = self
                    .inner
                    .http
                    .request(method.clone(), &url)
                    .header(header::ACCEPT, "application/json")
                    .query(query);
                if let Some(body) = body {
                    request = request.json(body);
                }
                let response = self
                    .authorize(request)
                    .send()
                    .await
                    .map_err(|e| classify(&url, e))?;
                let status = response.status();
                tracing::Span::current().record("status", status.as_u16());
                let text = response.text().await.map_err(|e| classify(&url, e))?;
                debug!(status = status.as_u16(), "Marathon replied");
                if status.is_success() {
                    Ok((status, text))
                } else {
                    Err(MarathonError::from_response(status.as_u16(), &url, &text))
                }
            }
            .instrument(span)
            .await;
            match result {
                Ok(answer) => {
                    self.inner.preferred.store(index, Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(error) => {
                    let may_retry = match retry {
                        Retry::Idempotent => error.is_retryable(),
                        Retry::OnlyIfNotSent => matches!(error, MarathonError::Connect { .. }),
                    };
                    if !may_retry {
                        return Err(error);
                    }
                    if attempt + 1 < count {
                        warn!(error = %error, "Marathon at {base} failed; trying the next URL");
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| MarathonError::Config("no Marathon URL".into())))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        retry: Retry,
    ) -> Result<T, MarathonError> {
        let (_, text) = self.send(method, path, query, body, retry).await?;
        serde_json::from_str(&text).map_err(|e| MarathonError::InvalidResponse {
            url: format!("{}{path}", self.current_url()),
            message: format!("{e}"),
        })
    }

    /// `GET /v2/info`: Marathon's version decides 1.4 vs 1.5+ shapes.
    pub async fn info(&self) -> Result<MarathonInfo, MarathonError> {
        self.json(Method::GET, "/v2/info", &[], None, Retry::Idempotent)
            .await
    }

    /// `GET /v2/apps/{id}` with tasks and lastTaskFailure (Marathon always embeds them).
    pub async fn get_app(&self, app_id: &str) -> Result<App, MarathonError> {
        #[derive(Deserialize)]
        struct Wrapper {
            app: App,
        }
        let path = format!("/v2/apps{}", absolute_id(app_id));
        let query = [("embed", "app.tasks"), ("embed", "app.lastTaskFailure")];
        let wrapper: Wrapper = self
            .json(Method::GET, &path, &query, None, Retry::Idempotent)
            .await?;
        Ok(wrapper.app)
    }

    /// Apps under `group` (e.g. `/toto`), with their tasks; `/` lists every app.
    pub async fn list_apps(&self, group: &str) -> Result<Vec<App>, MarathonError> {
        #[derive(Deserialize)]
        struct Wrapper {
            apps: Vec<App>,
        }
        let group = group.trim_matches('/');
        let path = if group.is_empty() {
            "/v2/apps".to_string()
        } else {
            format!("/v2/apps/{group}/*")
        };
        let query = [("embed", "apps.tasks"), ("embed", "apps.lastTaskFailure")];
        let wrapper: Wrapper = self
            .json(Method::GET, &path, &query, None, Retry::Idempotent)
            .await?;
        Ok(wrapper.apps)
    }

    /// `GET /v2/apps/{id}/tasks`.
    pub async fn app_tasks(&self, app_id: &str) -> Result<Vec<Task>, MarathonError> {
        #[derive(Deserialize)]
        struct Wrapper {
            tasks: Vec<Task>,
        }
        let path = format!("/v2/apps{}/tasks", absolute_id(app_id));
        let wrapper: Wrapper = self
            .json(Method::GET, &path, &[], None, Retry::Idempotent)
            .await?;
        Ok(wrapper.tasks)
    }

    /// Applies a partial update to an existing app: only the fields in `update` are sent, each
    /// replacing the app's field whole. Sent as `PATCH` (a `PUT` with `partialUpdate=true` that
    /// never creates), so an app deleted meanwhile is a 404 rather than re-created half-empty.
    /// `force` cancels running deployments of the app; berth passes false and backs off on
    /// [`MarathonError::Locked`].
    pub async fn update_app(
        &self,
        app_id: &str,
        update: &AppUpdate,
        force: bool,
    ) -> Result<DeploymentResult, MarathonError> {
        let body = serde_json::to_value(update)
            .map_err(|e| MarathonError::Config(format!("cannot encode update: {e}")))?;
        let path = format!("/v2/apps{}", absolute_id(app_id));
        let query: &[(&str, &str)] = if force { &[("force", "true")] } else { &[] };
        self.json(Method::PATCH, &path, query, Some(&body), Retry::Idempotent)
            .await
    }

    /// `POST /v2/apps`: creates an app (`version`/`versionInfo` and response-only fields are
    /// stripped). Returns the created app.
    pub async fn create_app(&self, app: &App) -> Result<App, MarathonError> {
        let mut body = serde_json::to_value(app)
            .map_err(|e| MarathonError::Config(format!("cannot encode app: {e}")))?;
        if let Some(object) = body.as_object_mut() {
            for key in [
                "version",
                "versionInfo",
                "tasks",
                "lastTaskFailure",
                "deployments",
            ] {
                object.remove(key);
            }
        }
        self.json(Method::POST, "/v2/apps", &[], Some(&body), Retry::OnlyIfNotSent)
            .await
    }

    /// `POST /v2/apps/{id}/restart`: replaces every task under the current config (constraints
    /// included), e.g. to bring tasks placed before a pin back to the pinned host.
    pub async fn restart_app(&self, app_id: &str, force: bool) -> Result<DeploymentResult, MarathonError> {
        let path = format!("/v2/apps{}/restart", absolute_id(app_id));
        let query: &[(&str, &str)] = if force { &[("force", "true")] } else { &[] };
        self.json(Method::POST, &path, query, None, Retry::OnlyIfNotSent)
            .await
    }

    /// `GET /v2/deployments`.
    pub async fn deployments(&self) -> Result<Vec<Deployment>, MarathonError> {
        self.json(Method::GET, "/v2/deployments", &[], None, Retry::Idempotent)
            .await
    }

    /// `GET /v2/queue`.
    pub async fn queue(&self) -> Result<Vec<QueueEntry>, MarathonError> {
        #[derive(Deserialize)]
        struct Wrapper {
            queue: Vec<QueueEntry>,
        }
        let wrapper: Wrapper = self
            .json(Method::GET, "/v2/queue", &[], None, Retry::Idempotent)
            .await?;
        Ok(wrapper.queue)
    }

    /// True when Marathon cannot place a launch of the app because no offer meets its
    /// constraints (the deployment then never finishes).
    pub async fn blocked_by_constraints(&self, app_id: &str) -> Result<bool, MarathonError> {
        let app_id = absolute_id(app_id);
        Ok(self
            .queue()
            .await?
            .iter()
            .any(|e| e.app_id() == Some(app_id.as_str()) && e.declined_by_constraints() > 0))
    }

    /// Subscribes to `/v2/events` (all types when `event_types` is empty), reconnecting with
    /// the default backoff.
    pub fn events(&self, event_types: &[&str]) -> EventStream {
        self.events_with_backoff(event_types, Backoff::default())
    }

    pub fn events_with_backoff(&self, event_types: &[&str], backoff: Backoff) -> EventStream {
        EventStream::new(
            self.clone(),
            event_types.iter().map(|t| t.to_string()).collect(),
            backoff,
        )
    }

    /// Opens one event-stream connection, trying each URL.
    pub(crate) async fn open_event_stream(
        &self,
        event_types: &[String],
    ) -> Result<reqwest::Response, MarathonError> {
        let count = self.inner.urls.len();
        let start = self.inner.preferred.load(Ordering::Relaxed);
        let mut last_error = None;
        for attempt in 0..count {
            let index = (start + attempt) % count;
            let url = format!("{}/v2/events", self.inner.urls[index]);
            let span = info_span!("marathon_event_stream", url = %url);
            match self
                .connect_event_stream(&url, event_types)
                .instrument(span)
                .await
            {
                Ok(response) => {
                    self.inner.preferred.store(index, Ordering::Relaxed);
                    return Ok(response);
                }
                Err(error) if error.is_retryable() => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| MarathonError::Config("no Marathon URL".into())))
    }

    /// One connection attempt. Non-leaders answer `/v2/events` with a redirect to the leader
    /// (they proxy everything else); it is followed here, a few hops at most, with credentials.
    async fn connect_event_stream(
        &self,
        url: &str,
        event_types: &[String],
    ) -> Result<reqwest::Response, MarathonError> {
        let query: Vec<(&str, &str)> = event_types.iter().map(|t| ("event_type", t.as_str())).collect();
        let mut target =
            reqwest::Url::parse(url).map_err(|e| MarathonError::Config(format!("{url}: {e}")))?;
        target.query_pairs_mut().extend_pairs(&query);
        for _ in 0..5 {
            let request = self
                .inner
                .stream_http
                .get(target.clone())
                .header(header::ACCEPT, "text/event-stream");
            let response = self
                .authorize(request)
                .send()
                .await
                .map_err(|e| classify(target.as_str(), e))?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| target.join(l).ok())
                    .filter(|l| l.scheme() == "http" || l.scheme() == "https");
                match location {
                    Some(next) => {
                        debug!(leader = %next, "Marathon redirected the event stream to the leader");
                        target = next;
                        continue;
                    }
                    None => {
                        return Err(MarathonError::InvalidResponse {
                            url: target.to_string(),
                            message: format!("redirect ({status}) without a usable Location"),
                        });
                    }
                }
            }
            let text = response.text().await.unwrap_or_default();
            return Err(MarathonError::from_response(
                status.as_u16(),
                target.as_str(),
                &text,
            ));
        }
        Err(MarathonError::InvalidResponse {
            url: url.to_string(),
            message: "too many redirects for the event stream".into(),
        })
    }
}

fn classify(url: &str, error: reqwest::Error) -> MarathonError {
    if error.is_timeout() {
        MarathonError::Timeout { url: url.to_string() }
    } else if error.is_connect() {
        MarathonError::Connect {
            url: url.to_string(),
            source: error.without_url(),
        }
    } else {
        MarathonError::Transport {
            url: url.to_string(),
            source: error.without_url(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_a_url_are_taken_out_and_never_shown() {
        assert_eq!(redact("http://u:pw@m:8080/x"), "http://***@m:8080/x");
        assert_eq!(redact("http://m:8080/a@b"), "http://m:8080/a@b");
        crate::tls::install_crypto_provider();
        let client =
            MarathonClient::new(MarathonConfig::new(["http://berth:s%40cret@127.0.0.1:9/"])).unwrap();
        assert_eq!(client.urls(), ["http://127.0.0.1:9"]);
        assert!(
            matches!(&client.inner.auth, MarathonAuth::Basic { username, password } if username == "berth" && password == "s@cret")
        );
        let bad = MarathonClient::new(MarathonConfig::new(["ftp://u:pw@m"])).unwrap_err();
        assert!(!bad.to_string().contains("pw"), "{bad}");
    }

    #[test]
    fn ids_and_paths_are_normalised() {
        assert_eq!(absolute_id("toto/web/"), "/toto/web");
        assert_eq!(encode_path("/v2/apps/toto/web"), "/v2/apps/toto/web");
        assert_eq!(encode_path("/v2/apps/a b?"), "/v2/apps/a%20b%3F");
    }
}
