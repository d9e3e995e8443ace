//! What every integration example does around its own `run`: the flags
//! they share, JSON lines on stderr, the summary on stdout and its check.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use clap::builder::RangedU64ValueParser;
use tower_quota::{BoxError, SlidingWindowLayer};

/// The load flags of the examples that send many requests to one provider.
/// A flag left out keeps the example's default.
#[derive(Debug, Clone, clap::Args)]
pub struct Load {
    /// The provider's quota: requests in any window.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub quota: Option<u64>,
    /// How many logical requests to send.
    #[arg(long, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub requests: Option<usize>,
    /// How many requests are in flight at once.
    #[arg(long, value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub concurrency: Option<usize>,
    /// The fraction of admitted requests the provider answers with 503, in [0, 1].
    #[arg(long, value_parser = fraction)]
    pub error_rate: Option<f64>,
    /// The seed of the provider's fault injection, for repeatable runs.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// A number in `[0, 1]`, for [`Load::error_rate`].
fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        Ok(_) => Err("must be within [0, 1]".into()),
        Err(error) => Err(error.to_string()),
    }
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

/// An example's `main` once its flags are read into `options`: logging,
/// `run`, the summary on stdout, and an exit code from `verify`.
///
/// # Errors
///
/// What `run` returns.
pub async fn main<O, S, Run, Fut>(
    options: O,
    run: Run,
    verify: impl FnOnce(&S) -> Result<(), String>,
) -> Result<ExitCode, BoxError>
where
    Run: FnOnce(O) -> Fut,
    Fut: Future<Output = Result<S, BoxError>>,
    S: Display,
{
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
