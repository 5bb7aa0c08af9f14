//! Many rows into one table in few statements.
//!
//! On Postgres the rows go in as one array per column, `INSERT … SELECT … FROM
//! unnest($1::text[], …)`: one statement of a fixed shape whatever the row count, so
//! its plan is cached and its parameters are a handful, where a multi-row `VALUES`
//! list of thousands of rows has tens of thousands of parameters that Postgres parses
//! and plans afresh on every call (about 7 % of its CPU during an import). SQLite has
//! no arrays; there the rows go in as multi-row `VALUES`, chunked under its parameter
//! limit.

use sea_orm::sea_query::value::ArrayType;
use sea_orm::sea_query::{DynIden, IntoIden, OnConflict, Query};
use sea_orm::{
    ActiveModelTrait, ActiveValue, ConnectionTrait, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, Iterable, QueryResult, Statement, Value,
};

/// Rows per Postgres statement: bounds the memory of one statement's arrays.
const POSTGRES_ROWS_PER_STATEMENT: usize = 10_000;

/// Bind parameters per SQLite statement, under its limit of 32,766.
const SQLITE_PARAMETERS_PER_STATEMENT: usize = 30_000;

/// Rows for one table, each with a value for every column in order.
#[derive(Debug, Clone)]
pub struct Rows {
    table: DynIden,
    columns: Vec<DynIden>,
    rows: Vec<Vec<Value>>,
    skip_conflicts_on: Vec<DynIden>,
}

impl Rows {
    pub fn new(table: impl IntoIden, columns: impl IntoIterator<Item = impl IntoIden>) -> Self {
        Self {
            table: table.into_iden(),
            columns: columns.into_iter().map(IntoIden::into_iden).collect(),
            rows: Vec::new(),
            skip_conflicts_on: Vec::new(),
        }
    }

    /// The rows of active models, as `insert_many` writes them: the columns set in the
    /// models. A model that leaves unset a column another sets is an error.
    pub fn of_models<A>(models: impl IntoIterator<Item = A>) -> Result<Self, DbErr>
    where
        A: ActiveModelTrait,
    {
        let all: Vec<<A::Entity as EntityTrait>::Column> =
            <A::Entity as EntityTrait>::Column::iter().collect();
        let models: Vec<A> = models.into_iter().collect();
        let columns: Vec<_> = all
            .into_iter()
            .filter(|column| models.iter().any(|m| !m.get(*column).is_not_set()))
            .collect();
        let mut rows = Self::new(A::Entity::default(), columns.iter().copied());
        for model in &models {
            let mut row = Vec::with_capacity(columns.len());
            for column in &columns {
                match model.get(*column) {
                    ActiveValue::Set(value) | ActiveValue::Unchanged(value) => row.push(value),
                    ActiveValue::NotSet => {
                        return Err(DbErr::Custom(format!(
                            "bulk insert into {}: a row leaves {} unset",
                            rows.table,
                            column.into_iden()
                        )));
                    }
                }
            }
            rows.rows.push(row);
        }
        Ok(rows)
    }

    /// Rows whose key (these columns, a unique index) is already stored are skipped.
    pub fn skip_conflicts_on(mut self, columns: impl IntoIterator<Item = impl IntoIden>) -> Self {
        self.skip_conflicts_on = columns.into_iter().map(IntoIden::into_iden).collect();
        self
    }

