//! The BMC's sensors through the kernel's IPMI device (`/dev/ipmi0`, as the SEL reader): the
//! sensor data record (SDR) repository walked once per run, then every threshold sensor kiln
//! charts (temperatures, fans, voltages, currents, power) read every few seconds while each
//! step runs ([`Watch`]). Each reading goes to the collector as a series with its step; one
//! past a critical threshold the BMC states, or a limit of the suite, is a fault of the step.
//!
//! The records are decoded here, not by `ipmi-rs`, whose SDR parser indexes past the end of
//! a short record: a malformed record is a line saying so, never a panic.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kiln_protocol::sensors::{SensorClass, SensorReading};
use kiln_protocol::suite::Sensors;
use kiln_protocol::wire::{EventBody, Fault, LogLevel, Metric};

/// Where a watch's events go (the runner's sink).
pub type Emit = Arc<dyn Fn(EventBody) + Send + Sync>;

/// Most SDR records walked: BMCs list a few hundred; a repository past this is cut short.
pub const MAX_RECORDS: usize = 8192;

/// How long one request may wait for the BMC.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest the sweep at a step's end may take.
const FINAL_SWEEP: Duration = Duration::from_secs(5);

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BmcError {
    /// The BMC answered with this non-zero completion code.
    Completion(u8),
    /// No answer: the interface's error (a timeout among them).
    Transport(String),
}

impl std::fmt::Display for BmcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BmcError::Completion(cc) => write!(f, "completion code {cc:#04x}"),
            BmcError::Transport(e) => f.write_str(e),
        }
    }
}

/// One IPMI request and its answer, as a BMC behind any interface gives it.
pub trait Bmc {
    /// Sends `cmd` of `netfn` to logical unit `lun` with `data`: the response's data after a
    /// zero completion code, or what went wrong.
    fn request(&mut self, netfn: u8, cmd: u8, lun: u8, data: &[u8]) -> Result<Vec<u8>, BmcError>;
}

impl<C> Bmc for C
where
    C: ipmi_rs::connection::IpmiConnection,
    C::Error: std::fmt::Debug,
{
    fn request(&mut self, netfn: u8, cmd: u8, lun: u8, data: &[u8]) -> Result<Vec<u8>, BmcError> {
        use ipmi_rs::connection::{LogicalUnit, Message, Request, RequestTargetAddress};
        let mut request = Request::new(
            Message::new_raw(netfn, cmd, data.to_vec()),
            RequestTargetAddress::Bmc(LogicalUnit::from_low_bits(lun)),
        );
        let response = self
            .send_recv(&mut request)
            .map_err(|e| BmcError::Transport(format!("{e:?}")))?;
        match response.cc() {
            0 => Ok(response.data().to_vec()),
            cc => Err(BmcError::Completion(cc)),
        }
    }
}

/// Opens the BMC behind `device`.
pub fn open(device: &std::path::Path) -> Result<ipmi_rs::File, String> {
    ipmi_rs::File::new(device, REQUEST_TIMEOUT).map_err(|e| format!("{}: {e}", device.display()))
}

/// A threshold sensor from a full sensor record, with what it takes to turn its raw byte
/// into a reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Sensor {
    /// Its number on its owner.
    pub number: u8,
    /// Its owner's logical unit.
    pub lun: u8,
    /// Its name (the record's ID string).
    pub name: String,
    /// What it measures.
    pub class: SensorClass,
    format: Format,
    m: i16,
    b: i16,
    b_exp: i8,
    r_exp: i8,
    low: Option<u8>,
    high: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Unsigned,
    OnesComplement,
    TwosComplement,
}

/// The sensors a repository lists, and the records it could not use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Repository {
    /// Every threshold sensor kiln charts, in record order.
    pub sensors: Vec<Sensor>,
    /// Every state sensor kiln judges: power supplies and redundancy.
    pub states: Vec<StateSensor>,
    /// One line per record refused (malformed) and, when the walk stopped early, why.
    pub problems: Vec<String>,
}

/// A state (discrete) sensor: a power supply's, or one reporting redundancy.
#[derive(Debug, Clone, PartialEq)]
pub struct StateSensor {
    /// Its number on its owner.
    pub number: u8,
    /// Its owner's logical unit.
    pub lun: u8,
    /// Its name.
    pub name: String,
    sensor_type: u8,
    reading_type: u8,
}

