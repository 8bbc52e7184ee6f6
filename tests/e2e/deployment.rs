//! What can be checked here of the container setup (no Docker engine on this machine): the
//! compose and collector files parse, every variable compose sets is one the binary reads, and
//! the Dockerfile builds with the command CI runs.

use std::path::PathBuf;
use std::process::Command;

use crate::support::BINARY;

fn repo_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Variables read outside clap (so not in `--help`).
const READ_ELSEWHERE: &[&str] = &["RUST_LOG"];

#[test]
fn compose_sets_only_variables_the_binary_reads() {
    let mut compose: serde_norway::Value =
        serde_norway::from_str(&repo_file("docker-compose.yml")).unwrap();
    compose.apply_merge().unwrap();
    let help =
        String::from_utf8(Command::new(BINARY).arg("--help").output().unwrap().stdout).unwrap();
    let services = compose["services"].as_mapping().unwrap();
    let replicas: Vec<_> = services
        .iter()
        .filter(|(name, _)| name.as_str().unwrap().starts_with("service-accounts"))
        .collect();
    assert_eq!(replicas.len(), 2, "two replicas");
    for (name, service) in replicas {
        let environment = service["environment"].as_mapping().unwrap();
        assert!(
            environment.contains_key("DATABASE_URL"),
            "{name:?} uses PostgreSQL"
        );
        for key in environment.keys() {
            let key = key.as_str().unwrap();
            assert!(
                help.contains(&format!("[env: {key}="))
                    || help.contains(&format!("[env: {key}]"))
                    || READ_ELSEWHERE.contains(&key),
                "{name:?} sets {key}, which the binary does not read"
            );
        }
        let endpoint = environment["OTEL_EXPORTER_OTLP_ENDPOINT"].as_str().unwrap();
        assert_eq!(endpoint, "http://otel-collector:4317");
    }
    assert!(services.contains_key("postgres") && services.contains_key("otel-collector"));

    let collector: serde_norway::Value =
        serde_norway::from_str(&repo_file("deploy/otel-collector.yaml")).unwrap();
    assert_eq!(
        collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].as_str(),
        Some("0.0.0.0:4317")
    );
    for pipeline in ["traces", "metrics"] {
        let exporters = &collector["service"]["pipelines"][pipeline]["exporters"];
        assert_eq!(
            exporters[0].as_str(),
            Some("debug"),
            "{pipeline} are printed"
        );
    }
}

#[test]
fn the_dockerfile_builds_with_the_command_ci_runs() {
    let dockerfile = repo_file("Dockerfile");
    let build = dockerfile
        .lines()
        .find_map(|l| {
            l.strip_prefix("RUN ")
                .filter(|c| c.starts_with("cargo build"))
        })
        .expect("a RUN cargo build line");
    let ci = repo_file(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == build),
        "CI does not run `{build}`"
    );
}

/// Whoever reaches a replica that trusts the development key can use any JWT that key signs: in
/// compose, such a replica is published on the host's loopback address only.
#[test]
fn compose_never_publishes_a_replica_that_trusts_the_dev_key_beyond_loopback() {
    let mut compose: serde_norway::Value =
        serde_norway::from_str(&repo_file("docker-compose.yml")).unwrap();
    compose.apply_merge().unwrap();
    let mut checked = 0;
    for (name, service) in compose["services"].as_mapping().unwrap() {
        let trusts_dev_key = service["environment"]["SERVICE_ACCOUNTS_ADMIN_TRUST_DEV_KEY"]
            .as_str()
            .is_some_and(|v| v == "true");
        if !trusts_dev_key {
            continue;
        }
        let ports = service["ports"]
            .as_sequence()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for port in ports {
            let port = port.as_str().unwrap();
            assert!(
                port.starts_with("127.0.0.1:") || port.starts_with("[::1]:"),
                "{name:?} trusts the dev key and publishes {port:?} beyond loopback"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "the check saw no published port");
}
