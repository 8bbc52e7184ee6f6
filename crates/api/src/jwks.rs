//! Admin signing keys from the identity side's JWKS endpoint (`--admin-jwks https://…`),
//! refreshed while the server runs: periodically, and (rate-limited) when a JWT names a key id
//! no trusted key has. A failed refresh keeps the keys in use and is logged.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use tokio_util::sync::CancellationToken;

use crate::auth::AdminAuthenticator;

/// A JWKS document larger than this is not a JWKS.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

pub struct JwksEndpoint {
    url: reqwest::Url,
    issuer: String,
    audience: String,
    client: reqwest::Client,
    auth: Arc<AdminAuthenticator>,
    /// Refreshes asked for by unknown key ids are at least this far apart, so that made-up key
    /// ids cannot make this service hammer the identity side.
    min_gap: Duration,
    last_on_demand: tokio::sync::Mutex<Option<Instant>>,
}

impl JwksEndpoint {
    /// `extra_ca`: a PEM bundle trusted besides the system's roots (a private identity side).
    pub fn new(
        url: &str,
        extra_ca: Option<&Path>,
        issuer: &str,
        audience: &str,
        auth: Arc<AdminAuthenticator>,
        min_gap: Duration,
    ) -> Result<Self, String> {
        let url = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
        if url.scheme() != "https" {
            return Err("a JWKS URL must use https".into());
        }
        // The process-wide rustls provider (ring, as for the gRPC port); already set is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = extra_ca {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{}: {e}", path.display()))?
            {
                client = client.add_root_certificate(cert);
            }
        }
        Ok(Self {
            url,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            client: client.build().map_err(|e| e.to_string())?,
            auth,
            min_gap,
            last_on_demand: tokio::sync::Mutex::new(None),
        })
    }

    /// Fetches the keys and trusts them instead of the previous ones.
    pub async fn refresh(&self) -> Result<usize, String> {
        self.fetch_and_install().await
    }

    /// For a JWT that names an unknown key id: refreshes unless another such refresh ran within
    /// the minimum gap. Concurrent callers wait for one refresh rather than each starting one.
    pub async fn refresh_for_unknown_key(&self) {
        let mut last = self.last_on_demand.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.min_gap) {
            return;
        }
        *last = Some(Instant::now());
        let _ = self.fetch_and_install().await;
    }

    /// Refreshes every `interval` until `stop`.
    pub async fn keep_fresh(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is now; the keys were fetched at start
        loop {
            tokio::select! {
                _ = ticker.tick() => { let _ = self.refresh().await; }
                () = stop.cancelled() => return,
            }
        }
    }

    async fn fetch_and_install(&self) -> Result<usize, String> {
        let result = self.fetch().await.and_then(|jwks| {
            let skipped = self
                .auth
                .replace_refreshed(&jwks, &self.issuer, &self.audience)
                .map_err(|e| format!("no usable key: {e}"))?;
            for unusable in &skipped {
                tracing::warn!(url = %self.url, reason = %unusable, "skipping a JWKS key");
            }
            Ok(jwks.keys.len() - skipped.len())
        });
        match &result {
            Ok(keys) => tracing::info!(url = %self.url, keys, "admin JWKS refreshed"),
            Err(error) => tracing::warn!(
                url = %self.url,
                %error,
                "admin JWKS refresh failed; keeping the keys in use"
            ),
        }
        result
    }

    async fn fetch(&self) -> Result<JwkSet, String> {
        let mut response = self
            .client
            .get(self.url.clone())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| e.without_url().to_string())?;
        if response
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err("the JWKS document is too large".into());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| e.without_url().to_string())?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err("the JWKS document is too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))
    }
}
