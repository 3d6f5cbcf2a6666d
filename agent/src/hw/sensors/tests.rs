use super::*;

/// A full sensor record as IPMI 2.0 table 43-1 lays it out: owner 20h LUN 0, a threshold
/// sensor (event/reading type 01h) with `m` and `r_exp`, unsigned, the lower and upper
/// critical thresholds readable, and an 8-bit ASCII name.
fn record(
    id: u16,
    number: u8,
    entity: u8,
    unit: u8,
    name: &str,
    (m, r_exp): (u8, i8),
    (low, high): (u8, u8),
) -> Vec<u8> {
    let mut r = vec![0u8; 48];
    r[0..2].copy_from_slice(&id.to_le_bytes());
    r[2] = 0x51;
    r[3] = 0x01;
    r[5] = 0x20;
    r[7] = number;
    r[8] = entity;
    r[13] = 0x01;
    r[18] = if low != 0 { 0x02 } else { 0 } | if high != 0 { 0x10 } else { 0 };
    r[21] = unit;
    r[24] = m;
    r[29] = ((r_exp as u8) & 0x0f) << 4;
    r[37] = high;
    r[40] = low;
    r[47] = 0xc0 | name.len() as u8;
    r.extend_from_slice(name.as_bytes());
    r[4] = (r.len() - 5) as u8;
    r
}

/// A BMC that answers from a list of records and a table of raw readings; a sensor missing
/// from the table times out, as a hung BMC's read does. `pieces` makes it answer records
/// only 16 bytes at a time under a reservation, as `ipmi_sim` does.
struct Scripted {
    records: Vec<Vec<u8>>,
    raw: BTreeMap<u8, u8>,
    pieces: bool,
}

fn timed_out() -> BmcError {
    BmcError::Transport("Os { code: 110, kind: TimedOut }".into())
}

impl Bmc for Scripted {
    fn request(&mut self, netfn: u8, cmd: u8, _lun: u8, data: &[u8]) -> Result<Vec<u8>, BmcError> {
        match (netfn, cmd) {
            (0x0a, 0x22) => Ok(vec![0x34, 0x12]),
            (0x0a, 0x23) => {
                let id = usize::from(u16::from_le_bytes([data[2], data[3]]));
                let record = self.records.get(id).ok_or(BmcError::Completion(0xcb))?;
                let next: u16 = if id + 1 == self.records.len() {
                    0xffff
                } else {
                    id as u16 + 1
                };
                let mut answer = next.to_le_bytes().to_vec();
                let (offset, want) = (usize::from(data[4]), usize::from(data[5]));
                if self.pieces && (want > 16 || data[0..2] != [0x34, 0x12]) {
                    return Err(BmcError::Completion(0xca));
                }
                answer.extend(record.iter().skip(offset).take(want));
                Ok(answer)
            }
            // The state byte echoes the raw one: a state sensor's table entry is its states.
            (0x04, 0x2d) => match self.raw.get(&data[0]) {
                Some(&raw) => Ok(vec![raw, 0xc0, raw]),
                None => Err(timed_out()),
            },
            _ => Err(BmcError::Completion(0xc1)),
        }
    }
}