    /// Adds a row: one value per column, in the order of the columns.
    pub fn push(&mut self, row: Vec<Value>) {
        debug_assert_eq!(row.len(), self.columns.len(), "one value per column");
        self.rows.push(row);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Inserts the rows; nothing for none. A row whose value count differs from the
/// column count is an error, not a panic.
pub async fn insert<C: ConnectionTrait>(conn: &C, mut rows: Rows) -> Result<(), DbErr> {
    if rows.rows.is_empty() {
        return Ok(());
    }
    check_widths(&rows)?;
    match conn.get_database_backend() {
        DbBackend::Postgres => {
            // The values move into the column arrays: a batch's payloads are not copied.
            let mut rest = std::mem::take(&mut rows.rows);
            while !rest.is_empty() {
                let tail = rest.split_off(rest.len().min(POSTGRES_ROWS_PER_STATEMENT));
                let chunk = std::mem::replace(&mut rest, tail);
                conn.execute_raw(unnest_statement(&rows, chunk)?).await?;
            }
        }
        backend => {
            let per_statement = (SQLITE_PARAMETERS_PER_STATEMENT / rows.columns.len()).max(1);
            for chunk in rows.rows.chunks(per_statement) {
                let mut insert = Query::insert();
                insert
                    .into_table(rows.table.clone())
                    .columns(rows.columns.iter().cloned());
                if !rows.skip_conflicts_on.is_empty() {
                    insert.on_conflict(
                        OnConflict::columns(rows.skip_conflicts_on.iter().cloned())
                            .do_nothing()
                            .to_owned(),
                    );
                }
                for row in chunk {
                    insert
                        .values(row.iter().cloned().map(Into::into))
                        .map_err(|e| DbErr::Custom(e.to_string()))?;
                }
                conn.execute_raw(backend.build(&insert)).await?;
            }
        }
    }
    Ok(())
}

/// The Postgres element type of a column, from the variant of its values.
fn array_type(value: &Value) -> Result<(ArrayType, &'static str), DbErr> {
    Ok(match value {
        Value::Bool(_) => (ArrayType::Bool, "bool"),
        Value::SmallInt(_) => (ArrayType::SmallInt, "int2"),
        Value::Int(_) => (ArrayType::Int, "int4"),
        Value::BigInt(_) => (ArrayType::BigInt, "int8"),
        Value::Float(_) => (ArrayType::Float, "float4"),
        Value::Double(_) => (ArrayType::Double, "float8"),
        Value::String(_) => (ArrayType::String, "text"),
        Value::Bytes(_) => (ArrayType::Bytes, "bytea"),
        Value::Json(_) => (ArrayType::Json, "jsonb"),
        Value::Uuid(_) => (ArrayType::Uuid, "uuid"),
        other => {
            return Err(DbErr::Custom(format!(
                "bulk insert: no array type for {other:?}"
            )));
        }
    })
}

/// A stand-in for NULL inside an array (the array binding takes no NULL elements); the
/// column's null flags say which elements are NULL.
fn placeholder(ty: &ArrayType) -> Value {
    match ty {
        ArrayType::Bool => Value::Bool(Some(false)),
        ArrayType::SmallInt => Value::SmallInt(Some(0)),
        ArrayType::Int => Value::Int(Some(0)),
        ArrayType::BigInt => Value::BigInt(Some(0)),
        ArrayType::Float => Value::Float(Some(0.0)),
        ArrayType::Double => Value::Double(Some(0.0)),
        ArrayType::Bytes => Value::Bytes(Some(Vec::new())),
        ArrayType::Json => Value::Json(Some(Box::new(serde_json::Value::Null))),
        ArrayType::Uuid => Value::Uuid(Some(uuid::Uuid::nil())),
        _ => Value::String(Some(String::new())),
    }
}

fn is_null(value: &Value) -> bool {
    *value == value.as_null()
}

/// Appends the identifier, double-quoted, to the statement.
fn push_quoted(sql: &mut String, iden: &DynIden) {
    let name = iden.inner();
    sql.push('"');
    if name.contains('"') {
        sql.push_str(&name.replace('"', "\"\""));
    } else {
        sql.push_str(&name);
    }
    sql.push('"');
}

/// Appends each item, comma-separated.
fn push_list<T>(sql: &mut String, items: &[T], mut push: impl FnMut(&mut String, &T)) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        push(sql, item);
    }
}

/// Refuses a row whose value count differs from the column count.
fn check_widths(rows: &Rows) -> Result<(), DbErr> {
    match rows.rows.iter().find(|r| r.len() != rows.columns.len()) {
        Some(row) => Err(DbErr::Custom(format!(
            "bulk insert into {}: a row has {} values for {} columns",
            rows.table,
            row.len(),
            rows.columns.len()
        ))),
        None => Ok(()),
    }
}

