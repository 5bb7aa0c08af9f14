//! An AIP-160 subset: `=`, `!=`, `<`, `<=`, `>`, `>=`, `:` (has), `AND`, `OR`, `NOT`
//! (or `-`), parentheses, strings, numbers, booleans, enum names and RFC 3339 timestamps.
//! Juxtaposed terms are ANDed, as in AIP-160.
//!
//! A filter is parsed into an [`Expr`] tree, then translated into a sea-query
//! [`Condition`] over a per-resource whitelist of [`FilterField`]s. Every error names the
//! byte position, and becomes `INVALID_ARGUMENT` on the `filter` field.

use sea_query::{Condition, Expr as SqlExpr, ExprTrait, LikeExpr, SimpleExpr};

use crate::db::DbBackend;
use crate::errors::ApiError;

/// Filters longer than this are refused before parsing.
pub const MAX_FILTER_LEN: usize = 4096;
/// Nesting deeper than this is refused (parentheses and NOT).
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Has,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A quoted string.
    Text(String),
    /// An unquoted word: an enum name, `true`/`false`, or a number.
    Word(String),
}

impl Value {
    pub fn as_str(&self) -> &str {
        match self {
            Value::Text(s) | Value::Word(s) => s,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Compare {
        field: String,
        op: Op,
        value: Value,
        /// Byte offset of the field in the filter, for error messages.
        position: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    LParen,
    RParen,
    And,
    Or,
    Not,
    Minus,
    Op(Op),
    Text(String),
    Word(String),
}

fn filter_error(position: usize, message: impl std::fmt::Display) -> ApiError {
    ApiError::invalid("filter", format!("at position {position}: {message}"))
}

fn tokenize(input: &str) -> Result<Vec<(Token, usize)>, ApiError> {
    let bytes = input.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => {
                tokens.push((Token::LParen, start));
                i += 1;
            }
            b')' => {
                tokens.push((Token::RParen, start));
                i += 1;
            }
            b'=' => {
                tokens.push((Token::Op(Op::Eq), start));
                i += 1;
            }
            b':' => {
                tokens.push((Token::Op(Op::Has), start));
                i += 1;
            }
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                tokens.push((Token::Op(Op::Ne), start));
                i += 2;
            }
            b'<' | b'>' => {
                let with_eq = bytes.get(i + 1) == Some(&b'=');
                let op = match (c, with_eq) {
                    (b'<', true) => Op::Le,
                    (b'<', false) => Op::Lt,
                    (_, true) => Op::Ge,
                    _ => Op::Gt,
                };
                tokens.push((Token::Op(op), start));
                i += if with_eq { 2 } else { 1 };
            }
            b'"' | b'\'' => {
                let quote = c;
                let mut text = String::new();
                i += 1;
                loop {
                    let Some(&b) = bytes.get(i) else {
                        return Err(filter_error(start, "unterminated string"));
                    };
                    if b == quote {
                        i += 1;
                        break;
                    }
                    if b == b'\\' {
                        // The escaped character is a whole UTF-8 character, not a byte
                        // (`\é` must not leave `i` inside the `é`).
                        let Some(escaped) = input[i + 1..].chars().next() else {
                            return Err(filter_error(i, "dangling escape"));
                        };
                        text.push(escaped);
                        i += 1 + escaped.len_utf8();
                        continue;
                    }
                    // Copy one whole UTF-8 character.
                    let ch = input[i..]
                        .chars()
                        .next()
                        .ok_or_else(|| filter_error(i, "bad text"))?;
                    text.push(ch);
                    i += ch.len_utf8();
                }
                tokens.push((Token::Text(text), start));
            }
            b'-' if bytes.get(i + 1).is_some_and(|b| !b.is_ascii_digit()) => {
                tokens.push((Token::Minus, start));
                i += 1;
            }
            _ if c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'+' | b'*') => {
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric()
                        || matches!(bytes[i], b'_' | b'.' | b'-' | b'+' | b'*'))
                {
                    i += 1;
                }
                let word = &input[start..i];
                let token = match word {
                    "AND" => Token::And,
                    "OR" => Token::Or,
                    "NOT" => Token::Not,
                    _ => Token::Word(word.to_owned()),
                };
                tokens.push((token, start));
            }
            _ => {
                let ch = input[i..].chars().next().unwrap_or('?');
                return Err(filter_error(start, format!("unexpected character {ch:?}")));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    next: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(t, _)| t)
    }

    fn position(&self) -> usize {
        self.tokens.get(self.next).map_or(self.end, |(_, p)| *p)
    }

    fn bump(&mut self) -> Option<(Token, usize)> {
        let token = self.tokens.get(self.next).cloned();
        self.next += 1;
        token
    }

    fn or(&mut self, depth: usize) -> Result<Expr, ApiError> {
        let mut terms = vec![self.and(depth)?];
        while self.peek() == Some(&Token::Or) {
            self.bump();
            terms.push(self.and(depth)?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::Or(terms)
        })
    }

    fn and(&mut self, depth: usize) -> Result<Expr, ApiError> {
        let mut terms = vec![self.unary(depth)?];
        loop {
            match self.peek() {
                Some(Token::And) => {
                    self.bump();
                    terms.push(self.unary(depth)?);
                }
                // Juxtaposition is AND (AIP-160), but OR binds tighter than it there;
                // we keep the simpler reading: a sequence is an AND of its terms.
                Some(Token::Word(_) | Token::LParen | Token::Not | Token::Minus) => {
                    terms.push(self.unary(depth)?);
                }
                _ => break,
            }
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::And(terms)
        })
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, ApiError> {
        if depth > MAX_DEPTH {
            return Err(filter_error(self.position(), "nested too deeply"));
        }
        match self.peek() {
            Some(Token::Not | Token::Minus) => {
                self.bump();
                Ok(Expr::Not(Box::new(self.unary(depth + 1)?)))
            }
            Some(Token::LParen) => {
                self.bump();
                let inner = self.or(depth + 1)?;
                match self.bump() {
                    Some((Token::RParen, _)) => Ok(inner),
                    _ => Err(filter_error(self.position(), "expected ')'")),
                }
            }
            _ => self.comparison(),
        }
    }

    fn comparison(&mut self) -> Result<Expr, ApiError> {
        let position = self.position();
        let field = match self.bump() {
            Some((Token::Word(word), _)) => word,
            Some((token, p)) => {
                return Err(filter_error(
                    p,
                    format!("expected a field name, found {token:?}"),
                ));
            }
            None => return Err(filter_error(position, "expected a field name")),
        };
        let op = match self.bump() {
            Some((Token::Op(op), _)) => op,
            _ => {
                return Err(filter_error(
                    position,
                    format!("expected an operator after {field:?}"),
                ));
            }
        };
        let value_position = self.position();
        let value = match self.bump() {
            Some((Token::Text(text), _)) => Value::Text(text),
            Some((Token::Word(word), _)) => Value::Word(word),
            _ => return Err(filter_error(value_position, "expected a value")),
        };
        Ok(Expr::Compare {
            field,
            op,
            value,
            position,
        })
    }
}

