//! Values as both engines store them — SQLite's five storage classes — and what Rust values
//! bind as ([`ToValue`]) and read as ([`FromValue`]).

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

macro_rules! value_from {
    ($($t:ty => $v:ident),+) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::$v(v.into())
            }
        }
    )+};
}
value_from!(i64 => Int, i32 => Int, u32 => Int, bool => Int, f64 => Real, String => Text, &str => Text, Vec<u8> => Blob);

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

impl Value {
    pub(super) fn kind(&self) -> &'static str {
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
    /// A list, bound as one array parameter: PostgreSQL only (SQLite has no arrays).
    List(List<'a>),
}

/// A list bound as one PostgreSQL array: many rows in one statement, each value sent in the
/// server's binary form, with nothing to quote on the way and nothing to parse on arrival.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum List<'a> {
    /// A `bigint[]`.
    Ints(&'a [i64]),
    /// A `bigint[]` with NULLs.
    MaybeInts(&'a [Option<i64>]),
    /// A `text[]`.
    Texts(&'a [&'a str]),
}

impl ValueRef<'_> {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            ValueRef::Null => "NULL",
            ValueRef::Int(_) => "an integer",
            ValueRef::Real(_) => "a real",
            ValueRef::Text(_) => "text",
            ValueRef::Blob(_) => "a blob",
            ValueRef::List(List::Ints(_) | List::MaybeInts(_)) => "a list of integers",
            ValueRef::List(List::Texts(_)) => "a list of texts",
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
            ValueRef::List(_) => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    format!(
                        "{} binds on PostgreSQL only: SQLite has no arrays",
                        self.kind()
                    )
                    .into(),
                ));
            }
        }))
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

macro_rules! list_to_value {
    ($($t:ty => $v:ident),+) => {$(
        impl ToValue for [$t] {
            fn to_value(&self) -> ValueRef<'_> {
                ValueRef::List(List::$v(self))
            }
        }

        impl ToValue for Vec<$t> {
            fn to_value(&self) -> ValueRef<'_> {
                ValueRef::List(List::$v(self))
            }
        }
    )+};
}
list_to_value!(i64 => Ints, Option<i64> => MaybeInts);

impl ToValue for [&str] {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::List(List::Texts(self))
    }
}

impl ToValue for Vec<&str> {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::List(List::Texts(self))
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