fn lab_bmc() -> Scripted {
    Scripted {
        records: vec![
            record(0, 1, 0x37, 1, "Inlet Temp", (1, 0), (0, 42)),
            record(1, 2, 0x1d, 18, "FAN1", (50, 0), (20, 0)),
            record(2, 3, 0x0a, 6, "PSU1 Input", (10, 0), (0, 120)),
        ],
        raw: BTreeMap::from([(1, 24), (2, 96), (3, 45)]),
        pieces: false,
    }
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

#[test]
fn a_repository_is_walked_and_its_readings_converted() {
    let mut bmc = lab_bmc();
    let repo = repository(&mut bmc, later()).unwrap();
    assert!(repo.problems.is_empty(), "{:?}", repo.problems);
    let names: Vec<_> = repo
        .sensors
        .iter()
        .map(|s| (s.name.as_str(), s.class))
        .collect();
    assert_eq!(
        names,
        [
            ("Inlet Temp", SensorClass::Inlet),
            ("FAN1", SensorClass::Fan),
            ("PSU1 Input", SensorClass::PsuPower)
        ]
    );
    let fan = &repo.sensors[1];
    let r = fan.reading(read(&mut bmc, fan).unwrap());
    assert_eq!((r.value, r.low, r.high), (4800.0, Some(1000.0), None));
    let psu = &repo.sensors[2];
    assert_eq!(psu.reading(45).value, 450.0);
    assert_eq!(psu.reading(45).high, Some(1200.0));
}

/// A compact sensor record (IPMI 2.0 table 43-2) of a state sensor: `sensor_type`, its
/// event/reading type, an 8-bit ASCII name.
fn compact(id: u16, number: u8, sensor_type: u8, reading_type: u8, name: &str) -> Vec<u8> {
    let mut r = vec![0u8; 32];
    r[0..2].copy_from_slice(&id.to_le_bytes());
    r[2] = 0x51;
    r[3] = 0x02;
    r[5] = 0x20;
    r[7] = number;
    r[8] = 0x13;
    r[12] = sensor_type;
    r[13] = reading_type;
    r[31] = 0xc0 | name.len() as u8;
    r.extend_from_slice(name.as_bytes());
    r[4] = (r.len() - 5) as u8;
    r
}

#[test]
fn a_power_supply_that_loses_redundancy_fails_the_step() {
    let mut bmc = lab_bmc();
    bmc.records.push(compact(3, 7, 0x09, 0x0b, "PS Redundancy"));
    bmc.records.push(compact(4, 8, 0x0c, 0x6f, "DIMM States"));
    bmc.raw.insert(7, 0b1);
    let repo = repository(&mut bmc, later()).unwrap();
    assert_eq!(
        repo.states.len(),
        1,
        "only power supplies and redundancy are judged"
    );
    assert_eq!(repo.states[0].name, "PS Redundancy");
    // Fully redundant: nothing. Lost: the step's fault.
    assert_eq!(read_states(&mut bmc, &repo.states[0]), Ok(0b1));
    bmc.raw.insert(7, 0b10);
    let sink = Arc::new(Sink(std::sync::Mutex::new(Vec::new())));
    let limits = Sensors::default();
    let watch = Watch::start(Box::new(bmc), Arc::new(repo), limits, 0, sink.emit());
    let found = watch.finish();
    let lines: Vec<&str> = found.faults.iter().map(|f| f.message.as_str()).collect();
    assert_eq!(lines, ["BMC sensor PS Redundancy: redundancy lost"]);
    // A compact record cut short is named, not read past.
    let mut cut = compact(0, 7, 0x09, 0x0b, "PS Redundancy")[..20].to_vec();
    cut[4] = 15;
    assert_eq!(
        parse_state(&cut).unwrap_err(),
        "a sensor record of 20 bytes; at least 32"
    );
}

#[test]
fn a_bmc_that_cannot_return_a_record_whole_is_read_in_pieces() {
    let mut whole = lab_bmc();
    let mut pieces = lab_bmc();
    pieces.pieces = true;
    assert_eq!(
        repository(&mut pieces, later()).unwrap(),
        repository(&mut whole, later()).unwrap()
    );
}

#[test]
fn conversion_follows_the_record_factors_and_signs() {
    // M = -2 (10-bit two's complement 3FEh), B = 5 with Bexp 1, Rexp -1, two's complement.
    let mut r = record(0, 9, 0x07, 4, "12V", (0xfe, -1), (0, 0));
    r[25] = 0xc0;
    r[26] = 5;
    r[29] |= 0x01;
    r[20] = 0x80;
    let s = parse(&r).unwrap().unwrap();
    // (-2 * -10 + 5 * 10) / 10 = 7
    assert_eq!(s.value(0xf6), 7.0);
    assert_eq!(s.class, SensorClass::Voltage);
}

#[test]
fn hostile_records_are_refused_by_name_never_a_panic() {
    let good = record(0, 1, 0x37, 1, "Inlet Temp", (1, 0), (0, 42));
    for (bad, says) in [
        (vec![], "0 bytes, shorter than a record header"),
        (good[..4].to_vec(), "shorter than a record header"),
        (
            good[..30].to_vec(),
            "its header says 53 bytes follow, 25 do",
        ),
        (
            {
                let mut r = good[..20].to_vec();
                r[4] = 15;
                r
            },
            "a full sensor record of 20 bytes; at least 48",
        ),
        (
            {
                let mut r = good.clone();
                r[47] = 0xdf;
                r
            },
            "its ID string of 31 bytes runs past the record's end",
        ),
    ] {
        let err = parse(&bad).unwrap_err();
        assert!(err.contains(says), "{err} — wanted {says}");
    }
    // Every truncation of a good record: an error or nothing, never a panic.
    for n in 0..good.len() {
        let mut cut = good[..n].to_vec();
        if n > 4 {
            cut[4] = (n - 5) as u8;
        }
        let _ = parse(&cut);
    }
    // Not a threshold sensor, a unit kiln does not chart, a compact record: not charted.
    let mut discrete = good.clone();
    discrete[13] = 0x6f;
    assert_eq!(parse(&discrete), Ok(None));
    let mut fahrenheit = good.clone();
    fahrenheit[21] = 2;
    assert_eq!(parse(&fahrenheit), Ok(None));
    let mut compact = good.clone();
    compact[3] = 0x02;
    assert_eq!(parse(&compact), Ok(None));
    // Control characters in a name are not passed on.
    let odd = record(0, 1, 0x07, 1, "T\x1b[2J", (1, 0), (0, 0));
    assert_eq!(parse(&odd).unwrap().unwrap().name, "T?[2J");
}

#[test]
fn an_empty_repository_is_an_error_and_a_malformed_record_a_problem() {
    let mut empty = Scripted {
        records: vec![],
        raw: BTreeMap::new(),
        pieces: false,
    };
    assert_eq!(
        repository(&mut empty, later()).unwrap_err(),
        "Get SDR 0x0000: completion code 0xcb"
    );
    let mut bmc = lab_bmc();
    bmc.records[1].truncate(20);
    let repo = repository(&mut bmc, later()).unwrap();
    assert_eq!(repo.sensors.len(), 2);
    assert_eq!(
        repo.problems,
        ["SDR record 0x0001: its header says 47 bytes follow, 15 do"]
    );
}

#[test]
fn five_thousand_sensors_are_walked_and_a_longer_or_looping_list_is_cut() {
    let mut bmc = Scripted {
        records: (0..5000u16)
            .map(|i| {
                record(
                    i,
                    (i % 250) as u8,
                    0x07,
                    1,
                    &format!("T{i}"),
                    (1, 0),
                    (0, 90),
                )
            })
            .collect(),
        raw: BTreeMap::new(),
        pieces: false,
    };
    let repo = repository(&mut bmc, later()).unwrap();
    assert_eq!((repo.sensors.len(), repo.problems.len()), (5000, 0));
    bmc.records = (0..9000u16)
        .map(|i| record(i, 1, 0x07, 1, "T", (1, 0), (0, 90)))
        .collect();
    let repo = repository(&mut bmc, later()).unwrap();
    assert_eq!(repo.sensors.len(), MAX_RECORDS);
    assert!(
        repo.problems[0].contains("more than 8192 records"),
        "{:?}",
        repo.problems
    );
    // A deadline already past: stopped with a reason, not walked for ever.
    let repo = repository(&mut bmc, Instant::now() - Duration::from_secs(1)).unwrap();
    assert!(
        repo.problems[0].contains("took too long"),
        "{:?}",
        repo.problems
    );

    /// Record 1 says record 0 follows it.
    struct Looping;
    impl Bmc for Looping {
        fn request(&mut self, _: u8, _: u8, _: u8, data: &[u8]) -> Result<Vec<u8>, BmcError> {
            let id = u16::from_le_bytes([data[2], data[3]]);
            let mut answer = (1 - id).to_le_bytes().to_vec();
            answer.extend(record(id, 1, 0x07, 1, "T", (1, 0), (0, 90)));
            Ok(answer)
        }
    }
    let repo = repository(&mut Looping, later()).unwrap();
    assert_eq!(repo.sensors.len(), 2);
    assert_eq!(
        repo.problems,
        ["the SDR repository loops back to record 0x0000: stopped there"]
    );
}

struct Sink(std::sync::Mutex<Vec<EventBody>>);

impl Sink {
    fn emit(self: &Arc<Self>) -> Emit {
        let me = self.clone();
        Arc::new(move |body| me.0.lock().unwrap().push(body))
    }
}

#[test]
fn a_watch_faults_the_crossings_says_what_it_could_not_read_and_stops_at_once() {
    let mut bmc = lab_bmc();
    let repo = Arc::new(repository(&mut bmc, later()).unwrap());
    // The fan stopped; the inlet sensor's reads time out.
    bmc.raw.insert(2, 0);
    bmc.raw.remove(&1);
    let sink = Arc::new(Sink(std::sync::Mutex::new(Vec::new())));
    let limits = Sensors {
        interval: kiln_protocol::units::HumanDuration::from_secs(1),
        max_inlet_c: Some(35.0),
        max_psu_watts: Some(400.0),
        ..Sensors::default()
    };
    let started = Instant::now();
    let watch = Watch::start(Box::new(bmc), repo, limits, 4, sink.emit());
    std::thread::sleep(Duration::from_millis(1500));
    let found = watch.finish();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stopped at once"
    );
    let faults: Vec<_> = found
        .faults
        .iter()
        .map(|f| (f.code.as_str(), f.message.as_str()))
        .collect();
    assert_eq!(
        faults,
        [
            (
                "sensors.threshold",
                "BMC sensor FAN1: 0 RPM, at or below its lower critical threshold 1000 RPM"
            ),
            (
                "sensors.threshold",
                "BMC sensor PSU1 Input: 450 W, above the suite's max_psu_watts 400 W"
            ),
            (
                "sensors.unmeasured",
                "the suite sets sensors.max_inlet_c, and no inlet temperature sensor of the BMC was read during the step"
            ),
        ]
    );
    let metrics: Vec<_> = found
        .metrics
        .iter()
        .map(|m| (m.name.as_str(), m.value))
        .collect();
    assert_eq!(
        metrics,
        [("bmc_fan_rpm_min", 0.0), ("bmc_psu_power_watts_max", 450.0)]
    );
    let events = sink.0.lock().unwrap();
    let sweeps = events
        .iter()
        .filter(
            |e| matches!(e, EventBody::Sensors { step: Some(4), readings } if readings.len() == 2),
        )
        .count();
    assert!(
        sweeps >= 2,
        "a sweep at the start and one at the end: {events:?}"
    );
    let timeouts: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            EventBody::Log { line, .. } => Some(line.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        timeouts,
        ["BMC sensor Inlet Temp: no reading (Os { code: 110, kind: TimedOut })"],
        "said once"
    );
}