/// Parses a filter; an empty or blank filter is `None` (match everything).
pub fn parse(filter: &str) -> Result<Option<Expr>, ApiError> {
    if filter.len() > MAX_FILTER_LEN {
        return Err(ApiError::invalid(
            "filter",
            format!("longer than {MAX_FILTER_LEN} bytes"),
        ));
    }
    let tokens = tokenize(filter)?;
    if tokens.is_empty() {
        return Ok(None);
    }
    let mut parser = Parser {
        tokens,
        next: 0,
        end: filter.len(),
    };
    let expr = parser.or(0)?;
    if parser.next < parser.tokens.len() {
        return Err(filter_error(parser.position(), "unexpected trailing input"));
    }
    Ok(Some(expr))
}

/// How a whitelisted field is stored, and so how it may be compared.
#[derive(Clone, Copy)]
pub enum FieldKind {
    /// A text column. `=` supports a trailing `*` wildcard; `:` is a case-insensitive
    /// substring match.
    Text,
    /// A text column compared case-insensitively (stored lower-cased).
    LowerText,
    /// An integer column.
    Integer,
    /// A timestamp stored as microseconds since the epoch; values are RFC 3339.
    Timestamp,
    /// An enum stored as its number; values are its names, with or without prefix.
    Enum(fn(&str) -> Option<i32>),
    /// A list stored as `|a|b|c|` text; only `:` (has) and `=` (has exactly this) apply.
    /// On Postgres the comparison is `string_to_array(column, '|') @> string_to_array(value, '|')`,
    /// which a GIN index on that expression answers (a migration of the table must
    /// create it); elsewhere `column LIKE '%|value|%'`.
    List,
    /// A list as [`FieldKind::List`] whose GIN index holds each element with the row's
    /// tenant ([`tenant_list_index_sql`]), so that a filter in one tenant reads only
    /// that tenant's matches, not those of every tenant of the table. The table's tenant
    /// column must be `tenant_id`, and the query must not join another table with one.
    TenantList,
    /// A boolean column.
    Bool,
    /// A family of fields named `<name><key>` (the field's `name` ends in `.`), such as
    /// `attributes.score`: the function builds the comparison for one key.
    Keyed(KeyedCompare),
}

