//! One SQL interface over the two databases a collector can keep its runs in: SQLite (one
//! collector, one file) and PostgreSQL (several collectors sharing it). Statements are
//! written once, in the subset both speak (`?N` parameters, `ON CONFLICT … DO NOTHING`,
//! `RETURNING`, `CAST(… AS BIGINT)`); values travel as [`Value`], SQLite's five storage
//! classes, so a row reads the same from either engine: an integer, a boolean and a PostgreSQL
//! `numeric` sum are all an [`Value::Int`] when they are whole. Nested [`Savepoint`]s are a
//! transaction at the outermost level and savepoints inside it, on both.
//!
//! Synchronous on purpose: the store runs its transactions on plain threads of its own
//! (group commit), so the PostgreSQL side is the `postgres` crate's blocking client.

mod pg;
#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// A value as both engines store it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A whole number (integers, booleans as 0 and 1, whole `numeric`s).
    Int(i64),
    /// A floating-point number (or a `numeric` with a fraction).
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Value {
    fn kind(&self) -> &'static str {
        self.as_ref().kind()
    }

    /// The value, borrowed.
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Int(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(t) => ValueRef::Text(t),
            Value::Blob(b) => ValueRef::Blob(b),
        }
    }
}

/// A parameter's value, borrowed from what it binds (nothing is copied on the way to the
/// engine).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// SQL NULL.
    Null,
    /// A whole number.
    Int(i64),
    /// A floating-point number.
    Real(f64),
    /// Text.
    Text(&'a str),
    /// Bytes.
    Blob(&'a [u8]),
}

impl ValueRef<'_> {
    fn kind(&self) -> &'static str {
        match self {
            ValueRef::Null => "NULL",
            ValueRef::Int(_) => "an integer",
            ValueRef::Real(_) => "a real",
            ValueRef::Text(_) => "text",
            ValueRef::Blob(_) => "a blob",
        }
    }
}

impl rusqlite::ToSql for ValueRef<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef as V};
        Ok(ToSqlOutput::Borrowed(match *self {
            ValueRef::Null => V::Null,
            ValueRef::Int(i) => V::Integer(i),
            ValueRef::Real(r) => V::Real(r),
            ValueRef::Text(t) => V::Text(t.as_bytes()),
            ValueRef::Blob(b) => V::Blob(b),
        }))
    }
}

/// Why a statement failed; each names the statement (its first line) where it helps.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// SQLite refused.
    #[error("SQLite: {source}; in `{sql}`")]
    Sqlite {
        /// The statement.
        sql: String,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// PostgreSQL refused, or the connection failed.
    #[error("PostgreSQL: {source}; in `{sql}`")]
    Postgres {
        /// The statement.
        sql: String,
        /// The server's (or the client's) error.
        #[source]
        source: postgres::Error,
    },
    /// A column that does not hold what the reader expects.
    #[error("column {column} holds {got}, expected {want}")]
    Type {
        /// Column index.
        column: usize,
        /// What was asked for.
        want: &'static str,
        /// What is there.
        got: &'static str,
    },
    /// `query_row` found no row.
    #[error("no row")]
    NoRows,
}

fn first_line(sql: &str) -> String {
    let line = sql.trim().lines().next().unwrap_or("");
    match line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

/// What a Rust value binds as.
pub trait ToValue {
    /// The value, borrowed from `self`.
    fn to_value(&self) -> ValueRef<'_>;
}

macro_rules! int_to_value {
    ($($t:ty),+) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> ValueRef<'_> {
                ValueRef::Int(i64::from(*self))
            }
        }
    )+};
}
int_to_value!(i64, i32, u32, u16, u8, i16, bool);

impl ToValue for u64 {
    fn to_value(&self) -> ValueRef<'_> {
        // Counters past i64::MAX do not occur; saturate rather than wrap into negatives.
        ValueRef::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToValue for usize {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Real(*self)
    }
}

