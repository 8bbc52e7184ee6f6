//! List filters: the subset of AIP-160 that SPEC §22 names. A filter is parsed into a tree whose
//! names and values remember where they were, so that an error points at its position, then
//! checked against the fields of one listing ([`Field`]). [`Expr`]'s `Display` prints the
//! canonical form, which parses back to the same tree.
//!
//! Grammar (AIP-160's precedence: `OR` binds tighter than `AND`, and two terms side by side are
//! joined by `AND`):
//!
//! ```text
//! filter      = [ expression ]
//! expression  = factor { [ "AND" ] factor }
//! factor      = term { "OR" term }
//! term        = [ "NOT" ] ( "(" expression ")" | comparison )
//! comparison  = name ( "=" | "!=" | "<" | "<=" | ">" | ">=" | ":" ) value
//! name        = field | "labels." ( key | string )
//! value       = word | string | "*"
//! string      = "\"" { char | "\\\"" | "\\\\" } "\""
//! ```
//!
//! Fields are `[a-z_][a-z0-9_]*`; a bare word is `[A-Za-z0-9_.+-]+`. Values with anything else in
//! them (an RFC 3339 timestamp's `:`, a scope's `:`, spaces) are quoted. A label is named by
//! `labels.` and its key, bare when it is `[A-Za-z0-9_-]+`, else quoted right after the dot
//! (`labels."app.embrace.io/managed-by"`); the name is then `labels.` and the key.

use std::fmt;

use crate::labels;
use crate::time::Timestamp;

/// Deepest nesting of parentheses and `NOT`s accepted.
pub const MAX_DEPTH: usize = 32;

/// Why a filter was refused, and where: `at` is the 1-based position (in characters) of the
/// problem, or one past the end when the filter stopped too early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    pub at: usize,
    pub message: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at position {}: {}", self.at, self.message)
    }
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Every one holds (two or more).
    And(Vec<Expr>),
    /// Any one holds (two or more).
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Compare(Comparison),
}

/// `name op value`. Equal when the name, operator and value are: positions are where it was
/// written, not what it means.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub name: String,
    pub op: Op,
    pub value: Value,
    /// Where the name and the value start (1-based characters); not part of the meaning.
    pub name_at: usize,
    pub value_at: usize,
}

impl PartialEq for Comparison {
    fn eq(&self, other: &Self) -> bool {
        (&self.name, self.op, &self.value) == (&other.name, other.op, &other.value)
    }
}

impl Eq for Comparison {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `:`: for a list, "contains"; with `*`, "is set".
    Has,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Has => ":",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    /// `*`: any value (`field:*`, "is set").
    Any,
}

/// Parses a filter; `Ok(None)` for an empty one (no filter).
///
/// Any length: parsing is linear, and nesting is bounded by [`MAX_DEPTH`]. How long a request's
/// filter may be is checked where the request is read, like every other field; a canonical form
/// can be longer than the filter it was printed from (quotes, spaces, `AND`s), and still parses.
pub fn parse(input: &str) -> Result<Option<Expr>, FilterError> {
    let tokens = lex(input)?;
    let mut parser = Parser {
        tokens,
        next: 0,
        end: input.chars().count() + 1,
        depth: 0,
    };
    if parser.peek().is_none() {
        return Ok(None);
    }
    let expr = parser.expression()?;
    match parser.peek() {
        None => Ok(Some(expr)),
        Some((Token::Close, at)) => Err(error(at, "a `)` without its `(`")),
        Some((_, at)) => Err(error(at, "expected `AND`, `OR` or the end of the filter")),
    }
}

