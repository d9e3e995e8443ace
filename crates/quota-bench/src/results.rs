//! RESULTS.md: one section per command, rebuilt from every section present.

use std::fmt::Write as _;
use std::path::PathBuf;

use tower_quota::BoxError;

/// The crate's folder, where RESULTS.md and the plots are committed.
pub(crate) fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The sections, in the order RESULTS.md shows them.
const SECTIONS: [&str; 9] = [
    "micro",
    "scenarios",
    "network",
    "shapes",
    "phases",
    "priority",
    "memory",
    // Written by hand from the `admission_rate` and `fleet_rate` examples
    // of tower-quota-redis.
    "redis",
    "fleet",
];

/// Writes the section `name` and rebuilds RESULTS.md.
pub(crate) fn write_section(name: &str, body: &str) -> Result<(), BoxError> {
    let dir = crate_dir().join("results");
    std::fs::create_dir_all(&dir)?;
    let mut section = String::new();
    writeln!(section, "## {}\n", title(name))?;
    writeln!(
        section,
        "Written by `{}` on {}.\n",
        command(name),
        machine()
    )?;
    section.push_str(body);
    std::fs::write(dir.join(format!("{name}.md")), section)?;

    std::fs::write(crate_dir().join("RESULTS.md"), rebuilt()?)?;
    println!("wrote {}", crate_dir().join("RESULTS.md").display());
    Ok(())
}

/// RESULTS.md as its sections under `results/` make it. Every section is
/// edited there, never in RESULTS.md, which the next command rebuilds:
/// the hand-written ones (`redis`, `fleet`) too.
fn rebuilt() -> Result<String, BoxError> {
    let dir = crate_dir().join("results");
    let mut out = String::from(HEADER);
    for name in SECTIONS {
        match std::fs::read_to_string(dir.join(format!("{name}.md"))) {
            Ok(text) => {
                out.push('\n');
                out.push_str(&text);
            }
            Err(_) => {
                writeln!(out, "\n## {}\n", title(name))?;
                writeln!(out, "Not run yet: `{}`.", command(name))?;
            }
        }
    }
    Ok(out)
}

fn command(name: &str) -> &'static str {
    match name {
        "micro" => "cargo bench -p quota-bench && cargo run --release -p quota-bench -- micro",
        "scenarios" => "cargo run --release -p quota-bench -- scenarios",
        "network" => "cargo run --release -p quota-bench -- network",
        "shapes" => "cargo run --release -p quota-bench -- shapes",
        "phases" => "cargo run --release -p quota-bench -- phases",
        "priority" => "cargo run --release -p quota-bench -- priority",
        "redis" => "cargo run --release -p tower-quota-redis --example admission_rate",
        "fleet" => {
            "cargo run --release -p tower-quota-redis --features cluster --example fleet_rate"
        }
        _ => "cargo run --release -p quota-bench -- memory",
    }
}

fn title(name: &str) -> &'static str {
    match name {
        "micro" => "Micro-benchmarks (criterion)",
        "scenarios" => "Scenarios against quota-mock over loopback",
        "network" => "The README stack across a simulated network, per admission mode",
        "shapes" => "Provider shapes × client limiters",
        "phases" => "A provider whose undisclosed rate changes",
        "priority" => "Interactive latency under a batch backlog: FIFO against priority classes",
        "redis" => "Redis: admissions per second and memory per key",
        "fleet" => "Redis: admissions per second, single node and cluster",
        _ => "Memory per key",
    }
}

/// `nproc` and the CPU model, from /proc/cpuinfo.
pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cpus} CPUs (nproc), {model}, {}", std::env::consts::OS)
}

const HEADER: &str = "# quota-bench results

tower-quota measured side by side with `tower::limit::RateLimit`, governor
0.10 and tower-resilience 0.13 (its sliding-log rate limiter), in the same
run on the same machine. Every number below comes from the commands named
in its section. Each section is kept in `results/` (written by its command;
the two Redis sections from the runs of the examples they name) and this
file is rebuilt from them: nothing is edited here. Each section states its
goals; where one is not met, the section says so and by how much.

```text
cargo bench -p quota-bench                        # criterion, ~1.5 min on 2 cores
cargo run --release -p quota-bench -- micro       # the micro-benchmark table below
cargo run --release -p quota-bench -- scenarios   # ~2 min; timeline.svg, retry_cdf.svg
cargo run --release -p quota-bench -- network     # ~5 min; fixed margin vs default vs strict
cargo run --release -p quota-bench -- shapes      # ~23 min; every provider shape × every limiter, over loopback and across a network; shapes.svg
cargo run --release -p quota-bench -- phases      # ~3 min; a provider's rate changes 30 → 15 → 45/s unannounced
cargo run --release -p quota-bench -- memory
```

The Redis rows need `redis-server` on PATH (the runner starts its own on a
free loopback port); without it they say so.
";

#[cfg(test)]
mod tests {
    use super::*;

    /// A section edited in RESULTS.md alone is lost at the next command's
    /// rebuild: the committed file must be what its sections make.
    #[test]
    fn results_md_is_what_its_sections_rebuild() {
        let committed = std::fs::read_to_string(crate_dir().join("RESULTS.md"))
            .expect("RESULTS.md is committed beside the crate's manifest");
        let rebuilt = rebuilt().expect("the sections under results/ are readable");
        if committed != rebuilt {
            let line = committed
                .lines()
                .zip(rebuilt.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| committed.lines().count().min(rebuilt.lines().count()));
            panic!(
                "RESULTS.md differs from its sections from line {}: edit results/*.md \
                 and rebuild, not RESULTS.md",
                line + 1
            );
        }
    }
}
