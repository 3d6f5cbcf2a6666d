//! Times the suite loader: a real suite accepted, and the "billion laughs" refused (it must
//! be refused in well under a second, never expanded). Run: `cargo bench -p kiln-protocol`.

use std::time::Instant;

fn time_per_call(label: &str, rounds: u32, mut f: impl FnMut()) {
    let started = Instant::now();
    for _ in 0..rounds {
        f();
    }
    let each = started.elapsed() / rounds;
    println!("{label:<40} {each:>12.2?} per call ({rounds} rounds)");
}

fn main() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let burn_in = std::fs::read(format!("{root}/suites/burn-in.yaml")).expect("burn-in suite");
    let bomb = std::fs::read(format!("{root}/tests/bad-suites/alias-bomb.yaml")).expect("bomb");
    time_per_call("load suites/burn-in.yaml (accepted)", 2000, || {
        assert!(kiln_protocol::load("burn-in.yaml", &burn_in).is_ok());
    });
    time_per_call("load alias-bomb.yaml (refused)", 2000, || {
        assert!(kiln_protocol::load("alias-bomb.yaml", &bomb).is_err());
    });
    let started = Instant::now();
    let refused = kiln_protocol::load("alias-bomb.yaml", &bomb).is_err();
    let took = started.elapsed();
    println!(
        "billion laughs refused: {refused}, in {took:?} (limit: 1 s, ratio {:.0}x under)",
        1.0 / took.as_secs_f64()
    );
}