fn error(at: usize, message: impl Into<String>) -> FilterError {
    FilterError {
        at,
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    And,
    Or,
    Not,
    Op(Op),
    Word(String),
    Quoted(String),
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-' | '*')
}

/// The tokens with their 1-based character positions.
fn lex(input: &str) -> Result<Vec<(Token, usize)>, FilterError> {
    let mut tokens = Vec::new();
    let mut chars = input.chars().enumerate().peekable();
    while let Some((i, c)) = chars.next() {
        let at = i + 1;
        let token = match c {
            c if c.is_whitespace() => continue,
            '(' => Token::Open,
            ')' => Token::Close,
            '=' => Token::Op(Op::Eq),
            ':' => Token::Op(Op::Has),
            '<' | '>' | '!' => {
                let equals = chars.next_if(|(_, c)| *c == '=').is_some();
                Token::Op(match (c, equals) {
                    ('<', false) => Op::Lt,
                    ('<', true) => Op::Le,
                    ('>', false) => Op::Gt,
                    ('>', true) => Op::Ge,
                    ('!', true) => Op::Ne,
                    _ => return Err(error(at, "`!` must be followed by `=`")),
                })
            }
            '"' => {
                let mut text = String::new();
                loop {
                    match chars.next() {
                        None => return Err(error(at, "a string that is never closed")),
                        Some((_, '"')) => break,
                        Some((j, '\\')) => match chars.next() {
                            Some((_, escaped @ ('"' | '\\'))) => text.push(escaped),
                            _ => return Err(error(j + 1, "only `\\\"` and `\\\\` are escapes")),
                        },
                        Some((j, c)) if c.is_control() => {
                            return Err(error(j + 1, "a control character in a string"));
                        }
                        Some((_, c)) => text.push(c),
                    }
                }
                Token::Quoted(text)
            }
            c if is_word(c) => {
                let mut word = String::from(c);
                while let Some((_, c)) = chars.next_if(|(_, c)| is_word(*c)) {
                    word.push(c);
                }
                match word.as_str() {
                    "AND" => Token::And,
                    "OR" => Token::Or,
                    "NOT" => Token::Not,
                    _ => Token::Word(word),
                }
            }
            _ => return Err(unexpected(&tokens, c, at)),
        };
        tokens.push((token, at));
    }
    Ok(tokens)
}

/// An unexpected character; in an unquoted label key (`labels.example.com/team`), the hint to
/// quote it, where the key stops being bare.
fn unexpected(before: &[(Token, usize)], c: char, at: usize) -> FilterError {
    if let Some((Token::Word(word), word_at)) = before.last()
        && let Some(key) = word.strip_prefix(LABELS)
        && word_at + word.chars().count() == at
    {
        let bare = key.chars().take_while(|c| is_bare_key(*c)).count();
        return error(word_at + LABELS.len() + bare, QUOTE_THE_KEY);
    }
    error(at, format!("unexpected `{}`", c.escape_default()))
}

const QUOTE_THE_KEY: &str = "a label key with characters other than letters, digits, `_` and \
                             `-` is quoted: labels.\"app.embrace.io/managed-by\"";

struct Parser {
    tokens: Vec<(Token, usize)>,
    next: usize,
    /// One past the last character: where "the filter ended early" points.
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<(Token, usize)> {
        self.tokens.get(self.next).cloned()
    }

    fn take(&mut self) -> Option<(Token, usize)> {
        let token = self.peek();
        self.next += usize::from(token.is_some());
        token
    }

    fn expression(&mut self) -> Result<Expr, FilterError> {
        let mut all = vec![self.factor()?];
        loop {
            match self.peek() {
                Some((Token::And, _)) => {
                    self.next += 1;
                }
                Some((Token::Open | Token::Not | Token::Word(_), _)) => {}
                _ => break,
            }
            all.push(self.factor()?);
        }
        Ok(joined(all, true))
    }

    fn factor(&mut self) -> Result<Expr, FilterError> {
        let mut any = vec![self.term()?];
        while let Some((Token::Or, _)) = self.peek() {
            self.next += 1;
            any.push(self.term()?);
        }
        Ok(joined(any, false))
    }

    fn term(&mut self) -> Result<Expr, FilterError> {
        self.depth += 1;
        let term = self.term_within_depth();
        self.depth -= 1;
        term
    }

    fn term_within_depth(&mut self) -> Result<Expr, FilterError> {
        let Some((token, at)) = self.take() else {
            return Err(error(
                self.end,
                "the filter ends where a comparison was expected",
            ));
        };
        if matches!(token, Token::Not | Token::Open) && self.depth > MAX_DEPTH {
            return Err(error(at, format!("nested deeper than {MAX_DEPTH}")));
        }
        match token {
            Token::Not => Ok(Expr::Not(Box::new(self.term()?))),
            Token::Open => {
                let inner = self.expression()?;
                match self.take() {
                    Some((Token::Close, _)) => Ok(inner),
                    Some((_, at)) => Err(error(at, "expected `)`")),
                    None => Err(error(self.end, "a `(` that is never closed")),
                }
            }
            Token::Word(name) => self.comparison(name, at),
            _ => Err(error(at, "expected a comparison such as `state = ACTIVE`")),
        }
    }

    fn comparison(&mut self, name: String, name_at: usize) -> Result<Expr, FilterError> {
        let name = match name.strip_prefix(LABELS) {
            Some(key) => self.label_name(key, name_at)?,
            None => {
                let name_ok = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !name_ok {
                    return Err(error(name_at, "expected a field name such as `state`"));
                }
                name
            }
        };
        let op = match self.take() {
            Some((Token::Op(op), _)) => op,
            Some((_, at)) => {
                return Err(error(
                    at,
                    "expected a comparison operator (`=`, `!=`, `<`, `<=`, `>`, `>=` or `:`)",
                ));
            }
            None => return Err(error(self.end, "the filter ends after a field name")),
        };
        let (value, value_at) = match self.take() {
            Some((Token::Word(word), at)) if word == "*" => (Value::Any, at),
            Some((Token::Word(word) | Token::Quoted(word), at)) => (Value::Text(word), at),
            Some((_, at)) => return Err(error(at, "expected a value")),
            None => {
                return Err(error(
                    self.end,
                    "the filter ends where a value was expected",
                ));
            }
        };
        Ok(Expr::Compare(Comparison {
            name,
            op,
            value,
            name_at,
            value_at,
        }))
    }

    /// The name of a label: `key` is what followed `labels.` in the word, or, when nothing did,
    /// the string right after the dot is the key.
    fn label_name(&mut self, key: &str, name_at: usize) -> Result<String, FilterError> {
        let key_at = name_at + LABELS.len();
        if !key.is_empty() {
            return match key.chars().position(|c| !is_bare_key(c)) {
                None => Ok(format!("{LABELS}{key}")),
                Some(i) => Err(error(key_at + i, QUOTE_THE_KEY)),
            };
        }
        match self.peek() {
            Some((Token::Quoted(key), at)) if at == key_at => {
                self.next += 1;
                Ok(format!("{LABELS}{key}"))
            }
            _ => Err(error(
                key_at,
                "expected a label key right after `labels.`, such as `labels.team` or \
                 `labels.\"app.embrace.io/managed-by\"`",
            )),
        }
    }
}

/// What names a label: `labels.` and its key.
const LABELS: &str = "labels.";

/// A character of a label key written without quotes.
fn is_bare_key(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
}

/// One expression, or several joined (flattened: `a AND (b AND c)` is one `AND` of three).
fn joined(parts: Vec<Expr>, and: bool) -> Expr {
    let mut flat = Vec::with_capacity(parts.len());
    for part in parts {
        match part {
            Expr::And(inner) if and => flat.extend(inner),
            Expr::Or(inner) if !and => flat.extend(inner),
            part => flat.push(part),
        }
    }
    match (flat.len(), and) {
        (1, _) => flat.remove(0),
        (_, true) => Expr::And(flat),
        (_, false) => Expr::Or(flat),
    }
}

/// The canonical form: keywords upper case, values quoted, parentheses only where needed.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::And(all) => write_group(f, all, " AND "),
            Expr::Or(any) => write_group(f, any, " OR "),
            Expr::Not(inner) => {
                f.write_str("NOT ")?;
                write_part(f, inner, matches!(**inner, Expr::And(_) | Expr::Or(_)))
            }
            Expr::Compare(c) => {
                let spaced = c.op != Op::Has;
                let gap = if spaced { " " } else { "" };
                match c.name.strip_prefix(LABELS) {
                    Some(key) if !key.is_empty() && key.chars().all(is_bare_key) => {
                        f.write_str(&c.name)?
                    }
                    Some(key) => {
                        f.write_str(LABELS)?;
                        write_string(f, key)?;
                    }
                    None => f.write_str(&c.name)?,
                }
                write!(f, "{gap}{}{gap}", c.op.as_str())?;
                match &c.value {
                    Value::Any => f.write_str("*"),
                    Value::Text(text) => write_string(f, text),
                }
            }
        }
    }
}