/// Inserts rows into several tables, in order. On Postgres, when each table's rows fit
/// one statement, that is one statement: the inserts before the last are its
/// data-modifying `WITH` clauses, so a write of a few rows into each of several tables
/// (a contact, its search terms and its event) costs one round trip instead of one per
/// table. Otherwise, and on SQLite, the tables are inserted one after the other.
pub async fn insert_all<C: ConnectionTrait>(conn: &C, tables: Vec<Rows>) -> Result<(), DbErr> {
    let together = fit_one_statement(conn.get_database_backend(), &tables);
    let tables = non_empty_checked(tables)?;
    if !together {
        for table in tables {
            insert(conn, table).await?;
        }
        return Ok(());
    }
    conn.execute_raw(together_statement(tables)?).await?;
    Ok(())
}

/// [`insert_all`], all or nothing. When the rows fit one statement (Postgres), that
/// statement alone is atomic and runs without `BEGIN` and `COMMIT`, two round trips
/// fewer; otherwise the inserts run in a write transaction.
pub async fn insert_all_atomically(
    db: &DatabaseConnection,
    tables: Vec<Rows>,
) -> Result<(), DbErr> {
    if fit_one_statement(db.get_database_backend(), &tables) {
        return insert_all(db, tables).await;
    }
    let txn = crate::events::begin_write(db).await?;
    insert_all(&txn, tables).await?;
    txn.commit().await
}

/// The tables that have rows, each row checked against its table's columns.
fn non_empty_checked(tables: Vec<Rows>) -> Result<Vec<Rows>, DbErr> {
    let tables: Vec<Rows> = tables.into_iter().filter(|t| !t.is_empty()).collect();
    for table in &tables {
        check_widths(table)?;
    }
    Ok(tables)
}

/// Whether the tables' rows can go into one statement: on Postgres, when each table's
/// rows fit one.
fn within_one_statement(backend: DbBackend, tables: &[Rows]) -> bool {
    backend == DbBackend::Postgres
        && tables
            .iter()
            .all(|t| t.rows.len() <= POSTGRES_ROWS_PER_STATEMENT)
}

/// Whether [`insert_all`] writes the tables in one statement: when more than one table
/// has rows and they can go into one statement.
fn fit_one_statement(backend: DbBackend, tables: &[Rows]) -> bool {
    tables.iter().filter(|t| !t.is_empty()).count() > 1 && within_one_statement(backend, tables)
}

/// One Postgres statement inserting every table's rows (each table's fitting one
/// statement): `WITH w0 AS (INSERT …), … INSERT …`, parameters numbered across them.
fn together_statement(tables: Vec<Rows>) -> Result<Statement, DbErr> {
    with_inserts(tables, None, None)
}

/// The tables' inserts as `WITH` clauses before `query`, or, without one, all but the
/// last as clauses before the last.
fn with_inserts(
    mut tables: Vec<Rows>,
    query: Option<FinalQuery>,
    mut guard: Option<Guard>,
) -> Result<Statement, DbErr> {
    if tables.is_empty() && query.is_none() {
        return Err(DbErr::Custom("bulk insert: no tables".into()));
    }
    let clauses = if query.is_some() {
        tables.len()
    } else {
        tables.len() - 1
    };
    let mut sql = String::with_capacity(256 * (tables.len() + 1));
    let mut values: Vec<Value> = Vec::new();
    for (i, table) in tables.iter_mut().enumerate() {
        if i < clauses {
            sql.push_str(if i == 0 { "WITH " } else { ", " });
            sql.push('w');
            push_number(&mut sql, i);
            sql.push_str(" AS (");
        } else if i > 0 {
            sql.push(' ');
        }
        let chunk = std::mem::take(&mut table.rows);
        unnest_insert(&mut sql, &mut values, table, chunk, guard.take())?;
        if i < clauses {
            sql.push(')');
        }
    }
    if let Some(query) = query {
        let (text, more) = query(values.len() + 1);
        if !sql.is_empty() {
            sql.push(' ');
        }
        sql.push_str(&text);
        values.extend(more);
    }
    Ok(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        values,
    ))
}