#[test]
fn a_bmc_whose_reads_hang_holds_the_step_a_bounded_time_and_is_said() {
    /// Every read waits, then times out, as a BMC that stopped answering does.
    struct Hung;
    impl Bmc for Hung {
        fn request(&mut self, _: u8, _: u8, _: u8, _: &[u8]) -> Result<Vec<u8>, BmcError> {
            std::thread::sleep(Duration::from_millis(300));
            Err(timed_out())
        }
    }
    let repo = Arc::new(repository(&mut lab_bmc(), later()).unwrap());
    let sink = Arc::new(Sink(std::sync::Mutex::new(Vec::new())));
    let limits = Sensors {
        min_fan_rpm: Some(1000.0),
        ..Sensors::default()
    };
    let watch = Watch::start(Box::new(Hung), repo, limits, 0, sink.emit());
    std::thread::sleep(Duration::from_millis(100));
    let stopping = Instant::now();
    let found = watch.finish();
    // The read in flight, then the final sweep's bound.
    assert!(
        stopping.elapsed() < FINAL_SWEEP + Duration::from_secs(1),
        "{:?}",
        stopping.elapsed()
    );
    assert_eq!(found.faults.len(), 1);
    assert_eq!(found.faults[0].code, "sensors.unmeasured");
    assert!(found.metrics.is_empty());
    let events = sink.0.lock().unwrap();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, EventBody::Sensors { .. })),
        "no readings, no series"
    );
}