/// `text` quoted, with `"` and `\` escaped.
fn write_string(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    f.write_str("\"")?;
    for ch in text.chars() {
        if matches!(ch, '"' | '\\') {
            f.write_str("\\")?;
        }
        write!(f, "{ch}")?;
    }
    f.write_str("\"")
}

/// `OR` binds tighter than `AND`, so an `OR` inside an `AND` needs no parentheses; it gets them
/// anyway, for readers who expect the opposite.
fn write_group(f: &mut fmt::Formatter<'_>, parts: &[Expr], separator: &str) -> fmt::Result {
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            f.write_str(separator)?;
        }
        write_part(f, part, matches!(part, Expr::And(_) | Expr::Or(_)))?;
    }
    Ok(())
}

fn write_part(f: &mut fmt::Formatter<'_>, part: &Expr, parenthesized: bool) -> fmt::Result {
    if parenthesized {
        write!(f, "({part})")
    } else {
        write!(f, "{part}")
    }
}

/// What a listing's filter may name, and how.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    /// May be unset (then `name:*` asks whether it is set).
    pub optional: bool,
}

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Compared with `=` and `!=`.
    Text,
    /// One of these values, compared with `=` and `!=`.
    Enum(&'static [&'static str]),
    /// Compared with `=`, `!=`, `<`, `<=`, `>` and `>=` to an RFC 3339 time.
    Time,
    /// A list, asked with `:` whether it contains a value.
    List,
    /// Labels, each named `labels.<key>` (a valid label key) and compared with `=` and `!=` to
    /// a valid label value; `labels.<key>:*` asks whether the label is set.
    Labels,
}