impl ToValue for str {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Text(self)
    }
}

impl ToValue for String {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Text(self)
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}

impl ToValue for Value {
    fn to_value(&self) -> ValueRef<'_> {
        self.as_ref()
    }
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> ValueRef<'_> {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> ValueRef<'_> {
        self.as_ref().map_or(ValueRef::Null, ToValue::to_value)
    }
}

/// What a column reads as.
pub trait FromValue: Sized {
    /// The Rust value, or what the column held instead.
    fn from_value(value: &Value) -> Result<Self, &'static str>;
    /// What it expects, for errors.
    const WANT: &'static str;
}

macro_rules! int_from_value {
    ($($t:ty),+) => {$(
        impl FromValue for $t {
            const WANT: &'static str = concat!("an integer that fits ", stringify!($t));
            fn from_value(value: &Value) -> Result<Self, &'static str> {
                match value {
                    Value::Int(i) => <$t>::try_from(*i).map_err(|_| "an integer out of range"),
                    other => Err(other.kind()),
                }
            }
        }
    )+};
}
int_from_value!(i64, i32, u32, u64, usize, u16, u8);

impl FromValue for bool {
    const WANT: &'static str = "a boolean (0 or 1)";
    fn from_value(value: &Value) -> Result<Self, &'static str> {
        match value {
            Value::Int(0) => Ok(false),
            Value::Int(1) => Ok(true),
            Value::Int(_) => Err("an integer other than 0 and 1"),
            other => Err(other.kind()),
        }
    }
}

impl FromValue for f64 {
    const WANT: &'static str = "a number";
    fn from_value(value: &Value) -> Result<Self, &'static str> {
        match value {
            Value::Real(r) => Ok(*r),
            Value::Int(i) => Ok(*i as f64),
            other => Err(other.kind()),
        }
    }
}

impl FromValue for String {
    const WANT: &'static str = "text";
    fn from_value(value: &Value) -> Result<Self, &'static str> {
        match value {
            Value::Text(t) => Ok(t.clone()),
            other => Err(other.kind()),
        }
    }
}

impl FromValue for Vec<u8> {
    const WANT: &'static str = "a blob";
    fn from_value(value: &Value) -> Result<Self, &'static str> {
        match value {
            Value::Blob(b) => Ok(b.clone()),
            other => Err(other.kind()),
        }
    }
}

impl FromValue for Value {
    const WANT: &'static str = "any value";
    fn from_value(value: &Value) -> Result<Self, &'static str> {
        Ok(value.clone())
    }
}

impl<T: FromValue> FromValue for Option<T> {
    const WANT: &'static str = T::WANT;
    fn from_value(value: &Value) -> Result<Self, &'static str> {
        match value {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// A row read whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Value>);

impl Row {
    /// Column `i` as `T`.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T, SqlError> {
        let value = self.0.get(i).unwrap_or(&Value::Null);
        T::from_value(value).map_err(|got| SqlError::Type {
            column: i,
            want: T::WANT,
            got,
        })
    }
}

/// Parameters: `params![a, b]` is `&[&dyn ToValue]`.
#[macro_export]
macro_rules! sql_params {
    () => { &[] as &[&dyn $crate::store::sql::ToValue] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::store::sql::ToValue),+] as &[&dyn $crate::store::sql::ToValue] };
}
pub use sql_params as params;

/// Which engine a connection speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

enum Engine<'a> {
    Sqlite(rusqlite::Connection),
    /// A connection the store's threads own (the code not yet on this interface uses it too).
    SqliteRef(&'a rusqlite::Connection),
    Postgres(RefCell<pg::Pg>),
}

/// A connection to either engine.
pub struct Connection<'a> {
    engine: Engine<'a>,
    /// Open transaction levels: 0 outside one, 1 in a transaction, more in savepoints.
    depth: Cell<u32>,
}

