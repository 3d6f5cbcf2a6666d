//! The states a node and its runs can be in, as types. SQL sees them only through these: they
//! are bound as parameters and read back through `FromStr`, so a misspelt state is a compile
//! error here and a refused row there, never a silent mismatch.

use super::sql::{FromValue, ToValue, Value, ValueRef};

pub use kiln_protocol::api::{Mode, RunStage, Word};

/// The SQL conversions of words ([`kiln_protocol::words!`]) stored as themselves: bound as
/// the word, read back through [`Word::from_word`], so a stranger is a refused row.
macro_rules! stored_words {
    ($($name:ident),+) => {$(
        impl ToValue for $name {
            fn to_value(&self) -> ValueRef<'_> {
                ValueRef::Text(self.word())
            }
        }

        impl FromValue for $name {
            const WANT: &'static str = concat!("a ", stringify!($name), " word");
            fn from_value(value: &Value) -> Result<Self, &'static str> {
                read_word(value)
            }
        }
    )+};
}

/// A stored word read back, or what the column held instead.
fn read_word<T: Word>(value: &Value) -> Result<T, &'static str> {
    match value {
        Value::Text(t) => T::from_word(t).map_err(|_| "a word it does not know"),
        Value::Null => Err("NULL"),
        _ => Err("a number or bytes"),
    }
}

kiln_protocol::words!(
    /// A stage of a run, in the order a node goes through them.
    Stage, "stage", {
        /// memtest86+ before any OS loads.
        Memtest => "memtest",
        /// The RAM image and the agent's suite.
        Linux => "linux",
        /// Power cycles, each boot's inventory checked against the first's.
        Cycles => "cycles",
    }
);

kiln_protocol::words!(
    /// Where a stage is.
    StageState, "stage state", {
        /// Not handed to the node yet.
        Pending => "pending",
        /// Handed to the node; a verdict is awaited.
        Running => "running",
        /// Has its verdict.
        Done => "done",
    }
);

kiln_protocol::words!(
    /// Where a power cycle is.
    CycleState, "cycle state", {
        /// Its power action is owed.
        Due => "due",
        /// Its power action went out; the node has not asked for its boot script yet.
        Powering => "powering",
        /// The node was handed its boot; its agent has not reported yet.
        Booting => "booting",
        /// Its agent reported the boot's inventory.
        Reported => "reported",
    }
);

stored_words!(Stage, StageState, CycleState);

impl From<Stage> for RunStage {
    fn from(stage: Stage) -> Self {
        match stage {
            Stage::Memtest => RunStage::Memtest,
            Stage::Linux => RunStage::Linux,
            Stage::Cycles => RunStage::Cycles,
        }
    }
}

/// A word of `protocol` (a [`Word`]: mode, run stage, verdict) as SQL sees it: the word
/// itself, read back through [`Word::from_word`], so a stranger in the database is a refused
/// row. (`protocol` has no SQL: the wrapper is the collector's.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sql<T>(pub T);

impl<T: Word> ToValue for Sql<T> {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Text(self.0.word())
    }
}

impl<T: Word> FromValue for Sql<T> {
    const WANT: &'static str = "a word";
    fn from_value(value: &Value) -> Result<Self, &'static str> {
        read_word(value).map(Sql)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for m in Mode::ALL {
            assert_eq!(m.to_string().parse::<Mode>(), Ok(*m));
        }
        for s in Stage::ALL {
            assert_eq!(s.name().parse::<Stage>(), Ok(*s));
            assert_eq!(RunStage::from(*s).name(), s.name());
        }
        for s in StageState::ALL {
            assert_eq!(s.name().parse::<StageState>(), Ok(*s));
        }
        let err = "Verify".parse::<Mode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown mode \"Verify\"; expected one of verify, local, hold"
        );
    }

    #[test]
    fn sql_reads_back_what_it_wrote_and_refuses_strangers() {
        let conn =
            crate::store::sql::Connection::sqlite(rusqlite::Connection::open_in_memory().unwrap());
        let back: Sql<Mode> = conn
            .query_row("SELECT ?1", [Sql(Mode::Hold)], |r| r.get(0))
            .unwrap();
        assert_eq!(back.0, Mode::Hold);
        let stranger = conn.query_row("SELECT 'reboot'", [], |r| r.get::<Sql<Mode>>(0));
        assert!(stranger.is_err());
        let stranger = conn.query_row("SELECT 'weird'", [], |r| r.get::<Stage>(0));
        assert!(stranger.is_err());
        let stranger = conn.query_row("SELECT 3", [], |r| r.get::<StageState>(0));
        assert!(stranger.is_err());
        let v: Sql<kiln_protocol::verdict::Verdict> = conn
            .query_row(
                "SELECT ?1",
                [Sql(kiln_protocol::verdict::Verdict::Incomplete)],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(v.0, kiln_protocol::verdict::Verdict::Incomplete);
    }
}