/// A Postgres query to run in the statement of some inserts, given the number of its
/// first parameter: its text and its values. It follows the inserts' `WITH w0 AS (…),
/// …` clauses, so it is a plain `SELECT` (no `WITH` of its own, no names `w<n>`).
pub type FinalQuery = Box<dyn FnOnce(usize) -> (String, Vec<Value>) + Send>;

/// A Postgres boolean expression that must hold for a statement of inserts to write
/// anything, given the number of its first parameter: its text and its values. It is
/// the condition of the first table's rows, evaluated once as the statement runs, so
/// it stops the statement by raising an error; were it merely false, the first table
/// alone would go without its rows.
pub type Guard = Box<dyn FnOnce(usize) -> (String, Vec<Value>) + Send>;

/// The tables' rows and `query` in one Postgres statement: the inserts are its
/// data-modifying `WITH` clauses, all or nothing, and the query its final part, which
/// sees the database as it was just before them (the statement's snapshot). `guard`,
/// when given, runs before any row is written ([`Guard`]). `None`, having written
/// nothing, where that cannot be one statement: on SQLite, or when a table's rows
/// exceed one statement's bound.
pub async fn insert_all_then_query(
    db: &DatabaseConnection,
    tables: Vec<Rows>,
    query: FinalQuery,
    guard: Option<Guard>,
) -> Result<Option<Vec<QueryResult>>, DbErr> {
    if !within_one_statement(db.get_database_backend(), &tables) {
        return Ok(None);
    }
    let tables = non_empty_checked(tables)?;
    let rows = db
        .query_all_raw(with_inserts(tables, Some(query), guard)?)
        .await?;
    Ok(Some(rows))
}

fn unnest_statement(rows: &Rows, chunk: Vec<Vec<Value>>) -> Result<Statement, DbErr> {
    let mut sql = String::with_capacity(256);
    let mut values = Vec::new();
    unnest_insert(&mut sql, &mut values, rows, chunk, None)?;
    Ok(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        values,
    ))
}

