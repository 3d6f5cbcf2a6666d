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
mod value;

pub use value::{FromValue, List, ToValue, Value, ValueRef};

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

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
    #[error("PostgreSQL: {}; in `{sql}`", pg_says(source))]
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
    /// A column asked for by a name the statement does not have.
    #[error("no column named {0}")]
    NoColumn(String),
}

impl SqlError {
    /// Whether PostgreSQL aborted the statement for a deadlock or a serialization failure:
    /// nothing is wrong with it, and run again it may well go through.
    pub fn is_conflict(&self) -> bool {
        use postgres::error::SqlState;
        match self {
            SqlError::Postgres { source, .. } => source.code().is_some_and(|code| {
                *code == SqlState::T_R_DEADLOCK_DETECTED
                    || *code == SqlState::T_R_SERIALIZATION_FAILURE
            }),
            _ => false,
        }
    }
}

/// What PostgreSQL said: the server's message with its SQLSTATE and detail, else the
/// client's error (the connection) with its cause.
fn pg_says(err: &postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => {
            let mut said = format!("{} ({})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                said += &format!(": {detail}");
            }
            said
        }
        None => match std::error::Error::source(err) {
            Some(cause) => format!("{err}: {cause}"),
            None => err.to_string(),
        },
    }
}

fn first_line(sql: &str) -> String {
    let line = sql.trim().lines().next().unwrap_or("");
    match line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
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

impl Row {
    /// Column `i` as text without copying it; `None` for NULL.
    pub fn text(&self, i: usize) -> Result<Option<&str>, SqlError> {
        match self.0.get(i).unwrap_or(&Value::Null) {
            Value::Null => Ok(None),
            Value::Text(t) => Ok(Some(t)),
            other => Err(SqlError::Type {
                column: i,
                want: "text",
                got: other.kind(),
            }),
        }
    }
}

/// Parameters: `params![a, b]` is `&[&dyn ToValue]`.
#[macro_export]
macro_rules! sql_params {
    () => { &[] as &[&dyn $crate::store::sql::ToValue] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::store::sql::ToValue),+] as &[&dyn $crate::store::sql::ToValue] };
}
pub use sql_params as params;

/// What a statement's parameters can be given as: `params![a, b]`, an array of one type
/// (`[id]`, `[]`), or a slice of values.
pub trait Params {
    /// The values, borrowed.
    fn values(&self) -> Vec<ValueRef<'_>>;
}

impl Params for [&dyn ToValue; 0] {
    fn values(&self) -> Vec<ValueRef<'_>> {
        Vec::new()
    }
}

impl<T: ToValue> Params for &[T] {
    fn values(&self) -> Vec<ValueRef<'_>> {
        self.iter().map(ToValue::to_value).collect()
    }
}

macro_rules! array_params {
    ($($n:literal),+) => {$(
        impl<T: ToValue> Params for [T; $n] {
            fn values(&self) -> Vec<ValueRef<'_>> {
                self.iter().map(ToValue::to_value).collect()
            }
        }
    )+};
}
array_params!(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12);

/// `query_row(…).optional()`: no row is `None`, every other error stays one.
pub trait OptionalExtension<T> {
    /// The row, `None` when there was none.
    fn optional(self) -> Result<Option<T>, SqlError>;
}