/// Builds the condition for `<prefix><key> <op> <value>`; an `Err` is the message for
/// the caller.
pub type KeyedCompare = fn(key: &str, op: Op, value: &Value) -> Result<SimpleExpr, String>;

/// One field a resource may be filtered on, and its column.
#[derive(Clone, Copy)]
pub struct FilterField {
    pub name: &'static str,
    pub column: &'static str,
    pub kind: FieldKind,
}

fn value_error(position: usize, field: &str, message: impl std::fmt::Display) -> ApiError {
    filter_error(position, format!("{field}: {message}"))
}

fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

fn like(pattern: String) -> LikeExpr {
    LikeExpr::new(pattern).escape('\\')
}

fn compare<V: Into<sea_query::Value>>(
    column: &'static str,
    op: Op,
    value: V,
) -> Option<SimpleExpr> {
    let col = SqlExpr::col(column);
    Some(match op {
        Op::Eq => col.eq(value.into()),
        Op::Ne => col.ne(value.into()),
        Op::Lt => col.lt(value.into()),
        Op::Le => col.lte(value.into()),
        Op::Gt => col.gt(value.into()),
        Op::Ge => col.gte(value.into()),
        Op::Has => return None,
    })
}

/// Parses a timestamp value: RFC 3339, as in `create_time > "2026-01-01T00:00:00Z"`.
pub fn parse_timestamp_micros(text: &str) -> Option<i64> {
    let ts: prost_types::Timestamp = text.parse().ok()?;
    ts.seconds
        .checked_mul(1_000_000)?
        .checked_add(i64::from(ts.nanos / 1_000))
}

/// What a filter's condition is written for: the database, and the tenant the query
/// is scoped to (the key of [`FieldKind::TenantList`] indexes).
#[derive(Clone, Copy)]
pub struct FilterScope<'a> {
    pub backend: DbBackend,
    pub tenant: &'a str,
}

