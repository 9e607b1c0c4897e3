//! TLS set-up shared by every client and server in the process.

/// Installs rustls' ring provider as the process default. berth compiles exactly one provider
/// (ring, kube's default) so that kube's client, reqwest and the agent's server agree; this must
/// run before any of them is built. Calling it twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds an HTTP client that trusts `roots` only, or the system's CA certificates. Where the
/// system has none (a minimal container image), the client trusts no root instead of failing:
/// plain-HTTP peers work, and an HTTPS one fails with an unknown-issuer error that names the
/// problem (give the CA file the flag for that peer asks for).
pub fn http_client(
    builder: impl Fn() -> reqwest::ClientBuilder,
    roots: Option<Vec<reqwest::Certificate>>,
) -> reqwest::Result<reqwest::Client> {
    install_crypto_provider();
    match roots {
        Some(certs) => builder().tls_certs_only(certs).build(),
        None => builder().build().or_else(|e| {
            tracing::warn!(error = %e, "no system CA certificates: HTTPS peers need a CA file");
            builder().tls_certs_only(Vec::new()).build()
        }),
    }
}
