//! The PostgreSQL side: `?N` parameters written as `$N`, statements prepared once per
//! connection, and [`Value`]s converted to and from whatever type the server gives a
//! parameter or a column — a `bigint` or an `integer`, a `boolean`, a `numeric` sum.

use std::error::Error;

use bytes::BytesMut;
use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use super::{List, Row, SqlError, Statements, Value, ValueRef, first_line};

type BoxError = Box<dyn Error + Sync + Send>;

/// A client, its prepared statements, and the transaction control not sent yet.
pub(super) struct Pg {
    client: postgres::Client,
    statements: Statements,
    /// `BEGIN`, `SAVEPOINT`, `RELEASE` and `ROLLBACK TO` waiting to go with the next
    /// statement: each is a round trip of its own otherwise, and the writer opens a savepoint
    /// or two for every job ([`Pg::defer`]).
    pending: Vec<String>,
}

impl Pg {
    pub(super) fn new(client: postgres::Client) -> Pg {
        Pg {
            client,
            statements: Statements::new(),
            pending: Vec::new(),
        }
    }

    /// Transaction control to send before the next statement, in one round trip with it (a
    /// batch) or just before it (a prepared statement).
    pub(super) fn defer(&mut self, sql: String) {
        self.pending.push(sql);
    }

    /// Takes back `opening` when it is the last thing waiting: the savepoint or transaction
    /// it opened saw no statement, so closing it needs nothing sent.
    pub(super) fn unsend(&mut self, opening: &str) -> bool {
        let last = self.pending.last().is_some_and(|l| l == opening);
        if last {
            self.pending.pop();
        }
        last
    }

    /// Forgets what is waiting: the transaction it belongs to is being rolled back whole.
    pub(super) fn discard(&mut self) {
        self.pending.clear();
    }

    /// Sends what is waiting, before a prepared statement.
    fn flush(&mut self) -> Result<(), SqlError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let sql = std::mem::take(&mut self.pending).join("; ");
        self.client.batch_execute(&sql).map_err(Self::fail(&sql))
    }

    fn fail(sql: &str) -> impl Fn(postgres::Error) -> SqlError + '_ {
        move |source| SqlError::Postgres {
            sql: first_line(sql),
            source,
        }
    }

    fn prepared(&mut self, sql: &str) -> Result<postgres::Statement, SqlError> {
        self.flush()?;
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let statement = self
            .client
            .prepare(&translate(sql))
            .map_err(Self::fail(sql))?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    pub(super) fn execute(&mut self, sql: &str, values: &[ValueRef<'_>]) -> Result<u64, SqlError> {
        let statement = self.prepared(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as _).collect();
        self.client
            .execute(&statement, &refs)
            .map_err(Self::fail(sql))
    }

    pub(super) fn query(
        &mut self,
        sql: &str,
        values: &[ValueRef<'_>],
    ) -> Result<Vec<Row>, SqlError> {
        let statement = self.prepared(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as _).collect();
        let rows = self
            .client
            .query(&statement, &refs)
            .map_err(Self::fail(sql))?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| {
                        r.try_get::<_, Cell>(i)
                            .map(|c| c.0)
                            .map_err(Self::fail(sql))
                    })
                    .collect::<Result<Vec<Value>, SqlError>>()
                    .map(Row)
            })
            .collect()
    }

    pub(super) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    pub(super) fn columns(&mut self, sql: &str) -> Result<Vec<String>, SqlError> {
        Ok(self
            .prepared(sql)?
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect())
    }

    pub(super) fn batch(&mut self, sql: &str) -> Result<(), SqlError> {
        if self.pending.is_empty() {
            return self.client.batch_execute(sql).map_err(Self::fail(sql));
        }
        self.pending.push(sql.to_owned());
        let all = std::mem::take(&mut self.pending).join("; ");
        self.client.batch_execute(&all).map_err(Self::fail(&all))
    }
}

/// `sql` with SQLite's `?N` (and bare `?`) parameters written as PostgreSQL's `$N`; quoted
/// text and identifiers are left alone.
pub(super) fn translate(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut next = 1u32;
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (None, '?') => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                if digits.is_empty() {
                    digits = next.to_string();
                }
                next = digits.parse::<u32>().map_or(next, |n| n + 1);
                out.push('$');
                out.push_str(&digits);
            }
            (None, c) => out.push(c),
        }
    }
    out
}