/// Decodes one SDR record's state sensor, when it is one kiln judges (a full or compact
/// record of a power supply's states, or of redundancy): `Err` for a malformed record.
pub fn parse_state(record: &[u8]) -> Result<Option<StateSensor>, String> {
    let kind = header(record)?;
    // The ID string's place: byte 47 of a full record, 31 of a compact one.
    let id_at = match kind {
        0x01 => 47,
        0x02 => 31,
        _ => return Ok(None),
    };
    if record.len() <= id_at {
        return Err(format!(
            "a sensor record of {} bytes; at least {}",
            record.len(),
            id_at + 1
        ));
    }
    let (sensor_type, reading_type) = (record[12], record[13]);
    if judged(sensor_type, reading_type).is_none() {
        return Ok(None);
    }
    let number = record[7];
    Ok(Some(StateSensor {
        number,
        lun: record[6] & 0x03,
        name: id_string(record, id_at)?.unwrap_or_else(|| format!("sensor #{number}")),
        sensor_type,
        reading_type,
    }))
}

/// A record's type, once its header is whole and its length byte agrees with its bytes.
fn header(record: &[u8]) -> Result<u8, String> {
    let [_, _, _, kind, length, ..] = *record else {
        return Err(format!(
            "{} bytes, shorter than a record header",
            record.len()
        ));
    };
    if usize::from(length) != record.len() - 5 {
        return Err(format!(
            "its header says {length} bytes follow, {} do",
            record.len() - 5
        ));
    }
    Ok(kind)
}

/// Whether kiln judges a state sensor of this type and reading type.
fn judged(sensor_type: u8, reading_type: u8) -> Option<()> {
    (reading_type == 0x0b || (sensor_type, reading_type) == (0x08, 0x6f)).then_some(())
}

/// The record's ID string at `at` (its type/length byte), when it is 8-bit ASCII and not
/// empty; control characters become `?`.
fn id_string(record: &[u8], at: usize) -> Result<Option<String>, String> {
    let id = record[at];
    let len = usize::from(id & 0x1f);
    let Some(bytes) = record.get(at + 1..at + 1 + len) else {
        return Err(format!(
            "its ID string of {len} bytes runs past the record's end"
        ));
    };
    let name: String = bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect::<String>()
        .trim()
        .to_owned();
    Ok((id >> 6 == 0b11 && !name.is_empty()).then_some(name))
}

/// Decodes one SDR record (header included): `Ok(None)` for records that are not a linear
/// threshold sensor in a unit kiln charts, `Err` for a malformed one.
pub fn parse(record: &[u8]) -> Result<Option<Sensor>, String> {
    let kind = header(record)?;
    // Type 01h: full sensor record. Compact (02h) and others carry no conversion factors.
    if kind != 0x01 {
        return Ok(None);
    }
    if record.len() < 48 {
        return Err(format!(
            "a full sensor record of {} bytes; at least 48",
            record.len()
        ));
    }
    let number = record[7];
    let name = id_string(record, 47)?.unwrap_or_else(|| format!("sensor #{number}"));
    let (entity, reading_type, units1, base_unit) = (record[8], record[13], record[20], record[21]);
    // Event/reading type 01h: threshold-based. Linearization 0: linear.
    if reading_type != 0x01 || record[23] & 0x7f != 0 {
        return Ok(None);
    }
    let format = match units1 >> 6 {
        0 => Format::Unsigned,
        1 => Format::OnesComplement,
        2 => Format::TwosComplement,
        _ => return Ok(None),
    };
    let Some(class) = SensorClass::of(entity, base_unit, &name) else {
        return Ok(None);
    };
    let ten_bits = |ls: u8, ms: u8| -> i16 {
        let v = i16::from(ls) | (i16::from(ms >> 6) << 8);
        if v & 0x200 != 0 { v - 0x400 } else { v }
    };
    let four_bits = |v: u8| -> i8 {
        let v = (v & 0x0f) as i8;
        if v & 0x08 != 0 { v - 0x10 } else { v }
    };
    let readable = record[18];
    Ok(Some(Sensor {
        number,
        lun: record[6] & 0x03,
        name,
        class,
        format,
        m: ten_bits(record[24], record[25]),
        b: ten_bits(record[26], record[27]),
        b_exp: four_bits(record[29]),
        r_exp: four_bits(record[29] >> 4),
        // Readable threshold mask: bit 1 lower critical, bit 4 upper critical.
        low: (readable & 0x02 != 0).then_some(record[40]),
        high: (readable & 0x10 != 0).then_some(record[37]),
    }))
}