fn translate_compare(
    spec: &FilterField,
    op: Op,
    value: &Value,
    position: usize,
    scope: FilterScope,
) -> Result<SimpleExpr, ApiError> {
    let name = spec.name;
    let raw = value.as_str();
    let unsupported = || value_error(position, name, format!("operator {op:?} does not apply"));
    match spec.kind {
        FieldKind::Keyed(_) => Err(unsupported()),
        FieldKind::Text | FieldKind::LowerText => {
            let text = if matches!(spec.kind, FieldKind::LowerText) {
                raw.to_lowercase()
            } else {
                raw.to_owned()
            };
            match op {
                Op::Has => Ok(
                    SqlExpr::expr(sea_query::Func::lower(SqlExpr::col(spec.column)))
                        .like(like(format!("%{}%", escape_like(&text.to_lowercase())))),
                ),
                Op::Eq if text.ends_with('*') => {
                    let prefix = text.trim_end_matches('*');
                    Ok(SqlExpr::col(spec.column).like(like(format!("{}%", escape_like(prefix)))))
                }
                _ => compare(spec.column, op, text).ok_or_else(unsupported),
            }
        }
        FieldKind::Integer => {
            let number: i64 = raw
                .parse()
                .map_err(|_| value_error(position, name, "expected an integer"))?;
            compare(spec.column, if op == Op::Has { Op::Eq } else { op }, number)
                .ok_or_else(unsupported)
        }
        FieldKind::Timestamp => {
            let micros = parse_timestamp_micros(raw).ok_or_else(|| {
                value_error(
                    position,
                    name,
                    "expected an RFC 3339 timestamp such as \"2026-01-31T00:00:00Z\"",
                )
            })?;
            compare(spec.column, op, micros).ok_or_else(unsupported)
        }
        FieldKind::Enum(parse_enum) => {
            let number = parse_enum(raw)
                .ok_or_else(|| value_error(position, name, format!("unknown value {raw:?}")))?;
            match op {
                Op::Eq | Op::Has => Ok(SqlExpr::col(spec.column).eq(number)),
                Op::Ne => Ok(SqlExpr::col(spec.column).ne(number)),
                _ => Err(unsupported()),
            }
        }
        FieldKind::Bool => {
            let flag = match raw {
                "true" => true,
                "false" => false,
                _ => return Err(value_error(position, name, "expected true or false")),
            };
            match op {
                Op::Eq | Op::Has => Ok(SqlExpr::col(spec.column).eq(flag)),
                Op::Ne => Ok(SqlExpr::col(spec.column).ne(flag)),
                _ => Err(unsupported()),
            }
        }
        FieldKind::List | FieldKind::TenantList => {
            if raw.contains('|') {
                return Err(value_error(position, name, "value may not contain '|'"));
            }
            // No list holds an empty element; said here so that every backend agrees.
            if raw.is_empty() {
                return Err(value_error(position, name, "value may not be empty"));
            }
            let element = raw.to_lowercase();
            let has = if matches!(spec.kind, FieldKind::TenantList) {
                tenant_list_holds(scope.backend, scope.tenant, spec.column, &element)
            } else {
                list_holds(scope.backend, spec.column, &element)
            };
            match op {
                Op::Has | Op::Eq => Ok(has),
                Op::Ne => Ok(has.not()),
                _ => Err(unsupported()),
            }
        }
    }
}

/// The list column `column` (`|a|b|`) holds `element`. On Postgres, for an element
/// without `|` and not empty: `string_to_array(column, '|') @> string_to_array(element,
/// '|')`, whose left side is the expression the GIN indexes of list columns are built on
/// ([`list_index_sql`]), so that the index answers it instead of a scan of the tenant.
/// Otherwise (SQLite, or an element no list can hold as one) a `LIKE` of `|element|`.
pub fn list_holds(backend: DbBackend, column: &'static str, element: &str) -> SimpleExpr {
    if compares_as_array(backend, element) {
        SqlExpr::cust_with_exprs(
            "string_to_array($1, '|') @> string_to_array($2, '|')",
            [SqlExpr::col(column), SqlExpr::val(element)],
        )
    } else {
        list_like(column, element)
    }
}

/// Whether a list comparison with `element` is written as array containment, which the
/// GIN indexes of list columns answer: on Postgres, for an element a list can hold.
fn compares_as_array(backend: DbBackend, element: &str) -> bool {
    backend == DbBackend::Postgres && !element.is_empty() && !element.contains('|')
}

/// `column LIKE '%|element|%'`, the list comparison of every backend.
fn list_like(column: &'static str, element: &str) -> SimpleExpr {
    SqlExpr::col(column).like(like(format!("%|{}|%", escape_like(element))))
}