impl<T> OptionalExtension<T> for Result<T, SqlError> {
    fn optional(self) -> Result<Option<T>, SqlError> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(SqlError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A statement to run more than once, or in rusqlite's shape (`prepare_cached(…)?.query_map`);
/// engines cache prepared statements by text anyway.
pub struct Statement<'c, 'a> {
    conn: &'c Connection<'a>,
    sql: String,
}

impl Statement<'_, '_> {
    /// Runs it; returns the rows it changed.
    pub fn execute<P: Params>(&mut self, params: P) -> Result<usize, SqlError> {
        self.conn.execute(&self.sql, params)
    }

    /// Each row mapped by `f`.
    pub fn query_map<T, P: Params>(
        &mut self,
        params: P,
        mut f: impl FnMut(&Row) -> Result<T, SqlError>,
    ) -> Result<std::vec::IntoIter<Result<T, SqlError>>, SqlError> {
        let rows = self.conn.query(&self.sql, params)?;
        Ok(rows.iter().map(&mut f).collect::<Vec<_>>().into_iter())
    }

    /// The first row mapped by `f`; [`SqlError::NoRows`] when there is none.
    pub fn query_row<T, P: Params>(
        &mut self,
        params: P,
        f: impl FnOnce(&Row) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        self.conn.query_row(&self.sql, params, f)
    }

    /// The names of the columns it returns, in order.
    pub fn column_names(&self) -> Result<Vec<String>, SqlError> {
        self.conn.columns(&self.sql)
    }

    /// Its rows, read whole, to walk with [`Rows::next`].
    pub fn query<P: Params>(&mut self, params: P) -> Result<Rows, SqlError> {
        Ok(Rows {
            rows: self.conn.query(&self.sql, params)?.into_iter(),
            current: None,
        })
    }
}

/// Rows to walk one at a time.
pub struct Rows {
    rows: std::vec::IntoIter<Row>,
    current: Option<Row>,
}

impl Rows {
    /// The next row, `None` after the last.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<&Row>, SqlError> {
        self.current = self.rows.next();
        Ok(self.current.as_ref())
    }
}

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
        let fail = |source| SqlError::Postgres {
            sql: "(connect)".into(),
            source,
        };
        let mut config: postgres::Config = url.parse().map_err(fail)?;
        // A server that does not answer is a database lost, said within seconds.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(5));
        }
        let mut client = config.connect(postgres::NoTls).map_err(fail)?;
        // An acknowledgement promises a flushed commit, whatever the server, the database
        // or the role was set up with. And no JIT: compiling a report's query each time it
        // runs costs more than it saves (see docs/benchmarks.md).
        client
            .batch_execute("SET synchronous_commit = on; SET jit = off")
            .map_err(fail)?;
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

    /// The SQLite connection underneath, for what only SQLite has (query plans, hooks).
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        self.sqlite_conn()
    }

    /// The SQLite connection, when this is SQLite.
    fn sqlite_conn(&self) -> Option<&rusqlite::Connection> {
        match &self.engine {
            Engine::Sqlite(c) => Some(c),
            Engine::SqliteRef(c) => Some(c),
            Engine::Postgres(_) => None,
        }
    }

    /// Whether the connection is gone (PostgreSQL's server closed it or died; a SQLite
    /// connection never is).
    pub fn is_closed(&self) -> bool {
        match &self.engine {
            Engine::Postgres(p) => p.borrow().is_closed(),
            _ => false,
        }
    }

    /// Which engine this is.
    pub fn kind(&self) -> EngineKind {
        match self.engine {
            Engine::Sqlite(_) | Engine::SqliteRef(_) => EngineKind::Sqlite,
            Engine::Postgres(_) => EngineKind::Postgres,
        }
    }

    /// What ends a read of rows the transaction goes on to change: on PostgreSQL, where
    /// another writer (this collector's or another's) may be at the same rows, `FOR UPDATE`
    /// locks them until the commit, so that what was read is still so when it is written. On
    /// SQLite the one writer holds the whole database already.
    pub fn for_update(&self) -> &'static str {
        match self.kind() {
            EngineKind::Postgres => " FOR UPDATE",
            EngineKind::Sqlite => "",
        }
    }

    /// Runs a statement; returns the rows it changed.
    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize, SqlError> {
        let values = params.values();
        match (&self.engine, self.sqlite_conn()) {
            (Engine::Postgres(p), _) => p
                .borrow_mut()
                .execute(sql, &values)
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            (_, c) => sqlite_execute(c, sql, &values),
        }
    }

    /// Every row a query returns, read whole.
    pub fn query<P: Params>(&self, sql: &str, params: P) -> Result<Vec<Row>, SqlError> {
        let values = params.values();
        match (&self.engine, self.sqlite_conn()) {
            (Engine::Postgres(p), _) => p.borrow_mut().query(sql, &values),
            (_, c) => sqlite_query(c, sql, &values),
        }
    }

    /// The names of the columns `sql` returns, in order.
    pub fn columns(&self, sql: &str) -> Result<Vec<String>, SqlError> {
        match (&self.engine, self.sqlite_conn()) {
            (Engine::Postgres(p), _) => p.borrow_mut().columns(sql),
            (_, c) => Ok(sqlite_of(c, sql)?
                .prepare_cached(sql)
                .map_err(sqlite_fail(sql))?
                .column_names()
                .into_iter()
                .map(str::to_owned)
                .collect()),
        }
    }

    /// `sql` as a statement to run (rusqlite's shape; see [`Statement`]).
    pub fn prepare_cached(&self, sql: &str) -> Result<Statement<'_, 'a>, SqlError> {
        Ok(Statement {
            conn: self,
            sql: sql.to_owned(),
        })
    }

    /// The same as [`Connection::prepare_cached`]: every statement is cached.
    pub fn prepare(&self, sql: &str) -> Result<Statement<'_, 'a>, SqlError> {
        self.prepare_cached(sql)
    }

    /// Each row mapped by `f`.
    pub fn query_map<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnMut(&Row) -> Result<T, SqlError>,
    ) -> Result<Vec<T>, SqlError> {
        self.query(sql, params)?.iter().map(f).collect()
    }

    /// The first row mapped by `f`, or `None` when there is none.
    pub fn query_opt<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row) -> Result<T, SqlError>,
    ) -> Result<Option<T>, SqlError> {
        self.query(sql, params)?.first().map(f).transpose()
    }

    /// The first row mapped by `f`; [`SqlError::NoRows`] when there is none.
    pub fn query_row<T, P: Params>(
        &self,
        sql: &str,
        params: P,
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
        self.open_level("BEGIN")
    }

    /// Opens the writer's transaction for a group of jobs: on SQLite it takes the write lock
    /// at once (`BEGIN IMMEDIATE`), so no statement in it waits for one half-way.
    pub fn group(&self) -> Result<Savepoint<'_, 'a>, SqlError> {
        self.open_level(match self.kind() {
            EngineKind::Sqlite => "BEGIN IMMEDIATE",
            EngineKind::Postgres => "BEGIN",
        })
    }

    /// Opens a read transaction that sees one snapshot throughout (a page built from several
    /// queries shows one moment); rolled back when dropped.
    pub fn snapshot(&self) -> Result<Savepoint<'_, 'a>, SqlError> {
        self.open_level(match self.kind() {
            EngineKind::Sqlite => "BEGIN",
            EngineKind::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        })
    }

    fn open_level(&self, begin: &str) -> Result<Savepoint<'_, 'a>, SqlError> {
        let level = self.depth.get() + 1;
        let opening = match level {
            1 => begin.to_owned(),
            _ => format!("SAVEPOINT kiln_{level}"),
        };
        match &self.engine {
            // Sent with the next statement: on PostgreSQL each is a round trip otherwise.
            Engine::Postgres(p) => p.borrow_mut().defer(opening.clone()),
            _ => self.execute_batch(&opening)?,
        }
        self.depth.set(level);
        Ok(Savepoint {
            conn: self,
            level,
            opening,
            done: false,
        })
    }
}

