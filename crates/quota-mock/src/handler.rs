//! One request, start to finish: decide (script, quota, faults) at the
//! instant the head arrives, read and hash the body, record, respond.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use rand::Rng;
use rand::rngs::StdRng;
use tokio::time::Instant;

use crate::cost::{Cost, CostConfig};
use crate::fault::{Fault, Latency, Scripted};
use crate::headers::{HeaderConfig, QuotaHeaders, delay_seconds, write_date};
use crate::key::KeyBy;
use crate::quota::{Decision, QuotaBook, QuotaView};
use crate::rule::Rule;
use crate::stats::{Arrival, Outcome, Stats, fnv1a64};

/// Paths under this prefix are the mock's own control plane: never rate
/// limited, never recorded.
pub(crate) const CONTROL_PREFIX: &str = "/__quota/";

/// The request header whose numeric value is recorded as [`Arrival::attempt`].
const RETRY_ATTEMPT: &str = "x-retry-attempt";

/// Everything the server knows, shared by every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) start: Instant,
    pub(crate) key_by: KeyBy,
    pub(crate) headers: QuotaHeaders,
    pub(crate) costs: CostConfig,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    quota: QuotaBook,
    scripted: VecDeque<Scripted>,
    faults: Vec<Fault>,
    /// Time an admitted request takes to process, after the quota decision.
    processing: Option<Latency>,
    rng: StdRng,
    arrivals: Vec<Arrival>,
}

/// What to answer, decided when the head arrives.
#[derive(Debug)]
struct Plan {
    outcome: Outcome,
    reply: Reply,
    view: Option<QuotaView>,
    /// For an admission that concurrency rules hold in flight: the quota
    /// epoch to release it in.
    in_flight: Option<u64>,
}

#[derive(Debug)]
enum Reply {
    Ok,
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
        /// The `error` the JSON body states.
        error: &'static str,
    },
    Reset,
}

/// Returned to hyper to drop the connection (HTTP/1.1) or reset the stream
/// (HTTP/2) without a response.
#[derive(Debug)]
pub(crate) struct NoResponse;

impl fmt::Display for NoResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("quota-mock closed the connection without a response")
    }
}

impl std::error::Error for NoResponse {}

impl Shared {
    pub(crate) fn new(
        start: Instant,
        rules: Vec<Rule>,
        key_by: KeyBy,
        headers: HeaderConfig,
        faults: Vec<Fault>,
        scripted: Vec<Scripted>,
        rng: StdRng,
    ) -> Self {
        let headers = QuotaHeaders::new(headers, &rules);
        let state = State {
            quota: QuotaBook::new(rules, start),
            scripted: scripted.into(),
            faults,
            processing: None,
            rng,
            arrivals: Vec::new(),
        };
        Shared {
            start,
            key_by,
            headers,
            costs: CostConfig::default(),
            state: Mutex::new(state),
        }
    }

    /// Which headers carry costs (default: `x-cost`, `x-actual-cost`, no
    /// usage header).
    pub(crate) fn with_costs(mut self, costs: CostConfig) -> Self {
        self.costs = costs;
        self
    }

    /// How long each admitted request takes to process (default: no time).
    pub(crate) fn with_processing(self, processing: Option<Latency>) -> Self {
        self.lock().processing = processing;
        self
    }

    /// A panic elsewhere cannot leave the state half-updated in a way that
    /// matters more than stopping the server would, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn stats(&self) -> Stats {
        let (arrivals, rules, peaks) = {
            let state = self.lock();
            (
                state.arrivals.clone(),
                state.quota.rules().to_vec(),
                state.quota.peaks_in_flight(),
            )
        };
        let mut stats = Stats::from_arrivals(arrivals, &rules);
        for (rule, peak) in stats.rules.iter_mut().zip(peaks) {
            if let Some(peak) = peak {
                rule.max_accepted_in_any_window = peak;
            }
        }
        stats
    }

    pub(crate) fn reset(&self) {
        let mut state = self.lock();
        state.quota.clear();
        state.arrivals.clear();
    }

    pub(crate) fn script(&self, scripted: Scripted) {
        self.lock().scripted.push_back(scripted);
    }

    pub(crate) fn set_faults(&self, faults: Vec<Fault>) {
        self.lock().faults = faults;
    }

    pub(crate) fn set_limit(&self, index: usize, limit: u64) -> Result<Rule, String> {
        let mut state = self.lock();
        state.quota.set_limit(index, limit, Instant::now())
    }
}