/// A parameter as the server typed it: a whole number binds to any integer type (checked),
/// a boolean, a float or text; every other value to its own kind.
impl ToSql for ValueRef<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let mismatch =
            || -> BoxError { format!("{} does not bind to a {ty} parameter", self.kind()).into() };
        match (self, ty.clone()) {
            (ValueRef::Null, _) => Ok(IsNull::Yes),
            (ValueRef::Int(i), Type::INT8) => i.to_sql(ty, out),
            (ValueRef::Int(i), Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (ValueRef::Int(i), Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (ValueRef::Int(i), Type::BOOL) => match i {
                0 => false.to_sql(ty, out),
                1 => true.to_sql(ty, out),
                _ => Err(format!("{i} binds to a boolean parameter only as 0 or 1").into()),
            },
            (ValueRef::Int(i), Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (ValueRef::Int(i), Type::FLOAT4) => (*i as f32).to_sql(ty, out),
            (ValueRef::Int(i), Type::TEXT | Type::VARCHAR) => i.to_string().to_sql(ty, out),
            (ValueRef::Real(r), Type::FLOAT8) => r.to_sql(ty, out),
            (ValueRef::Real(r), Type::FLOAT4) => (*r as f32).to_sql(ty, out),
            (ValueRef::Real(r), Type::TEXT | Type::VARCHAR) => r.to_string().to_sql(ty, out),
            (
                ValueRef::Text(t),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN,
            ) => t.to_sql(&Type::TEXT, out),
            (ValueRef::Blob(b), Type::BYTEA) => b.to_sql(ty, out),
            (ValueRef::List(List::Ints(v)), Type::INT8_ARRAY) => v.to_sql(ty, out),
            (ValueRef::List(List::MaybeInts(v)), Type::INT8_ARRAY) => v.to_sql(ty, out),
            (ValueRef::List(List::Texts(v)), Type::TEXT_ARRAY) => v.to_sql(ty, out),
            _ => Err(mismatch()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A column read as a [`Value`], whatever its type.
struct Cell(Value);

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let v = match ty.clone() {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT2 => Value::Int(i64::from(i16::from_sql(ty, raw)?)),
            Type::OID => Value::Int(i64::from(u32::from_sql(ty, raw)?)),
            Type::BOOL => Value::Int(i64::from(bool::from_sql(ty, raw)?)),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f64::from(f32::from_sql(ty, raw)?)),
            Type::NUMERIC => numeric(raw)?,
            Type::BYTEA => Value::Blob(<Vec<u8>>::from_sql(ty, raw)?),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                Value::Text(String::from_sql(&Type::TEXT, raw)?)
            }
            other => return Err(format!("a column of type {other} is not read by kiln").into()),
        };
        Ok(Cell(v))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Cell(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A `numeric` in its binary form (digit count, weight, sign, scale, then base-10000
/// digits): an integer when it is whole and fits, else a float.
pub(super) fn numeric(raw: &[u8]) -> Result<Value, BoxError> {
    let word = |i: usize| -> Result<u16, BoxError> {
        raw.get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "a numeric shorter than its header says".into())
    };
    let ndigits = usize::from(word(0)?);
    let weight = word(1)? as i16;
    let sign = word(2)?;
    let scale = word(3)?;
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Ok(Value::Real(f64::NAN)),
        other => return Err(format!("a numeric with sign word {other:#06x}").into()),
    }
    let mut whole: i128 = 0;
    let mut real = 0f64;
    let mut exact = scale == 0;
    for i in 0..ndigits {
        let digit = word(4 + i)?;
        if digit >= 10_000 {
            return Err(format!("a numeric digit {digit} past 9999").into());
        }
        let power = i32::from(weight) - i as i32;
        real += f64::from(digit) * 10_000f64.powi(power);
        if power < 0 && digit != 0 {
            exact = false;
        }
        if exact && power >= 0 {
            whole = 10_000i128
                .checked_pow(power as u32)
                .and_then(|p| p.checked_mul(i128::from(digit)))
                .and_then(|d| whole.checked_add(d))
                .unwrap_or_else(|| {
                    exact = false;
                    0
                });
        }
    }
    let negative = sign == 0x4000;
    if exact {
        let signed = if negative { -whole } else { whole };
        if let Ok(i) = i64::try_from(signed) {
            return Ok(Value::Int(i));
        }
    }
    Ok(Value::Real(if negative { -real } else { real }))
}
