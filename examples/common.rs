//! What every integration example does around its own `run`: read flags,
//! log JSON lines to stderr, run, print the summary and check it.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;
use std::str::FromStr;

use tower_quota::{BoxError, SlidingWindowLayer};

/// A flag value that does not parse.
#[derive(Debug, Clone, Copy)]
pub struct InvalidValue;

/// Reads `--flag value` pairs from the command line. `apply` sets one flag:
/// `Ok(true)` when it knew the flag, `Ok(false)` when it did not, and
/// `Err(InvalidValue)` when the value does not parse.
///
/// # Errors
///
/// A message for the user, naming the flag and listing `usage`.
pub fn parse_flags(
    usage: &str,
    mut apply: impl FnMut(&str, &str) -> Result<bool, InvalidValue>,
) -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value; flags: {usage}"))?;
        match apply(&flag, &value) {
            Ok(true) => {}
            Ok(false) => return Err(format!("unknown flag {flag}; flags: {usage}")),
            Err(InvalidValue) => return Err(format!("{flag}: `{value}` is not valid")),
        }
    }
    Ok(())
}

/// Parses one flag value, for [`parse_flags`].
///
/// # Errors
///
/// [`InvalidValue`] when `value` is not a `T`.
pub fn value<T: FromStr>(value: &str) -> Result<T, InvalidValue> {
    value.parse().map_err(|_| InvalidValue)
}

/// JSON lines on stderr; `RUST_LOG=tower_quota=debug` adds the pacing events.
pub fn init_json_logging() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// An example's `main`: options from `options`, logging, `run`, the summary
/// on stdout, and an exit code from `verify`.
///
/// # Errors
///
/// What `run` returns.
pub async fn main<O, S, Run, Fut>(
    options: impl FnOnce() -> Result<O, String>,
    run: Run,
    verify: impl FnOnce(&S) -> Result<(), String>,
) -> Result<ExitCode, BoxError>
where
    Run: FnOnce(O) -> Fut,
    Fut: Future<Output = Result<S, BoxError>>,
    S: Display,
{
    let options = match options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return Ok(ExitCode::from(2));
        }
    };
    init_json_logging();
    let summary = run(options).await?;
    println!("{summary}");
    Ok(match verify(&summary) {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("FAILED: {problem}");
            ExitCode::FAILURE
        }
    })
}

/// A [`SlidingWindowLayer`] of `max_calls` per `window`, with `safety_margin`
/// when one is given.
///
/// # Errors
///
/// An invalid quota or margin.
pub fn pacing(
    max_calls: u64,
    window: std::time::Duration,
    safety_margin: Option<std::time::Duration>,
) -> Result<SlidingWindowLayer, BoxError> {
    let layer = SlidingWindowLayer::new(max_calls, window)?;
    Ok(match safety_margin {
        Some(margin) => layer.safety_margin(margin)?,
        None => layer,
    })
}
