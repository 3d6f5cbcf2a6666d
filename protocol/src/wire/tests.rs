//! The wire types' JSON and their checks.

use super::*;

fn log(seq: u64, line: &str) -> Event {
    Event {
        seq,
        at_ms: 0,
        body: EventBody::Log {
            step: None,
            level: LogLevel::Info,
            line: line.into(),
        },
    }
}

#[test]
fn each_event_kind_is_its_serde_tag() {
    let report = StepReport {
        step: 2,
        name: "m".into(),
        kind: "memory".into(),
        outcome: Outcome::Pass,
        metrics: vec![],
        duration_ms: 1,
        attempts: vec![],
    };
    let bodies = [
        EventBody::RunStarted {
            suite: "s".into(),
            steps: 1,
            agent: "a".into(),
        },
        EventBody::ExpectChecked {
            outcome: Outcome::Pass,
        },
        EventBody::StepStarted {
            step: 0,
            name: "m".into(),
            kind: "memory".into(),
        },
        EventBody::Progress {
            step: 0,
            fraction: 0.5,
            status: None,
        },
        EventBody::Log {
            step: Some(1),
            level: LogLevel::Info,
            line: "x".into(),
        },
        EventBody::LogsDropped { count: 3 },
        EventBody::Sensors {
            step: Some(3),
            readings: vec![crate::sensors::SensorReading {
                name: "FAN1".into(),
                class: crate::sensors::SensorClass::Fan,
                value: 4800.0,
                low: Some(1000.0),
                high: None,
            }],
        },
        EventBody::StepFinished { report },
        EventBody::RunFinished {
            verdict: Verdict::Pass,
        },
    ];
    let steps: Vec<Option<u32>> = bodies.iter().map(EventBody::step).collect();
    assert_eq!(
        steps,
        [
            None,
            None,
            Some(0),
            Some(0),
            Some(1),
            None,
            Some(3),
            Some(2),
            None
        ]
    );
    for body in &bodies {
        let json = serde_json::to_value(body).unwrap();
        assert_eq!(json["type"], body.kind(), "{json}");
    }
}

#[test]
fn events_round_trip_as_tagged_json() {
    let event = log(7, "hello");
    let json = serde_json::to_string(&event).unwrap();
    assert_eq!(
        json,
        r#"{"seq":7,"at_ms":0,"body":{"type":"log","level":"info","line":"hello"}}"#
    );
    assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), event);
}

#[test]
fn batches_must_be_contiguous_bounded_and_clean() {
    assert!(
        EventBatch {
            events: vec![log(1, "a"), log(2, "b")]
        }
        .validate()
        .is_ok()
    );
    let gap = EventBatch {
        events: vec![log(1, "a"), log(3, "b")],
    }
    .validate()
    .unwrap_err();
    assert_eq!(
        gap,
        "sequence numbers jump from 1 to 3; a batch must be contiguous"
    );
    assert!(EventBatch { events: vec![] }.validate().is_err());
    assert!(
        EventBatch {
            events: vec![log(0, "a")]
        }
        .validate()
        .is_err()
    );
    // Sequence numbers past what SQLite stores, and a wrap-around, are refused.
    for events in [
        vec![log(u64::MAX, "a"), log(0, "b")],
        vec![log(1 << 63, "a")],
        vec![log(MAX_SEQ, "a"), log(MAX_SEQ + 1, "b")],
    ] {
        assert!(EventBatch { events }.validate().is_err());
    }
    assert!(
        EventBatch {
            events: vec![log(MAX_SEQ, "a")]
        }
        .validate()
        .is_ok()
    );
    let long = "x".repeat(MAX_LOG_LINE + 1);
    assert!(
        EventBatch {
            events: vec![log(1, &long)]
        }
        .validate()
        .unwrap_err()
        .contains("log line")
    );
}

#[test]
fn identities_are_checked() {
    let good = NodeIdentity {
        macs: vec!["52:54:00:12:34:56".into()],
        uuid: None,
        serial: Some("SN1".into()),
    };
    assert!(good.validate().is_ok());
    let bad_mac = NodeIdentity {
        macs: vec!["52:54:00:12:34".into()],
        ..Default::default()
    };
    assert!(bad_mac.validate().is_err());
    let hostile = NodeIdentity {
        serial: Some("x\nchain http://evil/".into()),
        ..Default::default()
    };
    assert_eq!(
        hostile.validate().unwrap_err(),
        "serial contains U+000A, a control or invisible character"
    );
    assert!(NodeIdentity::default().validate().is_err());
}