impl Sensor {
    /// The reading a raw byte stands for: (M·x + B·10^Bexp)·10^Rexp.
    pub fn value(&self, raw: u8) -> f64 {
        let x = match self.format {
            Format::Unsigned => f64::from(raw),
            Format::OnesComplement => {
                let v = raw as i8;
                f64::from(if v < 0 { v + 1 } else { v })
            }
            Format::TwosComplement => f64::from(raw as i8),
        };
        let v = (f64::from(self.m) * x + f64::from(self.b) * 10f64.powi(i32::from(self.b_exp)))
            * 10f64.powi(i32::from(self.r_exp));
        (v * 1000.0).round() / 1000.0
    }

    /// A reading of this sensor, with its thresholds converted.
    fn reading(&self, raw: u8) -> SensorReading {
        SensorReading {
            name: self.name.clone(),
            class: self.class,
            value: self.value(raw),
            low: self.low.map(|t| self.value(t)),
            high: self.high.map(|t| self.value(t)),
        }
    }
}

/// Walks the repository from its first record, until its last, [`MAX_RECORDS`] or
/// `deadline`. `Err` when the BMC answers no record at all.
pub fn repository(bmc: &mut dyn Bmc, deadline: Instant) -> Result<Repository, String> {
    let mut repo = Repository::default();
    let mut seen = HashSet::new();
    let mut id: u16 = 0x0000;
    let mut reservation = None;
    seen.insert(id);
    for walked in 0.. {
        if walked == MAX_RECORDS {
            repo.problems.push(format!(
                "the SDR repository lists more than {MAX_RECORDS} records: the rest are not read"
            ));
            break;
        }
        if Instant::now() > deadline {
            repo.problems.push(format!(
                "the SDR repository took too long to read: stopped after {walked} records"
            ));
            break;
        }
        let answer = match get_sdr(bmc, id, &mut reservation) {
            Ok(a) => a,
            Err(e) if walked == 0 => return Err(format!("Get SDR {id:#06x}: {e}")),
            Err(e) => {
                repo.problems
                    .push(format!("Get SDR {id:#06x}: {e}: the rest are not read"));
                break;
            }
        };
        let Some((next, record)) = answer.split_first_chunk::<2>() else {
            repo.problems.push(format!(
                "Get SDR {id:#06x}: an answer of {} bytes: the rest are not read",
                answer.len()
            ));
            break;
        };
        match parse(record) {
            Ok(Some(sensor)) => repo.sensors.push(sensor),
            Ok(None) => match parse_state(record) {
                Ok(Some(state)) => repo.states.push(state),
                Ok(None) => {}
                Err(e) => repo.problems.push(format!("SDR record {id:#06x}: {e}")),
            },
            Err(e) => repo.problems.push(format!("SDR record {id:#06x}: {e}")),
        }
        let next = u16::from_le_bytes(*next);
        if next == 0xffff {
            break;
        }
        if !seen.insert(next) {
            repo.problems.push(format!(
                "the SDR repository loops back to record {next:#06x}: stopped there"
            ));
            break;
        }
        id = next;
    }
    Ok(repo)
}

/// Bytes asked for per Get SDR when a BMC cannot return a record whole: what fits a KCS
/// message on every BMC.
const SDR_CHUNK: u8 = 16;