/// Appends the `INSERT … SELECT … FROM unnest(…)` of a chunk to `sql` and its arrays to
/// `values`, numbering its parameters after those already in `values`:
/// `INSERT INTO t (a, b) SELECT c0, CASE WHEN n1 THEN NULL ELSE c1 END FROM
/// unnest($1::text[], $2::int8[], $3::bool[]) AS bulk_rows(c0, c1, n1)`, where a column
/// with NULLs gets a bool array of null flags beside its values, and a [`Guard`] is the
/// `WHERE` condition of the rows. The text goes straight into one buffer: joining
/// formatted pieces was a fifth of CreateContact's instructions in the service.
fn unnest_insert(
    sql: &mut String,
    values: &mut Vec<Value>,
    rows: &Rows,
    chunk: Vec<Vec<Value>>,
    guard: Option<Guard>,
) -> Result<(), DbErr> {
    let Some(first_row) = chunk.first() else {
        return Err(DbErr::Custom("bulk insert: no rows".into()));
    };
    // Each column's element type (from its first value) and whether it holds a NULL.
    let mut kinds = Vec::with_capacity(first_row.len());
    for (index, first) in first_row.iter().enumerate() {
        let mut nullable = false;
        for row in &chunk {
            if std::mem::discriminant(&row[index]) != std::mem::discriminant(first) {
                return Err(DbErr::Custom(format!(
                    "bulk insert: mixed value types in column {}",
                    rows.columns[index]
                )));
            }
            nullable |= is_null(&row[index]);
        }
        let (ty, element) = array_type(first)?;
        kinds.push((ty, element, nullable));
    }
    let mut columns: Vec<Vec<Value>> = kinds
        .iter()
        .map(|_| Vec::with_capacity(chunk.len()))
        .collect();
    let mut nulls: Vec<Vec<Value>> = kinds
        .iter()
        .map(|(_, _, nullable)| Vec::with_capacity(if *nullable { chunk.len() } else { 0 }))
        .collect();
    for row in chunk {
        for (index, value) in row.into_iter().enumerate() {
            let (ty, _, nullable) = &kinds[index];
            let null = is_null(&value);
            if *nullable {
                nulls[index].push(Value::Bool(Some(null)));
            }
            columns[index].push(if null { placeholder(ty) } else { value });
        }
    }

    sql.push_str("INSERT INTO ");
    push_quoted(sql, &rows.table);
    sql.push_str(" (");
    push_list(sql, &rows.columns, push_quoted);
    sql.push_str(") SELECT ");
    for (index, (_, _, nullable)) in kinds.iter().enumerate() {
        if index > 0 {
            sql.push_str(", ");
        }
        if *nullable {
            sql.push_str("CASE WHEN n");
            push_number(sql, index);
            sql.push_str(" THEN NULL ELSE c");
            push_number(sql, index);
            sql.push_str(" END");
        } else {
            sql.push('c');
            push_number(sql, index);
        }
    }
    sql.push_str(" FROM unnest(");
    let mut names = String::with_capacity(8 * kinds.len());
    for (index, ((ty, element, nullable), (column, column_nulls))) in kinds
        .into_iter()
        .zip(columns.into_iter().zip(nulls))
        .enumerate()
    {
        if index > 0 {
            sql.push_str(", ");
            names.push_str(", ");
        }
        values.push(Value::Array(ty, Some(Box::new(column))));
        push_parameter(sql, values.len(), element);
        names.push('c');
        push_number(&mut names, index);
        if nullable {
            values.push(Value::Array(ArrayType::Bool, Some(Box::new(column_nulls))));
            sql.push_str(", ");
            push_parameter(sql, values.len(), "bool");
            names.push_str(", n");
            push_number(&mut names, index);
        }
    }
    sql.push_str(") AS bulk_rows(");
    sql.push_str(&names);
    sql.push(')');
    if let Some(guard) = guard {
        let (condition, more) = guard(values.len() + 1);
        sql.push_str(" WHERE ");
        sql.push_str(&condition);
        values.extend(more);
    }
    if !rows.skip_conflicts_on.is_empty() {
        sql.push_str(" ON CONFLICT (");
        push_list(sql, &rows.skip_conflicts_on, push_quoted);
        sql.push_str(") DO NOTHING");
    }
    Ok(())
}

/// Appends the decimal digits of `n`.
fn push_number(sql: &mut String, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    sql.extend(digits[start..].iter().map(|digit| char::from(*digit)));
}

