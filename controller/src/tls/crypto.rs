//! The one place the rustls crypto provider (ring) is built; everything
//! that signs, verifies or draws randomness for TLS goes through it.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

/// The crypto provider every TLS configuration and key check uses.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// `N` random bytes from the operating system, through the provider.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // ring's SystemRandom only fails if the OS has no randomness at all.
    if provider().secure_random.fill(&mut out).is_err() {
        panic!("the operating system's random number generator failed");
    }
    out
}