impl State {
    fn plan(&mut self, key: &str, cost: Cost, now: Instant) -> Plan {
        while let Some(front) = self.scripted.front_mut() {
            match front.take_one() {
                Some((status, retry_after)) => {
                    if front.count() == 0 {
                        self.scripted.pop_front();
                    }
                    return Plan {
                        outcome: Outcome::Scripted,
                        reply: Reply::Status {
                            status,
                            retry_after,
                            error: "scripted",
                        },
                        view: None,
                        in_flight: None,
                    };
                }
                None => {
                    self.scripted.pop_front();
                }
            }
        }
        match self.quota.check(key, cost, now) {
            Decision::Refused { retry_after, view } => Plan {
                outcome: Outcome::Refused,
                reply: Reply::Status {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    retry_after,
                    // Only concurrency rules refuse without a known wait.
                    error: if retry_after.is_some() {
                        "rate_limited"
                    } else {
                        "too_many_in_flight"
                    },
                },
                view: Some(view),
                in_flight: None,
            },
            // No wait would help, so there is no Retry-After to state.
            Decision::TooCostly { view } => Plan {
                outcome: Outcome::Refused,
                reply: Reply::Status {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    retry_after: None,
                    error: "cost_exceeds_limit",
                },
                view: Some(view),
                in_flight: None,
            },
            Decision::Admitted { view } => Plan {
                outcome: Outcome::Admitted,
                reply: self.roll_faults(),
                view,
                in_flight: self.quota.in_flight_epoch(),
            },
        }
    }

    fn roll_faults(&mut self) -> Reply {
        for fault in &self.faults {
            match fault {
                Fault::ErrorRate { fraction, statuses } => {
                    if !statuses.is_empty() && self.rng.random_bool(*fraction) {
                        let status = statuses[self.rng.random_range(0..statuses.len())];
                        return Reply::Status {
                            status,
                            retry_after: None,
                            error: "injected",
                        };
                    }
                }
                Fault::ServiceUnavailableRetryAfter {
                    fraction,
                    retry_after,
                } => {
                    if self.rng.random_bool(*fraction) {
                        return Reply::Status {
                            status: StatusCode::SERVICE_UNAVAILABLE,
                            retry_after: Some(*retry_after),
                            error: "injected",
                        };
                    }
                }
                Fault::ConnectionReset { fraction } => {
                    if self.rng.random_bool(*fraction) {
                        return Reply::Reset;
                    }
                }
                Fault::Latency(_) => {}
            }
        }
        Reply::Ok
    }

    /// The processing time of one admitted request.
    fn processing(&mut self) -> Duration {
        match self.processing {
            Some(processing) => processing.draw(&mut self.rng),
            None => Duration::ZERO,
        }
    }

    fn latency(&mut self) -> Duration {
        let mut total = Duration::ZERO;
        for fault in &self.faults {
            if let Fault::Latency(latency) = fault {
                total = total.saturating_add(latency.draw(&mut self.rng));
            }
        }
        total
    }
}

/// A request that concurrency rules count as in flight; dropping it ends
/// the request, whether its response was handed over or the client hung up.
#[derive(Debug)]
struct InFlight {
    shared: Arc<Shared>,
    key: String,
    actual: u64,
    epoch: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared
            .lock()
            .quota
            .release(&self.key, self.actual, self.epoch);
    }
}

/// Serves one request.
pub(crate) async fn handle<B>(
    shared: Arc<Shared>,
    request: Request<B>,
) -> Result<Response<Full<Bytes>>, NoResponse>
where
    B: Body,
{
    if request.uri().path().starts_with(CONTROL_PREFIX) {
        return Ok(control(&shared, &request));
    }
    let key = shared.key_by.key_of(request.uri(), request.headers());
    let attempt = request
        .headers()
        .get(RETRY_ATTEMPT)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u32>().ok());
    let cost = shared.costs.cost_of(request.headers());
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();

    // The arrival instant is taken under the lock, so quota decisions see
    // instants in order even when many connections race.
    let (at, plan, delay) = {
        let mut state = shared.lock();
        let now = Instant::now();
        let plan = state.plan(&key, cost, now);
        let mut delay = state.latency();
        if plan.outcome == Outcome::Admitted {
            delay = delay.saturating_add(state.processing());
        }
        (now.saturating_duration_since(shared.start), plan, delay)
    };

    let _in_flight = plan.in_flight.map(|epoch| InFlight {
        shared: Arc::clone(&shared),
        key: key.clone(),
        actual: cost.actual,
        epoch,
    });

    let body = request
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes());
    let status = match (&body, &plan.reply) {
        (Err(_), _) | (_, Reply::Reset) => 0,
        (Ok(_), Reply::Ok) => StatusCode::OK.as_u16(),
        (Ok(_), Reply::Status { status, .. }) => status.as_u16(),
    };
    let (body_hash, body_len) = match &body {
        Ok(bytes) => (fnv1a64(bytes), bytes.len() as u64),
        Err(_) => (fnv1a64(b""), 0),
    };
    let arrival = Arrival {
        at,
        key,
        method,
        path,
        status,
        outcome: plan.outcome,
        attempt,
        body_hash,
        body_len,
        cost: cost.actual,
        declared_cost: cost.declared,
    };
    let response = respond(&shared, &plan, &arrival.key, cost);
    shared.lock().arrivals.push(arrival);

    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if body.is_err() {
        return Err(NoResponse);
    }
    response.ok_or(NoResponse)
}