/// The Postgres statement that creates the GIN index `name` on the elements of the
/// list column `column` of `table`, for `FieldKind::List` filters.
pub fn list_index_sql(name: &str, table: &str, column: &str) -> String {
    format!(
        "CREATE INDEX IF NOT EXISTS \"{name}\" ON \"{table}\" USING gin (string_to_array(\"{column}\", '|'))"
    )
}

/// The elements of the list column `column` (`|a|b|`), each as `tenant:element` with the
/// row's `tenant_id` (`{tenant:a, tenant:b}`; `{}` for an empty list, so that `NOT`
/// holds for it): the expression the tenant-scoped list indexes are built on and
/// [`tenant_list_holds`] compares.
pub fn tenant_elements_sql(column: &str) -> String {
    format!(
        "COALESCE(string_to_array(\"tenant_id\"::text || ':' || replace(NULLIF(btrim(\"{column}\", '|'), ''), '|', '|' || \"tenant_id\"::text || ':'), '|'), '{{}}')"
    )
}

/// The list column `column` of a row of `tenant` holds `element`. On Postgres, for an
/// element without `|` and not empty, through the tenant-scoped GIN index of the column
/// ([`tenant_list_index_sql`]): one key, `tenant:element`, whose entries are that
/// tenant's matches only. Otherwise a `LIKE`, as [`list_holds`]. The query must also keep to
/// `tenant`'s rows (`tenant_id` is not compared here) and name no other table's
/// `tenant_id`.
pub fn tenant_list_holds(
    backend: DbBackend,
    tenant: &str,
    column: &'static str,
    element: &str,
) -> SimpleExpr {
    if compares_as_array(backend, element) {
        SqlExpr::cust_with_exprs(
            format!(
                "{} @> string_to_array($1, '|')",
                tenant_elements_sql(column)
            ),
            [SqlExpr::val(format!("{tenant}:{element}"))],
        )
    } else {
        list_like(column, element)
    }
}

/// The Postgres statement that creates the tenant-scoped GIN index `name` on the
/// elements of the list column `column` of `table`, for `FieldKind::TenantList`.
pub fn tenant_list_index_sql(name: &str, table: &str, column: &str) -> String {
    format!(
        "CREATE INDEX IF NOT EXISTS \"{name}\" ON \"{table}\" USING gin ({})",
        tenant_elements_sql(column)
    )
}

/// Translates a parsed filter over `fields` into a condition for `scope`.
pub fn to_condition(
    expr: &Expr,
    fields: &[FilterField],
    scope: FilterScope,
) -> Result<Condition, ApiError> {
    Ok(match expr {
        Expr::And(terms) => {
            let mut condition = Condition::all();
            for term in terms {
                condition = condition.add(to_condition(term, fields, scope)?);
            }
            condition
        }
        Expr::Or(terms) => {
            let mut condition = Condition::any();
            for term in terms {
                condition = condition.add(to_condition(term, fields, scope)?);
            }
            condition
        }
        Expr::Not(inner) => to_condition(inner, fields, scope)?.not(),
        Expr::Compare {
            field,
            op,
            value,
            position,
        } => {
            let keyed = fields.iter().find_map(|f| match f.kind {
                FieldKind::Keyed(build) if f.name.ends_with('.') => {
                    field.strip_prefix(f.name).map(|key| (build, key))
                }
                _ => None,
            });
            if let Some((build, key)) = keyed {
                let built = build(key, *op, value)
                    .map_err(|message| value_error(*position, field, message))?;
                return Ok(Condition::all().add(built));
            }
            let spec = fields.iter().find(|f| f.name == field).ok_or_else(|| {
                let known: Vec<String> = fields
                    .iter()
                    .map(|f| match f.kind {
                        FieldKind::Keyed(_) => format!("{}<key>", f.name),
                        _ => f.name.to_owned(),
                    })
                    .collect();
                filter_error(
                    *position,
                    format!(
                        "unknown field {field:?}; filterable fields: {}",
                        known.join(", ")
                    ),
                )
            })?;
            Condition::all().add(translate_compare(spec, *op, value, *position, scope)?)
        }
    })
}