impl Expr {
    /// Checks every comparison against `fields`: the field exists, the operator suits it, and the
    /// value reads as its kind. The first problem is reported, with its position.
    pub fn check(&self, fields: &[Field]) -> Result<(), FilterError> {
        match self {
            Expr::And(parts) | Expr::Or(parts) => {
                parts.iter().try_for_each(|part| part.check(fields))
            }
            Expr::Not(inner) => inner.check(fields),
            Expr::Compare(c) => check_comparison(c, fields),
        }
    }
}

fn check_comparison(c: &Comparison, fields: &[Field]) -> Result<(), FilterError> {
    let Some(field) = fields.iter().find(|f| f.names(&c.name)) else {
        let known: Vec<String> = fields
            .iter()
            .map(|f| match f.kind {
                Kind::Labels => format!("{}.<key>", f.name),
                _ => f.name.to_owned(),
            })
            .collect();
        return Err(error(
            c.name_at,
            format!(
                "unknown field `{}`; known fields: {}",
                cut(&c.name),
                known.join(", ")
            ),
        ));
    };
    if let Kind::Labels = field.kind {
        let key = &c.name[field.name.len() + 1..];
        labels::check_key(key).map_err(|e| error(c.name_at + field.name.len() + 1, e.0))?;
    }
    let text = match (&c.value, c.op) {
        (Value::Any, Op::Has) if field.optional => return Ok(()),
        (Value::Any, Op::Has) => {
            return Err(error(c.value_at, format!("`{}` is always set", field.name)));
        }
        (Value::Any, _) => return Err(error(c.value_at, "`*` goes only with `:`")),
        (Value::Text(text), _) => text,
    };
    let op_ok = match field.kind {
        Kind::Text | Kind::Enum(_) | Kind::Labels => matches!(c.op, Op::Eq | Op::Ne),
        Kind::Time => c.op != Op::Has,
        Kind::List => c.op == Op::Has,
    };
    if !op_ok {
        let allowed = match field.kind {
            Kind::Text | Kind::Enum(_) | Kind::Labels => "`=` and `!=`",
            Kind::Time => "`=`, `!=`, `<`, `<=`, `>` and `>=`",
            Kind::List => "`:`",
        };
        return Err(error(
            c.name_at,
            format!(
                "`{}` takes {allowed}, not `{}`{}",
                cut(&c.name),
                c.op.as_str(),
                if field.optional { " (and `:*`)" } else { "" }
            ),
        ));
    }
    match field.kind {
        Kind::Enum(values) if !values.contains(&text.as_str()) => Err(error(
            c.value_at,
            format!("`{}` is one of {}", field.name, values.join(", ")),
        )),
        Kind::Time if time_of(text).is_none() => Err(error(
            c.value_at,
            "expected an RFC 3339 time, such as \"2026-01-31T00:00:00Z\"",
        )),
        // A value no label can have would match nothing: a typo, refused.
        Kind::Labels => labels::check_value(text).map_err(|e| error(c.value_at, e.0)),
        _ => Ok(()),
    }
}