/// Record `id`, whole, with the next record's id in front (as Get SDR answers): in one
/// request where the BMC allows it, else in pieces under a reservation (completion code
/// CAh: it cannot return that many bytes — `ipmi_sim` among them).
fn get_sdr(
    bmc: &mut dyn Bmc,
    id: u16,
    reservation: &mut Option<[u8; 2]>,
) -> Result<Vec<u8>, BmcError> {
    let [lo, hi] = id.to_le_bytes();
    // Get SDR (storage 0Ah, 23h): reservation, record id, offset, bytes (FFh: all).
    match bmc.request(0x0a, 0x23, 0, &[0, 0, lo, hi, 0, 0xff]) {
        Err(BmcError::Completion(0xca)) => {}
        other => return other,
    }
    let res = match *reservation {
        Some(r) => r,
        None => {
            // Reserve SDR Repository (storage 22h).
            let answer = bmc.request(0x0a, 0x22, 0, &[])?;
            let r = answer
                .first_chunk::<2>()
                .copied()
                .ok_or(BmcError::Transport(
                    "Reserve SDR Repository: a short answer".into(),
                ))?;
            *reservation = Some(r);
            r
        }
    };
    let header = bmc.request(0x0a, 0x23, 0, &[res[0], res[1], lo, hi, 0, 5])?;
    let [n0, n1, h @ ..] = header.as_slice() else {
        return Err(BmcError::Transport("Get SDR: a short answer".into()));
    };
    let mut out = vec![*n0, *n1];
    out.extend_from_slice(h);
    let total = 5 + usize::from(h.get(4).copied().unwrap_or(0));
    while out.len() - 2 < total {
        let offset = (out.len() - 2) as u8;
        let want = SDR_CHUNK.min((total - (out.len() - 2)) as u8);
        let piece = bmc.request(0x0a, 0x23, 0, &[res[0], res[1], lo, hi, offset, want])?;
        match piece.get(2..) {
            // No more than asked: a BMC that answers more bytes is not read past the record.
            Some(bytes) if !bytes.is_empty() => {
                out.extend_from_slice(&bytes[..bytes.len().min(usize::from(want))]);
            }
            _ => return Err(BmcError::Transport("Get SDR: an empty piece".into())),
        }
    }
    Ok(out)
}

/// Reads one sensor: its raw byte, or why there is none.
pub fn read(bmc: &mut dyn Bmc, sensor: &Sensor) -> Result<u8, String> {
    reading(bmc, sensor.lun, sensor.number).map(|(raw, _)| raw)
}

/// Reads a state sensor: its asserted states (bit n: state offset n).
pub fn read_states(bmc: &mut dyn Bmc, sensor: &StateSensor) -> Result<u16, String> {
    reading(bmc, sensor.lun, sensor.number).map(|(_, states)| states)
}

/// Get Sensor Reading (sensor/event 04h, 2Dh): the raw reading and the state bits.
fn reading(bmc: &mut dyn Bmc, lun: u8, number: u8) -> Result<(u8, u16), String> {
    let answer = bmc
        .request(0x04, 0x2d, lun, &[number])
        .map_err(|e| e.to_string())?;
    match answer.as_slice() {
        [_, flags, ..] if flags & 0x20 != 0 => Err("reading unavailable".into()),
        [_, flags, ..] if flags & 0x40 == 0 => Err("scanning disabled".into()),
        [raw, _, rest @ ..] => Ok((
            *raw,
            u16::from(rest.first().copied().unwrap_or(0))
                | u16::from(rest.get(1).copied().unwrap_or(0) & 0x7f) << 8,
        )),
        _ => Err(format!("an answer of {} bytes", answer.len())),
    }
}

/// What a step's watch found: the faults, the peak readings as metrics, the classes read.
#[derive(Debug, Default)]
pub struct Found {
    /// One fault per sensor past a threshold (its first crossing), and one per suite limit
    /// no sensor was read for.
    pub faults: Vec<Fault>,
    /// The hottest, fastest and most drawn per class (`bmc_cpu_c_max`), the slowest fan.
    pub metrics: Vec<Metric>,
}

/// The sensors read on a thread while a step runs.
pub struct Watch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Found>,
}

impl Watch {
    /// Starts reading `repo`'s sensors from `bmc` every `limits.interval`, sending each sweep
    /// to `emit` as step `step`'s.
    pub fn start(
        mut bmc: Box<dyn Bmc + Send>,
        repo: Arc<Repository>,
        limits: Sensors,
        step: u32,
        emit: Emit,
    ) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut state = Sweeps::default();
            loop {
                let started = Instant::now();
                let until = started + limits.interval.get();
                let readings = state.sweep(bmc.as_mut(), &repo, &limits, &flag, until);
                if !readings.is_empty() {
                    emit(EventBody::Sensors {
                        step: Some(step),
                        readings,
                    });
                }
                for line in state.failures.split_off(0) {
                    emit(EventBody::Log {
                        step: Some(step),
                        level: LogLevel::Warn,
                        line,
                    });
                }
                // Sleep out the interval in short naps, so a stop is seen at once.
                while started.elapsed() < limits.interval.get() && !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if flag.load(Ordering::Relaxed) {
                    break;
                }
            }
            // One last sweep, bounded: a short step is read at its end too.
            let until = Instant::now() + FINAL_SWEEP;
            let readings =
                state.sweep(bmc.as_mut(), &repo, &limits, &AtomicBool::new(false), until);
            if !readings.is_empty() {
                emit(EventBody::Sensors {
                    step: Some(step),
                    readings,
                });
            }
            state.found(&limits)
        });
        Watch { stop, thread }
    }

    /// Stops the watch and returns what it found.
    pub fn finish(self) -> Found {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_else(|_| Found {
            faults: vec![Fault::new(
                "sensors.watch",
                "the BMC sensor watch crashed: the step's sensors are not judged",
            )],
            metrics: Vec::new(),
        })
    }
}

