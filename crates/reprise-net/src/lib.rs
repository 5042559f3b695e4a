//! # reprise-net — the one way reprise builds an HTTP client
//!
//! reqwest's default TLS stack is rustls on aws-lc-rs, whose C library (aws-lc-sys) was the
//! largest single piece of a cold build of `reprise`. reprise asks reqwest for rustls with
//! no provider and installs rustls' `ring` provider instead, once per process, before any
//! client is built: [`client_builder`] and [`client`] do both. Every crate that talks HTTP
//! through reqwest (replay, record, monitor, the distributed coordinator and workers)
//! builds its clients here; a client built with `reqwest::Client::builder()` directly
//! would panic for want of a provider. Plain `http://` replay traffic does not go through
//! reqwest at all (the replayer's lean HTTP/1.1 client).

use std::sync::Once;

static PROVIDER: Once = Once::new();

/// Installs rustls' `ring` crypto provider as the process default (once; a provider
/// installed before, by this process's own code, is kept).
pub fn install_crypto_provider() {
    PROVIDER.call_once(|| {
        // Err: a default is already installed, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `reqwest::Client::builder()` with the crypto provider installed.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

/// A client with reqwest's defaults (what `reqwest::Client::new()` gives), with the crypto
/// provider installed.
pub fn client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_build_with_tls_on_ring() {
        let _plain = client();
        let built = client_builder().https_only(true).build();
        assert!(built.is_ok(), "{built:?}");
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
