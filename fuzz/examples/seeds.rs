// Writes the seed corpus: `cargo +nightly run --example seeds [CORPUS_DIR]` from `fuzz/`
// (CORPUS_DIR defaults to `fuzz/corpus`). Each seed is a valid input of its target (a generated
// token, a real page token, a minted JWT, encoded valid requests) or a near miss. Existing
// files of the same name are overwritten; nothing libFuzzer added is removed.
// (Plain comments, not `//!`, so that the file can also be `include!`d.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use service_accounts_api::pb;
use service_accounts_domain::ids::{ServiceAccountId, TokenId};
use service_accounts_domain::page::{Listing, Page, PageSize};
use service_accounts_domain::token::TokenSecret;
use service_accounts_fuzz::{DEFAULT_JWT_HEADER, JwtFixture, REQUEST_KINDS};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let dir = root.join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn request<M: Message>(kind: &str, name: &str, message: &M) {
    let index = REQUEST_KINDS.iter().position(|k| *k == kind).unwrap() as u8;
    let mut bytes = vec![index];
    message.encode(&mut bytes).unwrap();
    write("requests", &format!("{kind}-{name}"), &bytes);
}

fn main() {
    // token_parse
    let token = TokenSecret::generate();
    write("token_parse", "valid", token.expose().as_bytes());
    let mut changed = token.expose().as_bytes().to_vec();
    changed[20] = if changed[20] == b'A' { b'B' } else { b'A' };
    write("token_parse", "one-character-changed", &changed);
    write("token_parse", "prefix-only", b"emb_sa_");
    write(
        "token_parse",
        "product-page-example",
        b"emb_sa_AbCdEf0123456789-_XyZ9876543210abcdef1234567",
    );

    // page_token: mode byte, page size (i32 LE), token
    let listings = [
        (0u8, Listing::ServiceAccounts, "sa"),
        (1, Listing::Tokens, "tk"),
        (2, Listing::AuditEvents, "ae"),
    ];
    for (mode, listing, tag) in listings {
        let ids = vec![uuid::Uuid::now_v7(), uuid::Uuid::now_v7()];
        let page = Page::from_rows(listing, ids.clone(), PageSize::parse(1).unwrap(), |id| *id);
        let mut bytes = vec![mode];
        bytes.extend_from_slice(&25i32.to_le_bytes());
        bytes.extend_from_slice(page.next_page_token.as_bytes());
        write("page_token", &format!("{tag}-real-token"), &bytes);
        // The same, with the decoded text given raw (mode bit 2).
        let mut bytes = vec![mode | 4];
        bytes.extend_from_slice(&0i32.to_le_bytes());
        bytes.extend_from_slice(format!("{tag}:{}", ids[0].hyphenated()).as_bytes());
        write("page_token", &format!("{tag}-decoded-text"), &bytes);
    }
    write(
        "page_token",
        "empty-token-negative-size",
        &[0, 0xff, 0xff, 0xff, 0xff],
    );

    // admin_jwt: mode byte, then the mode's input
    let fixture = JwtFixture::get();
    let minted = fixture
        .dev_key
        .mint(
            "acme",
            "alice",
            &["org_admin".into()],
            Duration::from_secs(600),
        )
        .unwrap();
    write(
        "admin_jwt",
        "metadata-minted",
        format!("\0Bearer {minted}").as_bytes(),
    );
    write(
        "admin_jwt",
        "bearer-minted",
        format!("\x01{minted}").as_bytes(),
    );
    let claims = br#"{"iss":"service-accounts-dev","aud":"service-accounts","sub":"alice","org_id":"acme","roles":["org_admin"],"iat":$NOW,"nbf":$NOW,"exp":$LATER}"#;
    write(
        "admin_jwt",
        "signed-claims",
        &[b"\x02", &claims[..]].concat(),
    );
    write(
        "admin_jwt",
        "signed-header-and-claims",
        &[b"\x03", DEFAULT_JWT_HEADER, b"\0", &claims[..]].concat(),
    );
    let mut mint = vec![4u8];
    mint.extend_from_slice(&600u16.to_le_bytes());
    mint.extend_from_slice(b"acme\0alice\0org_admin");
    write("admin_jwt", "mint-arguments", &mint);

    // requests: kind byte, then the encoded message
    let account = ServiceAccountId::generate().to_string();
    let token_id = TokenId::generate().to_string();
    let apps = pb::AppAccess {
        all_apps: false,
        app_ids: vec!["app1".into(), "app-2".into()],
    };
    let page_token = Page::from_rows(
        Listing::Tokens,
        vec![uuid::Uuid::now_v7(), uuid::Uuid::now_v7()],
        PageSize::parse(1).unwrap(),
        |id| *id,
    )
    .next_page_token;
    request(
        "CreateServiceAccountRequest",
        "valid",
        &pb::CreateServiceAccountRequest {
            validate_only: false,
            labels: Default::default(),
            display_name: "CI pipeline".into(),
            description: "Deploys".into(),
            app_access: Some(apps.clone()),
        },
    );
    request(
        "CreateServiceAccountRequest",
        "invalid",
        &pb::CreateServiceAccountRequest {
            validate_only: false,
            labels: Default::default(),
            display_name: " ".into(),
            description: "a\u{1}b".into(),
            app_access: Some(pb::AppAccess {
                all_apps: true,
                app_ids: vec!["x y".into()],
            }),
        },
    );
    request(
        "GetServiceAccountRequest",
        "valid",
        &pb::GetServiceAccountRequest {
            service_account_id: account.clone(),
        },
    );
    request(
        "DeleteServiceAccountRequest",
        "valid",
        &pb::DeleteServiceAccountRequest {
            validate_only: false,
            service_account_id: account.clone(),
        },
    );
    request(
        "ListServiceAccountsRequest",
        "valid",
        &pb::ListServiceAccountsRequest {
            filter: String::new(),
            page_size: 10,
            page_token: String::new(),
        },
    );
    request(
        "ListServiceAccountsRequest",
        "foreign-token",
        &pb::ListServiceAccountsRequest {
            filter: String::new(),
            page_size: -1,
            page_token: page_token.clone(),
        },
    );
    request(
        "UpdateServiceAccountRequest",
        "masked",
        &pb::UpdateServiceAccountRequest {
            validate_only: false,
            service_account: Some(pb::ServiceAccount {
                service_account_id: account.clone(),
                display_name: "Renamed".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["display_name".into(), "app_access".into(), "*".into()],
            }),
        },
    );
    request(
        "UpdateServiceAccountRequest",
        "unmasked",
        &pb::UpdateServiceAccountRequest {
            validate_only: false,
            service_account: Some(pb::ServiceAccount {
                service_account_id: account.clone(),
                description: "New".into(),
                ..Default::default()
            }),
            update_mask: None,
        },
    );
    request(
        "SetAppAccessRequest",
        "valid",
        &pb::SetAppAccessRequest {
            validate_only: false,
            service_account_id: account.clone(),
            app_access: Some(apps.clone()),
        },
    );
    request(
        "GrantAppAccessRequest",
        "valid",
        &pb::GrantAppAccessRequest {
            validate_only: false,
            service_account_id: account.clone(),
            app_ids: vec!["app1".into()],
        },
    );
    request(
        "RevokeAppAccessRequest",
        "invalid",
        &pb::RevokeAppAccessRequest {
            validate_only: false,
            service_account_id: "nope".into(),
            app_ids: vec!["".into(); 25],
        },
    );
    request(
        "CreateTokenRequest",
        "valid",
        &pb::CreateTokenRequest {
            validate_only: false,
            service_account_id: account.clone(),
            display_name: "deploy".into(),
            scopes: vec!["mcp:tools:call".into(), "mcp:read".into()],
            expire_time: Some(prost_types::Timestamp {
                seconds: 4_102_444_800,
                nanos: 0,
            }),
            allowed_cidrs: vec!["10.0.0.0/8".into(), "2001:db8::1".into()],
        },
    );
    request(
        "CreateTokenRequest",
        "invalid",
        &pb::CreateTokenRequest {
            validate_only: false,
            service_account_id: account.clone(),
            display_name: String::new(),
            scopes: vec!["mcp:write".into()],
            expire_time: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: -1,
            }),
            allowed_cidrs: vec!["10.0.0.0/33".into()],
        },
    );
    request(
        "ListTokensRequest",
        "valid",
        &pb::ListTokensRequest {
            order_by: String::new(),
            filter: String::new(),
            service_account_id: account.clone(),
            page_size: 2,
            page_token,
        },
    );
    request(
        "RevokeTokenRequest",
        "valid",
        &pb::RevokeTokenRequest {
            validate_only: false,
            service_account_id: account.clone(),
            token_id: token_id.clone(),
        },
    );
    request("ListScopesRequest", "valid", &pb::ListScopesRequest {});
    request(
        "ListAuditEventsRequest",
        "valid",
        &pb::ListAuditEventsRequest {
            order_by: String::new(),
            filter: String::new(),
            page_size: 1000,
            page_token: String::new(),
        },
    );
    let duration = |seconds: i64, nanos: i32| Some(prost_types::Duration { seconds, nanos });
    request(
        "DisableServiceAccountRequest",
        "valid",
        &pb::DisableServiceAccountRequest {
            validate_only: false,
            service_account_id: account.clone(),
        },
    );
    request(
        "EnableServiceAccountRequest",
        "invalid",
        &pb::EnableServiceAccountRequest {
            validate_only: false,
            service_account_id: "nope".into(),
        },
    );
    request(
        "RotateTokenRequest",
        "valid",
        &pb::RotateTokenRequest {
            validate_only: false,
            service_account_id: account.clone(),
            token_id: token_id.clone(),
            grace_period: duration(3600, 0),
            expire_time: None,
        },
    );
    request(
        "RotateTokenRequest",
        "invalid",
        &pb::RotateTokenRequest {
            validate_only: false,
            service_account_id: account.clone(),
            token_id: String::new(),
            grace_period: duration(-1, 5),
            expire_time: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
        },
    );
    request(
        "UpdateTokenRequest",
        "valid",
        &pb::UpdateTokenRequest {
            validate_only: false,
            token: Some(pb::Token {
                service_account_id: account.clone(),
                token_id: token_id.clone(),
                display_name: "renamed".into(),
                allowed_cidrs: vec!["192.0.2.0/24".into()],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["*".into()],
            }),
        },
    );
    request(
        "ListExpiringTokensRequest",
        "valid",
        &pb::ListExpiringTokensRequest {
            within: duration(604_800, 0),
            page_size: 10,
            page_token: String::new(),
        },
    );
    request("GetTokenPolicyRequest", "valid", &pb::GetTokenPolicyRequest {});
    request(
        "UpdateTokenPolicyRequest",
        "valid",
        &pb::UpdateTokenPolicyRequest {
            validate_only: false,
            token_policy: Some(pb::TokenPolicy {
                max_lifetime: duration(7_776_000, 0),
                default_lifetime: duration(2_592_000, 0),
            }),
            update_mask: None,
        },
    );
    request(
        "IntrospectRequest",
        "valid",
        &pb::IntrospectRequest {
            token: TokenSecret::generate().expose().into(),
            org_id: "acme".into(),
            app_id: "app1".into(),
            required_scopes: vec!["mcp:read".into()],
            client_ip: "192.0.2.1".into(),
        },
    );
    request(
        "IntrospectRequest",
        "app-without-org",
        &pb::IntrospectRequest {
            token: String::new(),
            org_id: String::new(),
            app_id: "app1".into(),
            required_scopes: vec!["nope".into()],
            client_ip: "not an address".into(),
        },
    );

    // oauth2_form: mode byte (0 form body, 1 Basic credentials, 2 clients file), then the input
    let token = TokenSecret::generate();
    let form = format!(
        "token={}&token_type_hint=access_token&org_id=acme&app_id=checkout-ios\
         &required_scopes=mcp%3Aread+mcp%3Awrite&client_ip=10.1.2.3",
        token.expose()
    );
    write("oauth2_form", "form", &[&[0u8][..], form.as_bytes()].concat());
    write(
        "oauth2_form",
        "form-credentials",
        b"\0token=x&client_id=mcp-gateway&client_secret=s%25%2B+",
    );
    write("oauth2_form", "basic", b"\x01mcp%3Agateway:se%25cret+x");
    let (_, line) =
        service_accounts_api::introspection_clients::new_client("mcp-gateway").unwrap();
    write(
        "oauth2_form",
        "clients-file",
        format!("\x02# resource servers\n\n{line}\nempty:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n")
            .as_bytes(),
    );
}
