//! The callers of `/oauth2/introspect` (RFC 7662 §2.1), from `--introspection-clients`: one
//! `client_id:<lower-case hex SHA-256 of the secret>` per line, blank lines and `#` comments
//! ignored. Only hashes are stored; a presented secret is hashed and compared in constant time.
//! The file is read again on SIGHUP and when it changes; one that cannot be read or parsed then
//! keeps the clients in use, and the log says why.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

/// How often the file is checked for a change (SIGHUP reloads at once).
const POLL_INTERVAL: Duration = Duration::from_secs(1);
const MAX_CLIENT_ID_BYTES: usize = 128;

/// The clients of one reading of the file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClientList {
    hashes: HashMap<String, [u8; 32]>,
}

impl ClientList {
    /// Every mistake names its line; nothing of a line is quoted (it could hold a secret
    /// pasted by mistake).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut hashes = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fail = |reason: &str| format!("line {}: {reason}", number + 1);
            let (client_id, hash) = line
                .split_once(':')
                .ok_or_else(|| fail("expected client_id:<hex SHA-256 of the secret>"))?;
            check_client_id(client_id).map_err(|reason| fail(&reason))?;
            let hash = parse_hash(hash).ok_or_else(|| {
                fail("the hash must be 64 lower-case hex digits (the SHA-256 of the secret)")
            })?;
            if hashes.insert(client_id.to_owned(), hash).is_some() {
                return Err(fail("this client_id is listed twice"));
            }
        }
        Ok(Self { hashes })
    }

    /// Whether `secret` is the secret of `client_id`. An unknown client costs the same work as
    /// a known one, so timing tells neither which clients exist nor how close a guess came.
    pub fn verify(&self, client_id: &str, secret: &str) -> bool {
        const NONE: [u8; 32] = [0; 32];
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let (stored, known) = match self.hashes.get(client_id) {
            Some(hash) => (hash, true),
            None => (&NONE, false),
        };
        bool::from(presented.ct_eq(stored)) & known
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

/// A client id: 1–128 letters, digits, `-`, `.`, `_` or `~` (RFC 3986's unreserved
/// characters), which read the same whether or not a client form-encodes them for HTTP Basic
/// (RFC 6749 §2.3.1 asks it to; many do not).
pub fn check_client_id(client_id: &str) -> Result<(), String> {
    let fits = (1..=MAX_CLIENT_ID_BYTES).contains(&client_id.len())
        && client_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if fits {
        Ok(())
    } else {
        Err(format!(
            "a client_id is 1 to {MAX_CLIENT_ID_BYTES} letters, digits, '-', '.', '_' or '~'"
        ))
    }
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut hash = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        hash[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(hash)
}

/// A new client: its secret (shown once) and the line to add to the file.
pub fn new_client(client_id: &str) -> Result<(String, String), String> {
    check_client_id(client_id)?;
    let mut bytes = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| format!("cannot read random bytes: {e}"))?;
    let secret = URL_SAFE_NO_PAD.encode(bytes);
    let hash: String = Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((secret, format!("{client_id}:{hash}")))
}

/// What the file looked like when it was last read: a change of any of these reloads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Self> {
        let metadata = std::fs::metadata(path).ok()?;
        Some(Self {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            #[cfg(unix)]
            inode: std::os::unix::fs::MetadataExt::ino(&metadata),
        })
    }
}

/// The clients in use, and where they come from.
#[derive(Debug)]
pub struct IntrospectionClients {
    path: PathBuf,
    current: RwLock<Arc<ClientList>>,
    stamp: Mutex<Option<Stamp>>,
}

impl IntrospectionClients {
    /// Reads the file at start: one that cannot be read or parsed refuses the start.
    pub fn load(path: &Path) -> Result<Self, String> {
        let stamp = Stamp::of(path);
        let list = read(path)?;
        Ok(Self {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(list)),
            stamp: Mutex::new(stamp),
        })
    }

    pub fn current(&self) -> Arc<ClientList> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Reads the file again; on failure the clients in use stay, and the log says why.
    pub fn reload(&self) {
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = Stamp::of(&self.path);
        // A file caught between an editor's truncation and its write reads as empty: refusing
        // every caller for that is worse than keeping the clients in use.
        let read = read(&self.path).and_then(|list| {
            if list.is_empty() && !self.current().is_empty() {
                Err(format!("{}: lists no clients", self.path.display()))
            } else {
                Ok(list)
            }
        });
        match read {
            Ok(list) => {
                tracing::info!(
                    path = %self.path.display(),
                    clients = list.len(),
                    "introspection clients reloaded"
                );
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(list);
            }
            Err(reason) => tracing::warn!(
                path = %self.path.display(),
                %reason,
                "introspection clients not reloaded; keeping the clients in use"
            ),
        }
    }

    fn changed(&self) -> bool {
        let now = Stamp::of(&self.path);
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) != now
    }

    /// Reloads on SIGHUP and when the file changes, until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let signalled = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let signalled = std::future::pending::<Option<()>>();
            tokio::select! {
                () = stop.cancelled() => return,
                _ = signalled => self.reload(),
                _ = poll.tick() => {
                    if self.changed() {
                        self.reload();
                    }
                }
            }
        }
    }
}

fn read(path: &Path) -> Result<ClientList, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    ClientList::parse(&text).map_err(|reason| format!("{}: {reason}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_client_verifies_with_its_secret_only() {
        let (secret, line) = new_client("mcp-gateway").unwrap();
        let list = ClientList::parse(&format!("# gateways\n\n{line}\n")).unwrap();
        assert_eq!(list.len(), 1);
        assert!(list.verify("mcp-gateway", &secret));
        assert!(!list.verify("mcp-gateway", &format!("{secret}x")));
        assert!(!list.verify("other", &secret));
        assert!(!line.contains(&secret));
        assert_eq!(secret.len(), 43);
    }

    #[test]
    fn mistakes_name_their_line_and_quote_nothing() {
        let (_, good) = new_client("a").unwrap();
        for (text, expected) in [
            ("no-colon-here", "line 1: expected"),
            (
                &format!("{good}\n{good}") as &str,
                "line 2: this client_id is listed twice",
            ),
            ("a:ABCDEF", "line 1: the hash must be 64 lower-case hex"),
            (&format!("b c:{}", "0".repeat(64)), "line 1: a client_id is"),
            (
                &format!("b%2B:{}", "0".repeat(64)),
                "line 1: a client_id is",
            ),
            (&format!(":{}", "0".repeat(64)), "line 1: a client_id is"),
        ] {
            let error = ClientList::parse(text).unwrap_err();
            assert!(error.starts_with(expected), "{text:?}: {error}");
            assert!(
                !error.contains("ABCDEF") && !error.contains("no-colon"),
                "{error}"
            );
        }
        assert!(new_client("with:colon").is_err());
        assert!(new_client(&"x".repeat(129)).is_err());
    }

    #[test]
    fn the_hash_is_the_lower_case_hex_sha256_of_the_secret() {
        // sha256("secret")
        let line = "c:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
        let list = ClientList::parse(line).unwrap();
        assert!(list.verify("c", "secret"));
        assert!(ClientList::parse(&line.to_uppercase().replace("C:", "c:")).is_err());
    }
}
