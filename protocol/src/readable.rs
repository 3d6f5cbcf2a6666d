//! Measured values for people: scaled to the unit a reader expects and rounded to about three
//! significant digits (`653 MiB`, `14.0 it/s`, `1.11 ms`, `3.40 GHz`, `61 °C`). Pages and
//! table output show these; JSON, CSV and the workbook keep the exact values.

/// `value` in `unit`, for reading. Counts (no unit) read as whole numbers.
pub fn readable(value: f64, unit: &str) -> String {
    if !value.is_finite() {
        return format!("{value} {unit}").trim_end().to_owned();
    }
    match unit {
        "" => count(value),
        "B" => bytes(value),
        "ms" if value.abs() >= 1000.0 => format!("{} s", digits(value / 1000.0)),
        "s" if value.abs() >= 3600.0 => format!("{} h", digits(value / 3600.0)),
        "s" if value.abs() >= 120.0 => format!("{} min", digits(value / 60.0)),
        "MHz" if value.abs() >= 1000.0 => format!("{} GHz", digits(value / 1000.0)),
        "Mb/s" if value.abs() >= 1000.0 => format!("{} Gb/s", digits(value / 1000.0)),
        "MB/s" if value.abs() >= 1000.0 => format!("{} GB/s", digits(value / 1000.0)),
        "°C" => format!("{value:.0} °C"),
        "%" => format!("{} %", digits(value)),
        _ => format!("{} {unit}", digits(value)),
    }
}

/// About three significant digits, never in exponent form.
fn digits(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 || magnitude == 0.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 0.01 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// A count: whole, with thousands apart (`1 048 576`); a fraction keeps its digits.
fn count(value: f64) -> String {
    if value.fract() != 0.0 {
        return digits(value);
    }
    let whole = format!("{}", value.abs() as u64);
    let mut out = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    if value < 0.0 { format!("-{out}") } else { out }
}

/// Bytes in binary steps: `512 B`, `653 MiB`, `1.50 GiB`.
fn bytes(value: f64) -> String {
    const STEPS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut scaled = value;
    let mut step = 0;
    while scaled.abs() >= 1024.0 && step + 1 < STEPS.len() {
        scaled /= 1024.0;
        step += 1;
    }
    if step == 0 {
        format!("{value:.0} B")
    } else {
        format!("{} {}", digits(scaled), STEPS[step])
    }
}

#[cfg(test)]
mod tests {
    use super::readable;

    #[test]
    fn values_read_as_people_write_them() {
        for (value, unit, shown) in [
            (684_720_128.0, "B", "653 MiB"),
            (1_610_612_736.0, "B", "1.50 GiB"),
            (512.0, "B", "512 B"),
            (0.0, "", "0"),
            (1_048_576.0, "", "1\u{202f}048\u{202f}576"),
            (14.0, "it/s", "14.0 it/s"),
            (1474.3, "it/s", "1474 it/s"),
            (1.1123, "ms", "1.11 ms"),
            (2500.0, "ms", "2.50 s"),
            (3400.0, "MHz", "3.40 GHz"),
            (9870.0, "Mb/s", "9.87 Gb/s"),
            (842.4, "MB/s", "842 MB/s"),
            (30.14, "GB/s", "30.1 GB/s"),
            (61.4, "°C", "61 °C"),
            (12.5, "%", "12.5 %"),
            (7200.0, "s", "2.00 h"),
            (0.004, "ms", "0.004 ms"),
        ] {
            assert_eq!(readable(value, unit), shown, "{value} {unit}");
        }
        assert_eq!(readable(f64::NAN, "ms"), "NaN ms");
    }
}
