//! The salt of session ids and prefix hashes. It lives outside the trace (a file, by default
//! `~/.config/reprise/salt`, created on first use); only its id goes into the metadata, so
//! traces recorded with the same salt can be joined and nothing can be reversed without it.

use std::path::Path;

use rand::RngExt;

/// A secret salt.
#[derive(Clone)]
pub struct Salt {
    key: u64,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Salt").field("id", &self.id()).finish()
    }
}

fn fnv64(seed: u64, data: &[u8]) -> u64 {
    let mut h = seed ^ 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche so that near inputs give unrelated outputs.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl Salt {
    /// A salt from its bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Salt {
            key: fnv64(0x5A17, bytes),
            bytes: bytes.to_vec(),
        }
    }

    /// Reads the salt file, creating it with 32 random bytes (hex) when it does not exist.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) if !bytes.is_empty() => Ok(Self::from_bytes(&bytes)),
            Ok(_) => Err(std::io::Error::other(format!(
                "{}: empty salt file",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut rng = rand::rng();
                let hex: String = (0..32)
                    .map(|_| format!("{:02x}", rng.random::<u8>()))
                    .collect();
                write_private(path, hex.as_bytes())?;
                Ok(Self::from_bytes(hex.as_bytes()))
            }
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            )),
        }
    }

    /// The 64-bit key used for prefix hashes.
    pub fn key(&self) -> u64 {
        self.key
    }

    /// A public id of the salt (a hash of it), stored in the trace's metadata.
    pub fn id(&self) -> String {
        format!("{:016x}", fnv64(0x1D, &self.bytes))
    }

    /// A salted 64-bit hash of `data`, as 16 hex digits.
    pub fn hash_hex(&self, data: &[u8]) -> String {
        format!("{:016x}", fnv64(self.key, data))
    }
}

#[cfg(unix)]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

#[cfg(not(unix))]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_salt_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf/salt");
        let a = Salt::load_or_create(&path).unwrap();
        let b = Salt::load_or_create(&path).unwrap();
        assert_eq!((a.id(), a.key()), (b.id(), b.key()));
        assert_eq!(std::fs::read(&path).unwrap().len(), 64);
        assert_ne!(a.id(), a.hash_hex(&std::fs::read(&path).unwrap()));
        assert_ne!(a.hash_hex(b"x"), Salt::from_bytes(b"other").hash_hex(b"x"));
        assert!(
            !format!("{a:?}").contains(&String::from_utf8(std::fs::read(&path).unwrap()).unwrap())
        );
    }
}