impl Connection<'static> {
    /// Wraps an open SQLite connection.
    pub fn sqlite(conn: rusqlite::Connection) -> Connection<'static> {
        Connection {
            engine: Engine::Sqlite(conn),
            depth: Cell::new(0),
        }
    }

    /// Connects to PostgreSQL at `url` (`postgresql://…`).
    pub fn postgres(url: &str) -> Result<Connection<'static>, SqlError> {
        let client = postgres::Client::connect(url, postgres::NoTls).map_err(|source| {
            SqlError::Postgres {
                sql: "(connect)".into(),
                source,
            }
        })?;
        Ok(Connection {
            engine: Engine::Postgres(RefCell::new(pg::Pg::new(client))),
            depth: Cell::new(0),
        })
    }
}

impl<'a> Connection<'a> {
    /// Speaks through a SQLite connection someone else owns; inside its open transaction, if
    /// it has one (then [`Connection::savepoint`] opens savepoints in it).
    pub fn over(conn: &'a rusqlite::Connection) -> Connection<'a> {
        Connection {
            engine: Engine::SqliteRef(conn),
            depth: Cell::new(u32::from(!conn.is_autocommit())),
        }
    }

    /// The SQLite connection, when this is SQLite.
    fn sqlite_conn(&self) -> Option<&rusqlite::Connection> {
        match &self.engine {
            Engine::Sqlite(c) => Some(c),
            Engine::SqliteRef(c) => Some(c),
            Engine::Postgres(_) => None,
        }
    }

    /// Which engine this is.
    pub fn kind(&self) -> EngineKind {
        match self.engine {
            Engine::Sqlite(_) | Engine::SqliteRef(_) => EngineKind::Sqlite,
            Engine::Postgres(_) => EngineKind::Postgres,
        }
    }

    /// Runs a statement; returns the rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn ToValue]) -> Result<u64, SqlError> {
        match (&self.engine, self.sqlite_conn()) {
            (Engine::Postgres(p), _) => p.borrow_mut().execute(sql, params),
            (_, c) => sqlite_execute(c, sql, params),
        }
    }

    /// Every row a query returns, read whole.
    pub fn query(&self, sql: &str, params: &[&dyn ToValue]) -> Result<Vec<Row>, SqlError> {
        match (&self.engine, self.sqlite_conn()) {
            (Engine::Postgres(p), _) => p.borrow_mut().query(sql, params),
            (_, c) => sqlite_query(c, sql, params),
        }
    }

    /// Each row mapped by `f`.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        f: impl FnMut(&Row) -> Result<T, SqlError>,
    ) -> Result<Vec<T>, SqlError> {
        self.query(sql, params)?.iter().map(f).collect()
    }

    /// The first row mapped by `f`, or `None` when there is none.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        f: impl FnOnce(&Row) -> Result<T, SqlError>,
    ) -> Result<Option<T>, SqlError> {
        self.query(sql, params)?.first().map(f).transpose()
    }

    /// The first row mapped by `f`; [`SqlError::NoRows`] when there is none.
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        f: impl FnOnce(&Row) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        self.query_opt(sql, params, f)?.ok_or(SqlError::NoRows)
    }

    /// Runs statements separated by `;`, without parameters (schema, transaction control).
    pub fn execute_batch(&self, sql: &str) -> Result<(), SqlError> {
        match (&self.engine, self.sqlite_conn()) {
            (Engine::Postgres(p), _) => p.borrow_mut().batch(sql),
            (_, c) => sqlite_of(c, sql)?
                .execute_batch(sql)
                .map_err(|source| SqlError::Sqlite {
                    sql: first_line(sql),
                    source,
                }),
        }
    }

    /// Opens a transaction (or, inside one, a savepoint): committed by
    /// [`Savepoint::commit`], rolled back when dropped without it.
    pub fn savepoint(&self) -> Result<Savepoint<'_, 'a>, SqlError> {
        let level = self.depth.get() + 1;
        self.execute_batch(&if level == 1 {
            "BEGIN".to_owned()
        } else {
            format!("SAVEPOINT kiln_{level}")
        })?;
        self.depth.set(level);
        Ok(Savepoint {
            conn: self,
            level,
            done: false,
        })
    }
}