/// Parses and translates in one step; `None` for an empty filter.
pub fn condition(
    filter: &str,
    fields: &[FilterField],
    scope: FilterScope,
) -> Result<Option<Condition>, ApiError> {
    parse(filter)?
        .map(|expr| to_condition(&expr, fields, scope))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_query::{Query, SqliteQueryBuilder};

    const FIELDS: &[FilterField] = &[
        FilterField {
            name: "given_name",
            column: "given_name",
            kind: FieldKind::Text,
        },
        FilterField {
            name: "email",
            column: "emails_index",
            kind: FieldKind::List,
        },
        FilterField {
            name: "tags",
            column: "tags_index",
            kind: FieldKind::TenantList,
        },
        FilterField {
            name: "age",
            column: "age",
            kind: FieldKind::Integer,
        },
        FilterField {
            name: "create_time",
            column: "create_time_us",
            kind: FieldKind::Timestamp,
        },
        FilterField {
            name: "stage",
            column: "stage",
            kind: FieldKind::Enum(|s| match s {
                "LEAD" => Some(2),
                "CUSTOMER" => Some(6),
                _ => None,
            }),
        },
    ];

    fn scope(backend: DbBackend) -> FilterScope<'static> {
        FilterScope {
            backend,
            tenant: "acme",
        }
    }

    /// `SELECT "id" FROM "t" WHERE <filter>` for `backend`, in tenant `acme`.
    fn select_where(filter: &str, backend: DbBackend) -> sea_query::SelectStatement {
        let condition = condition(filter, FIELDS, scope(backend)).unwrap().unwrap();
        Query::select()
            .column("id")
            .from("t")
            .cond_where(condition)
            .to_owned()
    }

    fn sql(filter: &str) -> String {
        select_where(filter, DbBackend::Sqlite).to_string(SqliteQueryBuilder)
    }

    fn error(filter: &str) -> String {
        match condition(filter, FIELDS, scope(DbBackend::Sqlite)) {
            Err(ApiError::InvalidArgument(v)) => v[0].description.clone(),
            other => panic!(
                "expected an error for {filter:?}, got {other:?}",
                other = other.is_ok()
            ),
        }
    }

    #[test]
    fn precedence_and_grouping() {
        assert_eq!(
            sql(r#"given_name = "Ana" OR age > 3 AND NOT stage = LEAD"#),
            r#"SELECT "id" FROM "t" WHERE "given_name" = 'Ana' OR ("age" > 3 AND (NOT "stage" = 2))"#
        );
        assert_eq!(
            sql(r#"(given_name = "A" OR given_name = "B") age >= 18"#),
            r#"SELECT "id" FROM "t" WHERE ("given_name" = 'A' OR "given_name" = 'B') AND "age" >= 18"#
        );
    }

    #[test]
    fn values_by_kind() {
        assert!(sql(r#"create_time > "2026-01-01T00:00:00Z""#).contains("1767225600000000"));
        assert!(sql(r#"email: "A@X.io""#).contains(r"LIKE '%|a@x.io|%' ESCAPE '\'"));
        assert!(sql(r#"given_name = "An*""#).contains("LIKE 'An%'"));
        assert!(sql(r#"given_name: "50%_""#).contains(r"'%50\%\_%'"));
    }

    #[test]
    fn lists_on_postgres_are_array_containment() {
        let on_postgres = |filter: &str| {
            select_where(filter, DbBackend::Postgres).to_string(sea_query::PostgresQueryBuilder)
        };
        assert_eq!(
            on_postgres(r#"email: "A@X.io""#),
            r#"SELECT "id" FROM "t" WHERE string_to_array("emails_index", '|') @> string_to_array('a@x.io', '|')"#
        );
        // No wildcard: `%` and `_` are characters of the element.
        assert!(on_postgres(r#"email = "a%_@x.io""#).contains("string_to_array('a%_@x.io', '|')"));
        let negated = on_postgres(r#"email != "a@x.io""#);
        assert!(
            negated.contains(
                r#"NOT (string_to_array("emails_index", '|') @> string_to_array('a@x.io', '|'))"#
            ),
            "{negated}"
        );
        // The value stays a bound value.
        let (sql, values) = select_where(r#"email = "x' OR 1=1 --""#, DbBackend::Postgres)
            .build(sea_query::PostgresQueryBuilder);
        assert!(sql.ends_with(r#"@> string_to_array($1, '|')"#), "{sql}");
        assert_eq!(values.0, vec![sea_query::Value::from("x' or 1=1 --")]);
        assert_eq!(
            list_index_sql("contacts_emails_elements", "contacts", "emails_index"),
            r#"CREATE INDEX IF NOT EXISTS "contacts_emails_elements" ON "contacts" USING gin (string_to_array("emails_index", '|'))"#
        );
    }

    #[test]
    fn tenant_lists_on_postgres_compare_the_tenants_own_elements() {
        let (statement, values) = select_where(r#"tags: "VIP""#, DbBackend::Postgres)
            .build(sea_query::PostgresQueryBuilder);
        let elements = r#"COALESCE(string_to_array("tenant_id"::text || ':' || replace(NULLIF(btrim("tags_index", '|'), ''), '|', '|' || "tenant_id"::text || ':'), '|'), '{}')"#;
        assert_eq!(
            statement,
            format!(r#"SELECT "id" FROM "t" WHERE {elements} @> string_to_array($1, '|')"#)
        );
        assert_eq!(values.0, vec![sea_query::Value::from("acme:vip")]);
        // The index is built on the same expression, so that the planner can use it.
        assert_eq!(
            tenant_list_index_sql("contacts_tags_by_tenant", "contacts", "tags_index"),
            format!(
                r#"CREATE INDEX IF NOT EXISTS "contacts_tags_by_tenant" ON "contacts" USING gin ({elements})"#
            )
        );
        // SQLite, and elements no list holds, compare as plain lists do.
        assert!(sql(r#"tags: "vip""#).contains(r"LIKE '%|vip|%' ESCAPE '\'"));
    }

    #[test]
    fn injection_stays_a_value() {
        let out = sql(r#"given_name = "x' OR 1=1 --""#);
        assert!(out.contains(r#""given_name" = 'x'' OR 1=1 --'"#), "{out}");
    }

    #[test]
    fn errors_name_the_position() {
        assert!(error("nope = 1").contains("at position 0: unknown field \"nope\""));
        assert!(error("age > ").contains("at position 6: expected a value"));
        assert!(error("age = x").contains("age: expected an integer"));
        assert!(error("(age = 1").contains("expected ')'"));
        assert!(error("given_name = \"open").contains("unterminated string"));
        assert!(error("create_time > \"yesterday\"").contains("RFC 3339"));
        assert!(error("stage = PROSPECT").contains("unknown value"));
        assert!(error("age = 1 )").contains("trailing"));
        assert!(error("age # 1").contains("unexpected character"));
        assert!(error(r#"email: """#).contains("email: value may not be empty"));
        let deep = format!("{}age = 1{}", "(".repeat(100), ")".repeat(100));
        assert!(error(&deep).contains("nested too deeply"));
    }

    #[test]
    fn an_escaped_multibyte_character_is_one_character() {
        // Found by the filter_parser fuzz target: the escape copied one byte and left
        // the tokenizer inside the character, and slicing there panicked.
        assert!(sql(r#"given_name = "\é""#).contains("'é'"));
        assert!(sql("given_name = \"a\\🦀b\"").contains("'a🦀b'"));
        assert!(sql(r#"given_name = "\"x""#).contains(r#"'"x'"#));
        assert!(error("given_name = \"\\").contains("dangling escape"));
        let crash = "given_ne ma= \"'\\\\' g\u{fffd}'\\\u{fffd}\"";
        assert!(condition(crash, FIELDS, scope(DbBackend::Sqlite)).is_err());
    }

    #[test]
    fn blank_filter_matches_all() {
        assert!(
            condition("   ", FIELDS, scope(DbBackend::Sqlite))
                .unwrap()
                .is_none()
        );
    }
}
