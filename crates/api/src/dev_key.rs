//! The local development admin key: an Ed25519 key the embedded mode creates in the data dir so
//! that `service-accounts admin-token` can mint admin JWTs for grpcurl.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, OctetKeyPairParameters,
    OctetKeyPairType,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rand::TryRngCore;
use rand::rngs::OsRng;
use serde::Serialize;

pub const ISSUER: &str = "service-accounts-dev";
pub const AUDIENCE: &str = "service-accounts";
pub const KEY_ID: &str = "dev";
const FILE_NAME: &str = "admin-dev-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum DevKeyError {
    #[error("cannot use development key {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error(
        "no development admin key in {dir}: the server creates it there when it starts with \
         that --data-dir; pass the --data-dir the server runs with"
    )]
    Missing { dir: PathBuf },
}

pub struct DevKey {
    signing: SigningKey,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    org_id: &'a str,
    roles: &'a [String],
    iat: u64,
    nbf: u64,
    exp: u64,
}

impl DevKey {
    /// Loads the key the server created in `data_dir`. Never creates one: a key minted beside a
    /// server that does not trust it would only make every admin call fail later.
    pub fn load_existing(data_dir: &Path) -> Result<Self, DevKeyError> {
        let path = data_dir.join(FILE_NAME);
        match Self::load(&path) {
            Ok(Some(key)) => Ok(key),
            Ok(None) => Err(DevKeyError::Missing {
                dir: data_dir.to_owned(),
            }),
            Err(reason) => Err(DevKeyError::Io { path, reason }),
        }
    }

    /// Loads the key from `data_dir`, creating the directory and the key (mode 0600) if needed.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, DevKeyError> {
        let path = data_dir.join(FILE_NAME);
        let fail = |reason: String| DevKeyError::Io {
            path: path.clone(),
            reason,
        };
        if let Some(key) = Self::load(&path).map_err(&fail)? {
            return Ok(key);
        }
        fs::create_dir_all(data_dir).map_err(|e| fail(e.to_string()))?;
        let mut seed = [0u8; 32];
        OsRng
            .try_fill_bytes(&mut seed)
            .map_err(|e| fail(e.to_string()))?;
        let signing = SigningKey::from_bytes(&seed);
        let pem = signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| fail(e.to_string()))?;
        // Write a private temporary file, then link it into place: the key appears complete or
        // not at all, and when two processes race, the first link wins and both use its key.
        // The temporary file is created new (never through an existing file or link) with mode
        // 0600 from the start, so the key is never readable by others, not even briefly.
        let temporary = data_dir.join(format!(
            ".{FILE_NAME}.{}.tmp",
            uuid::Uuid::now_v7().simple()
        ));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
        }
        let mut file = options.open(&temporary).map_err(|e| fail(e.to_string()))?;
        file.write_all(pem.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| fail(e.to_string()))?;
        let linked = fs::hard_link(&temporary, &path);
        let _ = fs::remove_file(&temporary);
        match linked {
            Ok(()) => Ok(Self { signing }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(&path)
                .map_err(&fail)?
                .ok_or_else(|| fail("vanished while loading".into())),
            Err(e) => Err(fail(e.to_string())),
        }
    }

    /// Refuses a key that others could read (anyone who reads it can mint admin JWTs), and one
    /// reached through a symbolic link.
    fn load(path: &Path) -> Result<Option<Self>, String> {
        let mut options = OpenOptions::new();
        options.read(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
        let mut file = match options.open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err("is a symbolic link; refusing to follow it".into());
            }
            Err(e) => return Err(e.to_string()),
        };
        let metadata = file.metadata().map_err(|e| e.to_string())?;
        if !metadata.is_file() {
            return Err("is not a regular file".into());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(format!(
                    "is readable or writable by group or others (mode {mode:o}); \
                     run `chmod 600` on it, or delete it to create a new one"
                ));
            }
        }
        let mut pem = String::new();
        std::io::Read::read_to_string(&mut file, &mut pem).map_err(|e| e.to_string())?;
        let signing = SigningKey::from_pkcs8_pem(&pem).map_err(|e| e.to_string())?;
        Ok(Some(Self { signing }))
    }

    /// The public half, as a JWKS.
    pub fn jwks(&self) -> JwkSet {
        let x = URL_SAFE_NO_PAD.encode(self.signing.verifying_key().as_bytes());
        JwkSet {
            keys: vec![Jwk {
                common: CommonParameters {
                    key_id: Some(KEY_ID.into()),
                    ..Default::default()
                },
                algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                    key_type: OctetKeyPairType::OctetKeyPair,
                    curve: EllipticCurve::Ed25519,
                    x,
                }),
            }],
        }
    }

    /// An admin JWT for `user_id` in `org_id`, valid for `ttl`.
    pub fn mint(
        &self,
        org_id: &str,
        user_id: &str,
        roles: &[String],
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            iss: ISSUER,
            aud: AUDIENCE,
            sub: user_id,
            org_id,
            roles,
            iat: now,
            nbf: now,
            exp: now + ttl.as_secs(),
        };
        let der = self
            .signing
            .to_pkcs8_der()
            .map_err(|_| jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey)?;
        let key = EncodingKey::from_ed_der(der.as_bytes());
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(KEY_ID.into());
        encode(&header, &claims, &key)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_key_is_created_private_and_refused_once_others_can_read_it() {
        let dir = tempfile::tempdir().unwrap();
        DevKey::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(FILE_NAME);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        DevKey::load_or_create(dir.path()).expect("its own key loads again");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = DevKey::load_or_create(dir.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("group or others"), "{error}");
    }

    #[test]
    fn loading_an_existing_key_never_creates_one() {
        let dir = tempfile::tempdir().unwrap();
        let error = DevKey::load_existing(dir.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains(&dir.path().display().to_string()), "{error}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

        let created = DevKey::load_or_create(dir.path()).unwrap();
        let loaded = DevKey::load_existing(dir.path()).unwrap();
        assert_eq!(loaded.jwks().keys, created.jwks().keys);
    }

    #[test]
    fn a_key_behind_a_symbolic_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        DevKey::load_or_create(elsewhere.path()).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join(FILE_NAME), dir.path().join(FILE_NAME))
            .unwrap();
        let error = DevKey::load_or_create(dir.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("symbolic link"), "{error}");
    }
}
