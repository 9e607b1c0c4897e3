//! TLS set-up shared by every client and server in the process.

/// Installs rustls' ring provider as the process default. berth compiles exactly one provider
/// (ring, kube's default) so that kube's client, reqwest and the agent's server agree; this must
/// run before any of them is built. Calling it twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
