use super::*;

#[test]
fn a_database_password_never_shows_in_debug_or_display() {
    let url = DatabaseUrl::parse("postgres://app:hunter2@db.internal:5432/accounts").unwrap();
    let config = ServeConfig::for_tests(Path::new("/tmp"), url.expose());
    for shown in [format!("{url}"), format!("{url:?}"), format!("{config:?}")] {
        assert!(!shown.contains("hunter2"), "{shown}");
    }
    assert!(format!("{url}").contains("app:REDACTED@db.internal"));
    let in_query =
        DatabaseUrl::parse("postgres://app@db/sa?sslmode=require&password=hunter2").unwrap();
    let shown = format!("{in_query:?}");
    assert!(
        !shown.contains("hunter2") && shown.contains("sslmode=require"),
        "{shown}"
    );
    assert_eq!(
        url.expose(),
        "postgres://app:hunter2@db.internal:5432/accounts"
    );
}

/// The one table of flags operators read (docs/operations.md, "## Flags") says what `--help`
/// says: the same flags, environment variables and defaults.
#[test]
fn the_flags_table_in_the_docs_matches_help() {
    use clap::CommandFactory;
    let docs = include_str!("../../../../docs/operations.md");
    let section = docs
        .split("\n## Flags\n")
        .nth(1)
        .expect("a ## Flags section")
        .split("\n## ")
        .next()
        .unwrap();
    let rows: Vec<(String, String, String)> = section
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let unquote = |c: &str| c.trim_matches('`').to_owned();
            (unquote(cells[1]), unquote(cells[2]), cells[3].to_owned())
        })
        .collect();
    let command = Cli::command();
    let flags: Vec<_> = command
        .get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| l != "help" && l != "version"))
        .collect();
    assert!(flags.len() >= 18, "{} flags", flags.len());
    for arg in &flags {
        let flag = format!("--{}", arg.get_long().unwrap());
        let (_, env, default) = rows
            .iter()
            .find(|(f, _, _)| *f == flag)
            .unwrap_or_else(|| panic!("{flag} is missing from the docs' flags table"));
        let help_env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
        assert_eq!(Some(env.clone()), help_env, "{flag}: environment variable");
        if !arg.get_action().takes_values() {
            assert_eq!(default, "`false`", "{flag}: a switch is off by default");
            continue;
        }
        match arg.get_default_values() {
            [value] => assert_eq!(
                default.trim_matches('`'),
                value.to_string_lossy(),
                "{flag}: default"
            ),
            _ => assert!(!default.starts_with('`'), "{flag}: no default in --help"),
        }
    }
    for (flag, _, _) in &rows {
        assert!(
            flags
                .iter()
                .any(|a| format!("--{}", a.get_long().unwrap()) == *flag),
            "the docs list {flag}, which --help does not"
        );
    }
}

/// Every caller that `--tls-client-ca` makes present a certificate is named in its `--help` and
/// in the docs' flags table (tests/e2e/tls.rs shows each of them refused without one).
#[test]
fn the_client_ca_help_names_every_caller_that_needs_a_certificate() {
    use clap::CommandFactory;
    let command = Cli::command();
    let help = command
        .get_arguments()
        .find(|a| a.get_long() == Some("tls-client-ca"))
        .and_then(|a| a.get_help())
        .expect("--tls-client-ca has help")
        .to_string();
    let docs = include_str!("../../../../docs/operations.md");
    let row = docs
        .lines()
        .find(|l| l.starts_with("| `--tls-client-ca`"))
        .expect("a flags table row");
    for caller in [
        "TokenIntrospection",
        "WatchChanges",
        "LeakReporting",
        "Check",
        "/v1/forward-auth",
    ] {
        assert!(
            help.contains(caller),
            "--help does not name {caller}: {help}"
        );
        assert!(row.contains(caller), "the docs do not name {caller}: {row}");
    }
}
