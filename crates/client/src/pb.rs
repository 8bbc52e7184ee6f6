//! Code generated from `proto/`: messages and clients (and server traits with the `server`
//! feature).

#![allow(clippy::doc_lazy_continuation, clippy::doc_overindented_list_items)]

tonic::include_proto!("embrace.serviceaccounts.v1");

/// The encoded descriptor set of our protos, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/service_accounts_descriptor.bin"));

impl std::fmt::Debug for IntrospectRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectRequest")
            .field("token", &"<redacted>")
            .field("org_id", &self.org_id)
            .field("app_id", &self.app_id)
            .field("required_scopes", &self.required_scopes)
            .field("client_ip", &self.client_ip)
            .finish()
    }
}

impl std::fmt::Debug for CreateTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateTokenResponse")
            .field("token", &self.token)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Debug for RotateTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateTokenResponse")
            .field("token", &self.token)
            .field("secret", &"<redacted>")
            .field("previous_token", &self.previous_token)
            .finish()
    }
}

impl std::fmt::Debug for ReportLeakedTokensRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportLeakedTokensRequest")
            .field("tokens", &format_args!("<{} redacted>", self.tokens.len()))
            .field("source", &self.source)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_with_token_plaintexts_redact_them_in_debug() {
        let secret = "emb_sa_SECRETSECRETSECRETSECRETSECRETSECRETSE";
        let request = IntrospectRequest {
            token: secret.into(),
            ..Default::default()
        };
        let response = CreateTokenResponse {
            token: None,
            secret: secret.into(),
        };
        let rotated = RotateTokenResponse {
            secret: secret.into(),
            ..Default::default()
        };
        assert!(!format!("{request:?}").contains("SECRET"));
        assert!(!format!("{response:?}").contains("SECRET"));
        assert!(!format!("{rotated:?}").contains("SECRET"));
        let leaked = ReportLeakedTokensRequest {
            tokens: vec![secret.into()],
            source: "https://example.com".into(),
        };
        assert!(!format!("{leaked:?}").contains("SECRET"));
    }
}