fn respond(shared: &Shared, plan: &Plan, key: &str, cost: Cost) -> Option<Response<Full<Bytes>>> {
    let headers = &shared.headers;
    let (status, retry_after, body) = match &plan.reply {
        Reply::Reset => return None,
        Reply::Ok => (
            StatusCode::OK,
            None,
            serde_json::json!({ "ok": true, "key": key }),
        ),
        Reply::Status {
            status,
            retry_after,
            error,
        } => {
            let retry_after = match plan.outcome {
                Outcome::Refused if !headers.retry_after_on_429() => None,
                _ => *retry_after,
            };
            let mut body = serde_json::json!({ "ok": false, "key": key, "error": error });
            if let Some(delay) = retry_after {
                body["retry_after"] = serde_json::json!(delay_seconds(delay));
            }
            (*status, retry_after, body)
        }
    };
    // One wall-clock instant for `Date` and every absolute value, so a
    // client measuring them from `Date` sees exactly the delays meant.
    let wall_now = SystemTime::now();
    let mut response = json_response(status, body.to_string(), wall_now);
    if let Some(delay) = retry_after {
        headers.write_retry_after(delay, wall_now, response.headers_mut());
    }
    if let Some(view) = &plan.view {
        headers.write(key, view, wall_now, response.headers_mut());
    }
    if let (Outcome::Admitted, Some(name)) = (plan.outcome, &shared.costs.usage_header) {
        response
            .headers_mut()
            .insert(name.clone(), HeaderValue::from(cost.actual));
    }
    Some(response)
}

fn control<B>(shared: &Shared, request: &Request<B>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let method = request.method();
    let (status, body) = match path.strip_prefix(CONTROL_PREFIX) {
        Some("stats") if method == Method::GET => match serde_json::to_string(&shared.stats()) {
            Ok(json) => (StatusCode::OK, json),
            Err(error) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{{\"error\":{:?}}}", error.to_string()),
            ),
        },
        Some("reset") if method == Method::POST => {
            shared.reset();
            (StatusCode::OK, "{\"ok\":true}".to_owned())
        }
        Some("limit") if method == Method::POST => set_limit(shared, request.uri().query()),
        Some("stats" | "reset" | "limit") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "{\"error\":\"method not allowed\"}".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "{\"error\":\"unknown control path\"}".to_owned(),
        ),
    };
    json_response(status, body, SystemTime::now())
}

/// `POST /__quota/limit?rule=INDEX&limit=LIMIT`.
fn set_limit(shared: &Shared, query: Option<&str>) -> (StatusCode, String) {
    let mut index = None;
    let mut limit = None;
    for pair in query.unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("rule", value)) => index = value.parse::<usize>().ok(),
            Some(("limit", value)) => limit = value.parse::<u64>().ok(),
            _ => {}
        }
    }
    let (Some(index), Some(limit)) = (index, limit) else {
        let error = "expected ?rule=INDEX&limit=LIMIT with whole numbers";
        return (
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": error }).to_string(),
        );
    };
    match shared.set_limit(index, limit) {
        Ok(rule) => (
            StatusCode::OK,
            serde_json::json!({ "ok": true, "rule": rule.to_string() }).to_string(),
        ),
        Err(error) => (
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": error }).to_string(),
        ),
    }
}

fn json_response(status: StatusCode, body: String, wall_now: SystemTime) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    write_date(wall_now, headers);
    response
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod cost_tests;