/// Appends `$n::element[]`.
fn push_parameter(sql: &mut String, n: usize, element: &str) {
    sql.push('$');
    push_number(sql, n);
    sql.push_str("::");
    sql.push_str(element);
    sql.push_str("[]");
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::sea_query::Alias;

    fn iden(name: &str) -> DynIden {
        Alias::new(name).into_iden()
    }

    fn sample() -> Rows {
        let mut rows = Rows::new(iden("terms"), [iden("term"), iden("field"), iden("note")])
            .skip_conflicts_on([iden("term"), iden("field")]);
        rows.push(vec!["anna".into(), 1i16.into(), Value::String(None)]);
        rows.push(vec!["bob".into(), 2i16.into(), "x".into()]);
        rows
    }

    #[test]
    fn tables_inserted_together_are_one_statement_numbering_parameters_across_them() {
        let mut events = Rows::new(iden("events"), [iden("id")]);
        events.push(vec!["e1".into()]);
        let statement = together_statement(vec![sample(), events]).unwrap();
        assert_eq!(
            statement.sql,
            "WITH w0 AS (INSERT INTO \"terms\" (\"term\", \"field\", \"note\") SELECT c0, c1, \
             CASE WHEN n2 THEN NULL ELSE c2 END FROM unnest($1::text[], $2::int2[], \
             $3::text[], $4::bool[]) AS bulk_rows(c0, c1, c2, n2) \
             ON CONFLICT (\"term\", \"field\") DO NOTHING) \
             INSERT INTO \"events\" (\"id\") SELECT c0 FROM unnest($5::text[]) AS bulk_rows(c0)"
        );
        assert_eq!(statement.values.unwrap().0.len(), 5);
    }

    #[test]
    fn postgres_statement_unnests_one_array_per_column_and_flags_nulls() {
        let rows = sample();
        let statement = unnest_statement(&rows, rows.rows.clone()).unwrap();
        assert_eq!(
            statement.sql,
            "INSERT INTO \"terms\" (\"term\", \"field\", \"note\") SELECT c0, c1, \
             CASE WHEN n2 THEN NULL ELSE c2 END FROM unnest($1::text[], $2::int2[], \
             $3::text[], $4::bool[]) AS bulk_rows(c0, c1, c2, n2) \
             ON CONFLICT (\"term\", \"field\") DO NOTHING"
        );
        let values = statement.values.unwrap().0;
        assert_eq!(values.len(), 4);
        assert_eq!(
            values[3],
            Value::Array(
                ArrayType::Bool,
                Some(Box::new(vec![true.into(), false.into()]))
            )
        );
        assert_eq!(
            values[2],
            Value::Array(
                ArrayType::String,
                Some(Box::new(vec!["".into(), "x".into()]))
            )
        );
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 10, 99, 12_345, usize::MAX] {
            let mut text = String::new();
            push_number(&mut text, n);
            assert_eq!(text, n.to_string());
        }
    }

    #[test]
    fn parameters_past_nine_and_clauses_past_ten_are_numbered_in_full() {
        let tables: Vec<Rows> = (0..12)
            .map(|i| {
                let mut rows = Rows::new(iden(&format!("t{i}")), [iden("a")]);
                rows.push(vec![format!("v{i}").into()]);
                rows
            })
            .collect();
        let statement = together_statement(tables).unwrap();
        assert!(statement.sql.starts_with(
            "WITH w0 AS (INSERT INTO \"t0\" (\"a\") SELECT c0 FROM unnest($1::text[]) AS bulk_rows(c0)), "
        ));
        assert!(statement.sql.contains(
            ", w10 AS (INSERT INTO \"t10\" (\"a\") SELECT c0 FROM unnest($11::text[]) AS bulk_rows(c0)) "
        ));
        assert!(statement.sql.ends_with(
            ") INSERT INTO \"t11\" (\"a\") SELECT c0 FROM unnest($12::text[]) AS bulk_rows(c0)"
        ));
        assert_eq!(statement.values.unwrap().0.len(), 12);
    }

    #[test]
    fn quotes_in_identifiers_are_doubled() {
        let mut text = String::new();
        push_quoted(&mut text, &iden("odd\"name"));
        assert_eq!(text, "\"odd\"\"name\"");
    }

    #[test]
    fn mixed_types_in_a_column_are_an_error() {
        let mut rows = Rows::new(iden("t"), [iden("a")]);
        rows.push(vec!["text".into()]);
        rows.push(vec![1i64.into()]);
        assert!(unnest_statement(&rows, rows.rows.clone()).is_err());
    }

    #[tokio::test]
    async fn sqlite_rows_round_trip_with_nulls_and_conflicts() {
        let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        db.execute_unprepared(
            "CREATE TABLE terms (term TEXT NOT NULL, field INTEGER NOT NULL, note TEXT, \
             PRIMARY KEY (term, field))",
        )
        .await
        .unwrap();
        insert(&db, sample()).await.unwrap();
        // The same keys again are skipped, not an error.
        insert(&db, sample()).await.unwrap();
        let rows = db
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT term, field, note FROM terms ORDER BY term",
            ))
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        let note: Option<String> = rows[0].try_get_by_index(2).unwrap();
        assert_eq!(note, None);
        let note: Option<String> = rows[1].try_get_by_index(2).unwrap();
        assert_eq!(note.as_deref(), Some("x"));
    }

    #[tokio::test]
    async fn a_short_row_is_an_error() {
        let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        let mut rows = Rows::new(iden("t"), [iden("a"), iden("b")]);
        rows.rows.push(vec!["only one".into()]);
        assert!(insert(&db, rows).await.is_err());
    }
}