/// A name as an error shows it: at most [`MAX_ECHO_BYTES`](crate::error::MAX_ECHO_BYTES) of
/// it (a quoted label key can be any length).
fn cut(name: &str) -> String {
    let mut end = name.len().min(crate::error::MAX_ECHO_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    if end == name.len() {
        name.to_owned()
    } else {
        format!("{}…", &name[..end])
    }
}

/// The fields of an account listing's filter (SPEC §23).
pub const ACCOUNT_FIELDS: &[Field] = &[
    Field::required("display_name", Kind::Text),
    Field::required("state", Kind::Enum(&["ACTIVE", "DISABLED"])),
    // Any one label may be unset.
    Field::optional("labels", Kind::Labels),
];

/// The fields of a token listing's filter (SPEC §22).
pub const TOKEN_FIELDS: &[Field] = &[
    Field::required("service_account_id", Kind::Text),
    Field::required("state", Kind::Enum(&["ACTIVE", "EXPIRED", "REVOKED"])),
    Field::required("scopes", Kind::List),
    Field::required("create_time", Kind::Time),
    Field::optional("expire_time", Kind::Time),
    Field::optional("last_used_time", Kind::Time),
    Field::optional(
        "revoke_reason",
        Kind::Enum(&["ADMIN", "ROTATED", "LEAKED", "ACCOUNT_DELETED"]),
    ),
    Field::required("created_by", Kind::Text),
];

/// The fields of an audit listing's filter (SPEC §22).
pub const AUDIT_FIELDS: &[Field] = &[
    Field::required("actor", Kind::Text),
    Field::required("action", Kind::Enum(AUDIT_ACTIONS)),
    Field::required(
        "target_type",
        Kind::Enum(&["service_account", "token", "token_policy"]),
    ),
    Field::required("target_id", Kind::Text),
    Field::required("create_time", Kind::Time),
];

/// Every audit action's name, so that a misspelt one is refused rather than matching nothing.
const AUDIT_ACTIONS: &[&str] = &[
    "service_account.create",
    "service_account.update",
    "service_account.delete",
    "service_account.disable",
    "service_account.enable",
    "service_account.app_access.set",
    "service_account.app_access.grant",
    "service_account.app_access.revoke",
    "token.create",
    "token.revoke",
    "token.rotate",
    "token.update",
    "token.leak_revoke",
    "token_policy.update",
];

impl Field {
    /// Whether a comparison's name names this field (labels: `labels.` and any key).
    fn names(&self, name: &str) -> bool {
        match self.kind {
            Kind::Labels => name
                .strip_prefix(self.name)
                .is_some_and(|rest| rest.starts_with('.')),
            _ => self.name == name,
        }
    }

    const fn required(name: &'static str, kind: Kind) -> Self {
        Self {
            name,
            kind,
            optional: false,
        }
    }

    const fn optional(name: &'static str, kind: Kind) -> Self {
        Self {
            name,
            kind,
            optional: true,
        }
    }
}

/// An RFC 3339 time, as a comparison's value.
pub fn time_of(text: &str) -> Option<Timestamp> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.to_utc())
}

#[cfg(test)]
mod tests;