/// What a watch's sweeps have seen so far.
#[derive(Default)]
struct Sweeps {
    crossed: BTreeMap<String, String>,
    read: Vec<SensorClass>,
    peaks: BTreeMap<SensorClass, f64>,
    failed: HashSet<String>,
    failures: Vec<String>,
}

impl Sweeps {
    /// Reads every sensor once, until `stop` or `until` (a BMC whose reads time out must not
    /// hold a step past its interval), judging each reading.
    fn sweep(
        &mut self,
        bmc: &mut dyn Bmc,
        repo: &Repository,
        limits: &Sensors,
        stop: &AtomicBool,
        until: Instant,
    ) -> Vec<SensorReading> {
        let mut out = Vec::new();
        for sensor in &repo.sensors {
            if stop.load(Ordering::Relaxed) || Instant::now() >= until {
                break;
            }
            let raw = match read(bmc, sensor) {
                Ok(raw) => raw,
                Err(e) => {
                    if self.failed.insert(sensor.name.clone()) {
                        self.failures
                            .push(format!("BMC sensor {}: no reading ({e})", sensor.name));
                    }
                    continue;
                }
            };
            let reading = sensor.reading(raw);
            if let Some(line) = kiln_protocol::sensors::crossing(&reading, limits) {
                self.crossed.entry(sensor.name.clone()).or_insert(line);
            }
            if !self.read.contains(&reading.class) {
                self.read.push(reading.class);
            }
            let fan = reading.class == SensorClass::Fan;
            self.peaks
                .entry(reading.class)
                .and_modify(|p| {
                    *p = if fan {
                        p.min(reading.value)
                    } else {
                        p.max(reading.value)
                    }
                })
                .or_insert(reading.value);
            if out.len() < kiln_protocol::bounds::MAX_SENSORS {
                out.push(reading);
            }
        }
        for sensor in &repo.states {
            if stop.load(Ordering::Relaxed) || Instant::now() >= until {
                break;
            }
            match read_states(bmc, sensor) {
                Ok(states) => {
                    if let Some(what) = kiln_protocol::sensors::state_fault(
                        sensor.sensor_type,
                        sensor.reading_type,
                        states,
                    ) {
                        self.crossed
                            .entry(sensor.name.clone())
                            .or_insert(format!("BMC sensor {}: {what}", sensor.name));
                    }
                }
                Err(e) => {
                    if self.failed.insert(sensor.name.clone()) {
                        self.failures
                            .push(format!("BMC sensor {}: no reading ({e})", sensor.name));
                    }
                }
            }
        }
        out
    }

    fn found(self, limits: &Sensors) -> Found {
        let mut faults: Vec<Fault> = self
            .crossed
            .into_iter()
            .map(|(sensor, line)| Fault::new("sensors.threshold", line).with("sensor", sensor))
            .collect();
        faults.extend(
            kiln_protocol::sensors::unmeasured(limits, &self.read)
                .into_iter()
                .map(|line| Fault::new("sensors.unmeasured", line)),
        );
        let metrics = self
            .peaks
            .into_iter()
            .map(|(class, v)| Metric {
                name: metric_name(class),
                value: v,
                unit: class.unit().to_owned(),
            })
            .collect();
        Found { faults, metrics }
    }
}

/// `bmc_cpu_c_max`, `bmc_fan_rpm_min`, …
fn metric_name(class: SensorClass) -> String {
    let what = serde_json::to_value(class)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    match class {
        SensorClass::Fan => format!("bmc_{what}_rpm_min"),
        c => format!(
            "bmc_{what}_{}_max",
            match c.unit() {
                "°C" => "c",
                "W" => "watts",
                "V" => "volts",
                _ => "amps",
            }
        ),
    }
}

#[cfg(test)]
mod tests;
