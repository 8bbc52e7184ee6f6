use proptest::prelude::*;

use super::*;

fn parsed(input: &str) -> Expr {
    parse(input)
        .unwrap_or_else(|e| panic!("{input:?}: {e}"))
        .unwrap_or_else(|| panic!("{input:?} is empty"))
}

fn refused(input: &str) -> FilterError {
    match parse(input) {
        Err(error) => error,
        Ok(expr) => panic!("{input:?} parsed as {expr:?}"),
    }
}

fn compare(name: &str, op: Op, value: Value) -> Expr {
    Expr::Compare(Comparison {
        name: name.into(),
        op,
        value,
        name_at: 0,
        value_at: 0,
    })
}

fn text(value: &str) -> Value {
    Value::Text(value.into())
}

#[test]
fn an_empty_filter_is_no_filter() {
    assert_eq!(parse(""), Ok(None));
    assert_eq!(parse("  \t "), Ok(None));
}

#[test]
fn the_filters_an_admin_asks_for_parse_as_meant() {
    assert_eq!(
        parsed("NOT last_used_time:*"),
        Expr::Not(Box::new(compare("last_used_time", Op::Has, Value::Any)))
    );
    assert_eq!(
        parsed(r#"scopes:"mcp:write""#),
        compare("scopes", Op::Has, text("mcp:write"))
    );
    assert_eq!(
        parsed(r#"expire_time < "2026-12-31T00:00:00Z""#),
        compare("expire_time", Op::Lt, text("2026-12-31T00:00:00Z"))
    );
    for (input, op) in [
        ("a = 1", Op::Eq),
        ("a != 1", Op::Ne),
        ("a < 1", Op::Lt),
        ("a <= 1", Op::Le),
        ("a > 1", Op::Gt),
        ("a >= 1", Op::Ge),
        ("a : 1", Op::Has),
        ("a>=1", Op::Ge),
    ] {
        assert_eq!(parsed(input), compare("a", op, text("1")), "{input}");
    }
}

#[test]
fn or_binds_tighter_than_and_and_side_by_side_means_and() {
    let (a, b, c) = (
        compare("a", Op::Eq, text("1")),
        compare("b", Op::Eq, text("2")),
        compare("c", Op::Eq, text("3")),
    );
    assert_eq!(
        parsed("a = 1 AND b = 2 OR c = 3"),
        Expr::And(vec![a.clone(), Expr::Or(vec![b.clone(), c.clone()])])
    );
    assert_eq!(
        parsed("(a = 1 AND b = 2) OR c = 3"),
        Expr::Or(vec![Expr::And(vec![a.clone(), b.clone()]), c.clone()])
    );
    assert_eq!(
        parsed("a = 1 b = 2 AND c = 3"),
        Expr::And(vec![a.clone(), b.clone(), c.clone()])
    );
    assert_eq!(
        parsed("NOT (a = 1 OR b = 2) c = 3"),
        Expr::And(vec![
            Expr::Not(Box::new(Expr::Or(vec![a.clone(), b.clone()]))),
            c.clone()
        ])
    );
    // Nested groups of one kind are one group.
    assert_eq!(
        parsed("a = 1 AND (b = 2 AND c = 3)"),
        Expr::And(vec![a, b, c])
    );
}

#[test]
fn quoted_values_keep_spaces_colons_and_escaped_quotes() {
    assert_eq!(
        parsed(r#"created_by = "a \"quoted\" name: \\ and more""#),
        compare("created_by", Op::Eq, text(r#"a "quoted" name: \ and more"#))
    );
}

#[test]
fn each_problem_is_reported_at_its_position() {
    let cases: &[(&str, usize, &str)] = &[
        ("state = ", 9, "ends where a value was expected"),
        ("state ~ ACTIVE", 7, "unexpected `~`"),
        ("(state = ACTIVE", 16, "never closed"),
        ("state = ACTIVE)", 15, "without its `(`"),
        (r#"name = "open"#, 8, "never closed"),
        ("State = ACTIVE", 1, "field name"),
        ("state ACTIVE", 7, "comparison operator"),
        ("AND state = ACTIVE", 1, "expected a comparison"),
        (
            "state = ACTIVE OR",
            18,
            "ends where a comparison was expected",
        ),
        ("state ! ACTIVE", 7, "`!` must be followed by `=`"),
        (r#"a = "\n""#, 6, "escapes"),
        ("a = (", 5, "expected a value"),
        ("a = 1 b", 8, "ends after a field name"),
        ("é = 1", 1, "unexpected"),
        ("a = 1 é", 7, "unexpected"),
    ];
    for (input, at, words) in cases {
        let error = refused(input);
        assert_eq!(error.at, *at, "{input:?}: {error}");
        assert!(error.message.contains(words), "{input:?}: {error}");
    }
}

#[test]
fn nesting_is_bounded() {
    let deep = format!("{}a = 1{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
    assert!(parse(&deep).is_ok());
    let deeper = format!(
        "{}a = 1{}",
        "(".repeat(MAX_DEPTH + 1),
        ")".repeat(MAX_DEPTH + 1)
    );
    assert_eq!(refused(&deeper).at, MAX_DEPTH + 1);
    assert!(
        refused(&"NOT ".repeat(MAX_DEPTH + 1))
            .message
            .contains("deeper")
    );
}

#[test]
fn a_canonical_form_longer_than_its_filter_still_parses() {
    // Terse input: the canonical form adds quotes, spaces and `AND`s.
    let terse = (0..400)
        .map(|i| format!("a{i}=1"))
        .collect::<Vec<_>>()
        .join(" ");
    let expr = parsed(&terse);
    let printed = expr.to_string();
    assert!(printed.len() > 2 * terse.len());
    assert_eq!(parse(&printed), Ok(Some(expr)));
}

#[test]
fn the_token_fields_take_their_operators_and_values() {
    for ok in [
        "NOT last_used_time:*",
        r#"scopes:"mcp:write""#,
        r#"expire_time < "2026-12-31T00:00:00Z" AND state = ACTIVE"#,
        r#"last_used_time <= "2026-09-01T00:00:00+02:00""#,
        "revoke_reason = LEAKED OR revoke_reason:*",
        r#"service_account_id = "01a24bcf-88ad-74f0-a8a2-6f19606976a3""#,
        r#"created_by != "user-1""#,
    ] {
        let expr = parsed(ok);
        assert_eq!(expr.check(TOKEN_FIELDS), Ok(()), "{ok}");
    }
    let cases: &[(&str, usize, &str)] = &[
        (
            "owner = me",
            1,
            "unknown field `owner`; known fields: service_account_id",
        ),
        ("state < ACTIVE", 1, "`state` takes `=` and `!=`, not `<`"),
        ("state = GONE", 9, "one of ACTIVE, EXPIRED, REVOKED"),
        ("scopes = x", 1, "takes `:`"),
        (r#"expire_time > "yesterday""#, 15, "RFC 3339"),
        ("create_time:*", 13, "always set"),
        ("state = *", 9, "`*` goes only with `:`"),
        ("state = ACTIVE AND NOT (owner = me)", 25, "unknown field"),
    ];
    for (input, at, words) in cases {
        let error = parsed(input).check(TOKEN_FIELDS).unwrap_err();
        assert_eq!(error.at, *at, "{input:?}: {error}");
        assert!(error.message.contains(words), "{input:?}: {error}");
    }
}

#[test]
fn the_audit_fields_are_their_own() {
    assert_eq!(
        parsed(r#"actor = "u1" AND create_time >= "2026-12-01T00:00:00Z""#).check(AUDIT_FIELDS),
        Ok(())
    );
    assert!(parsed("state = ACTIVE").check(AUDIT_FIELDS).is_err());
}

#[test]
fn the_canonical_form_is_what_the_display_prints() {
    let expr = parsed(r#"a=1 b:x OR NOT (c>2 d<=3) AND e:*"#);
    assert_eq!(
        expr.to_string(),
        r#"a = "1" AND (b:"x" OR NOT (c > "2" AND d <= "3")) AND e:*"#
    );
}

/// Groups of one kind flattened, as the parser makes them.
fn normal(expr: Expr) -> Expr {
    match expr {
        Expr::And(parts) => joined(parts.into_iter().map(normal).collect(), true),
        Expr::Or(parts) => joined(parts.into_iter().map(normal).collect(), false),
        Expr::Not(inner) => Expr::Not(Box::new(normal(*inner))),
        compare => compare,
    }
}

fn any_expr() -> impl Strategy<Value = Expr> {
    let op = prop_oneof![
        Just(Op::Eq),
        Just(Op::Ne),
        Just(Op::Lt),
        Just(Op::Le),
        Just(Op::Gt),
        Just(Op::Ge),
        Just(Op::Has)
    ];
    let value = prop_oneof![
        Just(Value::Any),
        // Anything printable, quotes and backslashes included.
        "[ -~é]{0,12}".prop_map(Value::Text),
    ];
    // A field, a label with a bare key, or a label with any key (quoted when printed).
    let name = prop_oneof![
        "[a-z_][a-z0-9_]{0,8}",
        "[A-Za-z0-9_-]{1,8}".prop_map(|key| format!("labels.{key}")),
        "[ -~é]{0,12}".prop_map(|key| format!("labels.{key}")),
    ];
    let leaf = (name, op, value).prop_filter_map("a keyword is not a name", |(name, op, value)| {
        Some(Expr::Compare(Comparison {
            name,
            op,
            value,
            name_at: 0,
            value_at: 0,
        }))
    });
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::Or),
            inner.prop_map(|e| Expr::Not(Box::new(e))),
        ]
    })
}

proptest! {
    #[test]
    fn printing_then_parsing_gives_the_same_filter(expr in any_expr()) {
        let printed = expr.to_string();
        let reparsed = parse(&printed);
        prop_assert_eq!(reparsed, Ok(Some(normal(expr))), "{}", printed);
    }

    #[test]
    fn any_input_parses_or_is_refused_at_a_position_inside_it(input in "\\PC{0,60}") {
        let length = input.chars().count();
        match parse(&input) {
            Ok(Some(expr)) => {
                // What parses prints in a form that parses to the same filter.
                prop_assert_eq!(parse(&expr.to_string()), Ok(Some(expr.clone())));
                let _ = expr.check(TOKEN_FIELDS);
            }
            Ok(None) => prop_assert!(input.trim().is_empty()),
            Err(error) => prop_assert!((1..=length + 1).contains(&error.at), "{error}"),
        }
    }
}

#[test]
fn the_audit_filter_knows_every_action_and_target_type() {
    use strum::IntoEnumIterator;
    let actions: Vec<&str> = crate::audit::AuditAction::iter()
        .map(|a| a.as_str())
        .collect();
    assert_eq!(AUDIT_ACTIONS, actions.as_slice());
    for action in actions {
        let filter = format!("action = {action:?}");
        assert_eq!(parsed(&filter).check(AUDIT_FIELDS), Ok(()), "{filter}");
    }
    let misspelt = parsed(r#"action = "token.revok""#).check(AUDIT_FIELDS);
    assert_eq!(misspelt.unwrap_err().at, 10);
}

#[test]
fn labels_are_named_by_a_bare_or_quoted_key_after_the_dot() {
    assert_eq!(
        parsed("labels.team = platform"),
        compare("labels.team", Op::Eq, text("platform"))
    );
    // Quoted or not, one key is one name, printed bare when it can be.
    let quoted = parsed(r#"labels."team":*"#);
    assert_eq!(quoted, compare("labels.team", Op::Has, Value::Any));
    assert_eq!(quoted.to_string(), "labels.team:*");
    let managed = parsed(r#"NOT labels."app.embrace.io/managed-by" = apply"#);
    assert_eq!(
        managed,
        Expr::Not(Box::new(compare(
            "labels.app.embrace.io/managed-by",
            Op::Eq,
            text("apply")
        )))
    );
    assert_eq!(
        managed.to_string(),
        r#"NOT labels."app.embrace.io/managed-by" = "apply""#
    );
    // Positions are where the name and the value were written.
    let Expr::And(parts) = parsed(r#"state = ACTIVE labels."a/b" != x"#) else {
        panic!("two comparisons")
    };
    let Expr::Compare(label) = &parts[1] else {
        panic!("{parts:?}")
    };
    assert_eq!(
        (label.name.as_str(), label.name_at, label.value_at),
        ("labels.a/b", 16, 32)
    );
}

#[test]
fn a_label_key_that_is_not_bare_must_be_quoted_right_after_the_dot() {
    let cases: &[(&str, usize, &str)] = &[
        ("labels.app.embrace.io = x", 11, "is quoted"),
        ("labels.team* = x", 12, "is quoted"),
        ("labels. \"team\" = x", 8, "right after `labels.`"),
        ("labels. = x", 8, "right after `labels.`"),
        ("labels.", 8, "right after `labels.`"),
        ("a = 1 labels.(x) = 1", 14, "right after `labels.`"),
        ("labels.app.embrace.io/managed-by = apply", 11, "is quoted"),
    ];
    for (input, at, words) in cases {
        let error = refused(input);
        assert_eq!(error.at, *at, "{input:?}: {error}");
        assert!(error.message.contains(words), "{input:?}: {error}");
    }
}

#[test]
fn the_account_fields_take_labels_by_any_valid_key_and_other_listings_do_not() {
    for ok in [
        "labels.team = platform",
        r#"labels."app.embrace.io/managed-by" = apply AND state = ACTIVE"#,
        "NOT labels.team:* OR labels.team != \"\"",
        r#"display_name = "CI Pipeline" state = DISABLED"#,
    ] {
        assert_eq!(parsed(ok).check(ACCOUNT_FIELDS), Ok(()), "{ok}");
    }
    let cases: &[(&str, usize, &str)] = &[
        (
            "labels.team < x",
            1,
            "`labels.team` takes `=` and `!=`, not `<` (and `:*`)",
        ),
        ("labels.team:x", 1, "takes `=` and `!=`, not `:`"),
        (r#"labels."bad key" = x"#, 8, "the key's name must be"),
        (
            r#"labels."Up.io/x" = x"#,
            8,
            "prefix must be a DNS subdomain",
        ),
        (r#"labels.team = "two words""#, 15, "the value must be"),
        (
            "labels = x",
            1,
            "known fields: display_name, state, labels.<key>",
        ),
        ("state = EXPIRED", 9, "one of ACTIVE, DISABLED"),
        ("display_name:*", 14, "always set"),
        ("owner = me", 1, "unknown field `owner`"),
    ];
    for (input, at, words) in cases {
        let error = parsed(input).check(ACCOUNT_FIELDS).unwrap_err();
        assert_eq!(error.at, *at, "{input:?}: {error}");
        assert!(error.message.contains(words), "{input:?}: {error}");
    }
    for fields in [TOKEN_FIELDS, AUDIT_FIELDS] {
        let error = parsed("labels.team = platform").check(fields).unwrap_err();
        assert_eq!(error.at, 1);
        assert!(
            error.message.contains("unknown field `labels.team`"),
            "{error}"
        );
    }
    // An error quotes at most 64 bytes of a name.
    let long = format!(r#"labels."{}" = x"#, "k".repeat(300));
    let error = parsed(&long).check(TOKEN_FIELDS).unwrap_err();
    assert!(error.message.contains(&"k".repeat(50)), "{error}");
    assert!(!error.message.contains(&"k".repeat(60)), "{error}");
}