/// An open transaction or savepoint; derefs to its connection.
pub struct Savepoint<'c, 'a> {
    conn: &'c Connection<'a>,
    level: u32,
    /// The statement that opened it (on PostgreSQL, perhaps not sent yet).
    opening: String,
    done: bool,
}

impl Savepoint<'_, '_> {
    /// Makes what was done in it part of the enclosing transaction (or durable, outermost).
    pub fn commit(mut self) -> Result<(), SqlError> {
        self.done = true;
        self.conn.depth.set(self.level - 1);
        let close = match self.level {
            1 => "COMMIT".to_owned(),
            level => format!("RELEASE SAVEPOINT kiln_{level}"),
        };
        let Engine::Postgres(p) = &self.conn.engine else {
            return self.conn.execute_batch(&close);
        };
        let mut p = p.borrow_mut();
        if p.unsend(&self.opening) {
            return Ok(());
        }
        if self.level > 1 {
            p.defer(close);
            return Ok(());
        }
        // A RELEASE still waiting goes with the COMMIT. PostgreSQL answers a COMMIT of a
        // transaction a failed statement aborted with a silent ROLLBACK, so a statement that
        // fails in an aborted one goes first: then the COMMIT is not run, the caller gets the
        // error, and the transaction does not stay open behind it.
        let committed = p.batch("SELECT 1; COMMIT");
        if committed.is_err() {
            p.discard();
            let _ = p.batch("ROLLBACK");
        }
        committed
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
        if let Engine::Postgres(p) = &self.conn.engine {
            let mut p = p.borrow_mut();
            if p.unsend(&self.opening) {
                return;
            }
            if self.level > 1 {
                p.defer(format!(
                    "ROLLBACK TO SAVEPOINT kiln_{0}; RELEASE SAVEPOINT kiln_{0}",
                    self.level
                ));
                return;
            }
            // Everything still waiting belongs to what is rolled back.
            p.discard();
        }
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
    values: &[ValueRef<'_>],
) -> Result<usize, SqlError> {
    let mut stmt = sqlite_of(c, sql)?
        .prepare_cached(sql)
        .map_err(sqlite_fail(sql))?;
    stmt.execute(rusqlite::params_from_iter(values.iter()))
        .map_err(sqlite_fail(sql))
}

fn sqlite_query(
    c: Option<&rusqlite::Connection>,
    sql: &str,
    values: &[ValueRef<'_>],
) -> Result<Vec<Row>, SqlError> {
    let fail = sqlite_fail(sql);
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