/// An open transaction or savepoint; derefs to its connection.
pub struct Savepoint<'c, 'a> {
    conn: &'c Connection<'a>,
    level: u32,
    done: bool,
}

impl Savepoint<'_, '_> {
    /// Makes what was done in it part of the enclosing transaction (or durable, outermost).
    pub fn commit(mut self) -> Result<(), SqlError> {
        self.done = true;
        self.conn.depth.set(self.level - 1);
        self.conn.execute_batch(&if self.level == 1 {
            "COMMIT".to_owned()
        } else {
            format!("RELEASE SAVEPOINT kiln_{}", self.level)
        })
    }
}

impl<'a> std::ops::Deref for Savepoint<'_, 'a> {
    type Target = Connection<'a>;
    fn deref(&self) -> &Connection<'a> {
        self.conn
    }
}

impl Drop for Savepoint<'_, '_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.conn.depth.set(self.level - 1);
        let undo = if self.level == 1 {
            "ROLLBACK".to_owned()
        } else {
            format!(
                "ROLLBACK TO SAVEPOINT kiln_{0}; RELEASE SAVEPOINT kiln_{0}",
                self.level
            )
        };
        if let Err(err) = self.conn.execute_batch(&undo) {
            tracing::error!(error = %err, "a rollback failed");
        }
    }
}

/// The SQLite connection a non-PostgreSQL engine always has.
fn sqlite_of<'c>(
    c: Option<&'c rusqlite::Connection>,
    sql: &str,
) -> Result<&'c rusqlite::Connection, SqlError> {
    c.ok_or_else(|| SqlError::Sqlite {
        sql: first_line(sql),
        source: rusqlite::Error::InvalidQuery,
    })
}

fn sqlite_fail(sql: &str) -> impl Fn(rusqlite::Error) -> SqlError + '_ {
    move |source| SqlError::Sqlite {
        sql: first_line(sql),
        source,
    }
}

fn sqlite_execute(
    c: Option<&rusqlite::Connection>,
    sql: &str,
    params: &[&dyn ToValue],
) -> Result<u64, SqlError> {
    let values: Vec<ValueRef<'_>> = params.iter().map(|p| p.to_value()).collect();
    let mut stmt = sqlite_of(c, sql)?
        .prepare_cached(sql)
        .map_err(sqlite_fail(sql))?;
    let n = stmt
        .execute(rusqlite::params_from_iter(values.iter()))
        .map_err(sqlite_fail(sql))?;
    Ok(n as u64)
}

fn sqlite_query(
    c: Option<&rusqlite::Connection>,
    sql: &str,
    params: &[&dyn ToValue],
) -> Result<Vec<Row>, SqlError> {
    let fail = sqlite_fail(sql);
    let values: Vec<ValueRef<'_>> = params.iter().map(|p| p.to_value()).collect();
    let mut stmt = sqlite_of(c, sql)?.prepare_cached(sql).map_err(&fail)?;
    let columns = stmt.column_count();
    let mut rows = stmt
        .query(rusqlite::params_from_iter(values.iter()))
        .map_err(&fail)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(&fail)? {
        let mut row = Vec::with_capacity(columns);
        for i in 0..columns {
            row.push(from_sqlite(r.get_ref(i).map_err(&fail)?));
        }
        out.push(Row(row));
    }
    Ok(out)
}

/// A cache of prepared statements by their text (PostgreSQL's; SQLite's is rusqlite's own).
type Statements = HashMap<String, postgres::Statement>;

fn from_sqlite(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(r) => Value::Real(r),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}
