//! # reprise-net — the one way reprise builds an HTTP client
//!
//! reqwest's default TLS stack is rustls on aws-lc-rs, whose C library (aws-lc-sys) was the
//! largest single piece of a cold build of `reprise`. reprise asks reqwest for rustls with
//! no provider and installs rustls' `ring` provider instead, once per process, before any
//! client is built: [`client_builder`] and [`client`] do both. Every crate that talks HTTP
//! through reqwest (replay, record, monitor, the distributed coordinator and workers)
//! builds its clients here; a client built with `reqwest::Client::builder()` directly
//! would panic for want of a provider.
//!
//! Plain `http://` traffic where every microsecond counts — the replayer's requests, the
//! capture proxy's forwarding — does not go through reqwest or hyper's pooled client at all
//! but through [`h1`], a lean HTTP/1.1 client: one buffer written per request on a kept-alive
//! connection of a pool, the response parsed in place.

pub mod h1;

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

/// Whether an I/O error is this process running short (EMFILE, ENFILE, EADDRNOTAVAIL,
/// ENOBUFS, ENOMEM) rather than anything the target did.
pub fn client_shortage(e: &std::io::Error) -> bool {
    if matches!(
        e.kind(),
        std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::OutOfMemory
    ) {
        return true;
    }
    #[cfg(unix)]
    {
        use rustix::io::Errno;
        matches!(
            Errno::from_io_error(e),
            Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS)
        )
    }
    #[cfg(not(unix))]
    {
        false
    }
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

    #[cfg(target_os = "linux")]
    #[test]
    fn shortages_of_this_process_are_the_clients_errors() {
        use std::io::Error;
        // EMFILE, ENFILE, EADDRNOTAVAIL, ENOBUFS (Linux numbers).
        for errno in [24, 23, 99, 105] {
            assert!(client_shortage(&Error::from_raw_os_error(errno)), "{errno}");
        }
        // A refused or reset connection, or a timeout, is the target's.
        for errno in [111, 104, 110] {
            assert!(
                !client_shortage(&Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
    }
}
