//! The HTTP/JSON API of SPEC section 6 (`--http ADDR`), on axum. It is one
//! more front end to the pool actor, like a socket session: every route
//! turns into a [`PoolHandle`] call, and every answer is rendered from the
//! same [`Answer`] the socket sends, so the two cannot drift apart.
//! `docs/http-api.md` and `docs/openapi.yaml` describe it for users.

use crate::config::Token;
use crate::job::{Ack, Answer, Body, Op, Reply, Submission};
use crate::metrics::Metrics;
use crate::pool::{Health, PoolHandle};
use crate::session::{MAX_LIST, MAX_WAIT};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Router};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use taskmaster_proto::jobs::{ErrorBody, JobRef, JobStatus, Outcome, SubmitOptions};
use taskmaster_proto::Reason;
use tokio::sync::oneshot;

/// Longest `timeout=` a submit may ask for (a year).
const MAX_TIMEOUT_SECS: f64 = 31_536_000.0;
/// Jobs `GET /jobs` lists without `limit=`.
const DEFAULT_LIST: usize = 100;
/// What a client is told to wait after `overload`.
const RETRY_AFTER_SECS: &str = "1";

struct Api {
    pool: PoolHandle,
    metrics: Arc<Metrics>,
}

type ApiState = State<Arc<Api>>;

/// The API's routes, with request bodies bounded by `max_payload` (the
/// frame limit: an HTTP job may not carry more than a socket job).
pub fn router(
    pool: PoolHandle,
    metrics: Arc<Metrics>,
    max_payload: usize,
    token: Option<Token>,
) -> Router {
    let api = Arc::new(Api { pool, metrics });
    Router::new()
        .route("/jobs", get(list))
        .route("/jobs/{id}", post(submit).get(status).delete(cancel))
        .route("/jobs/{id}/result", get(result))
        .route("/jobs/{id}/start", post(start))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/events", get(events))
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(max_payload))
        .layer(middleware::from_fn_with_state(token, require_token))
        .layer(middleware::map_response(json_errors))
        .with_state(api)
}

/// How long a connection may take to send a request's headers (also the
/// longest an idle keep-alive connection is kept).
const HEADER_DEADLINE: Duration = Duration::from_secs(10);

/// Serves the API: each connection needs a permit from `connections` (the
/// master's `--max-connections`, shared with socket clients) and must send
/// its headers within `HEADER_DEADLINE`, so idle or slow peers cost a
/// bounded number of descriptors.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    connections: Arc<tokio::sync::Semaphore>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let (failed, full) = (
        crate::listener::Quiet::default(),
        crate::listener::Quiet::default(),
    );
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                if let Some(count) = failed.due() {
                    tracing::warn!(error = %e, count, "HTTP accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            if let Some(count) = full.due() {
                tracing::warn!(%peer, count, "too many connections (--max-connections); closing HTTP connection");
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_DEADLINE)
                // A client that shuts its write side after the request
                // still gets its answer (the job id, or the result).
                .half_close(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
            drop(permit);
        });
    }
}

/// Routes open without the client token: a load balancer's health check
/// and a Prometheus scrape carry no secrets and reveal no job data.
const OPEN_ROUTES: [&str; 2] = ["/healthz", "/metrics"];

/// With a client token configured, every other route needs
/// `Authorization: Bearer TOKEN` (401 otherwise).
async fn require_token(
    State(token): State<Option<Token>>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    if let Some(token) = &token {
        if !OPEN_ROUTES.contains(&req.uri().path()) {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                // The scheme name is case-insensitive (RFC 9110).
                .and_then(|v| {
                    let (scheme, token) = v.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then_some(token)
                });
            if !given.is_some_and(|g| token.matches(g)) {
                let mut res = error(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong client token (Authorization: Bearer TOKEN)",
                );
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return res;
            }
        }
    }
    next.run(req).await
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).expect("API bodies serialize");
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json(
        status,
        &ErrorBody {
            error: message.into(),
        },
    )
}

fn stopped() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "the master has stopped")
}

/// The status code of a failure answer (SPEC section 6).
fn failure_status(reason: Reason) -> StatusCode {
    match reason {
        Reason::Overload => StatusCode::SERVICE_UNAVAILABLE,
        Reason::UnknownModule => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_GATEWAY,
    }
}

fn with_job_id(mut res: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        res.headers_mut().insert("x-job-id", v);
    }
    res
}

/// Renders an answer; `ok` is the status of a JSON success.
fn render(answer: Answer, ok: StatusCode) -> Response {
    let status = match (&answer.outcome, &answer.body) {
        (Outcome::Ok, _) => ok,
        (Outcome::NotFound, _) => StatusCode::NOT_FOUND,
        (Outcome::Conflict, _) => StatusCode::CONFLICT,
        (Outcome::Invalid, _) => StatusCode::BAD_REQUEST,
        (Outcome::Failed, Body::Failure(f)) => failure_status(f.reason),
        (Outcome::Failed, _) => StatusCode::BAD_GATEWAY,
    };
    if let (Some(output), Body::Ref(job)) = (&answer.output, &answer.body) {
        let res = (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            output.clone(),
        )
            .into_response();
        return with_job_id(res, &job.id);
    }
    let mut res = json(status, &answer.body);
    if let Body::Failure(f) = &answer.body {
        if f.reason == Reason::Overload {
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
    }
    res
}

/// A `{"id","status"}` accepted-or-pending answer with its id headers.
fn accepted(job: &JobRef) -> Response {
    let mut res = with_job_id(json(StatusCode::ACCEPTED, job), &job.id);
    if let Ok(v) = HeaderValue::from_str(&format!("/jobs/{}", job.id)) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// Query parameters, checked against the names a route takes.
struct Params(HashMap<String, String>);

impl Params {
    fn parse(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
        allowed: &[&str],
    ) -> Result<Params, Rejection> {
        let Query(pairs) =
            query.map_err(|e| reject(StatusCode::BAD_REQUEST, format!("bad query: {e}")))?;
        let mut map = HashMap::new();
        for (name, value) in pairs {
            if !allowed.contains(&name.as_str()) {
                let msg = if allowed.is_empty() {
                    format!("unknown query parameter {name:?} (this route takes none)")
                } else {
                    format!(
                        "unknown query parameter {name:?} (this route takes {})",
                        allowed.join(", ")
                    )
                };
                return Err(reject(StatusCode::BAD_REQUEST, msg));
            }
            if map.insert(name.clone(), value).is_some() {
                let msg = format!("query parameter {name:?} given twice");
                return Err(reject(StatusCode::BAD_REQUEST, msg));
            }
        }
        Ok(Params(map))
    }

    /// A duration in (fractional) seconds, at most `max`.
    fn seconds(&self, name: &str, max: f64) -> Result<Option<Duration>, Rejection> {
        let Some(text) = self.0.get(name) else {
            return Ok(None);
        };
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() && (0.0..=max).contains(&v) => {
                Ok(Some(Duration::from_secs_f64(v)))
            }
            _ => Err(reject(
                StatusCode::BAD_REQUEST,
                format!("{name}={text:?}: expected seconds between 0 and {max}"),
            )),
        }
    }

    /// A word that parses as `T` (`priority=high`), or `T::default()`.
    fn parsed<T: std::str::FromStr<Err = String> + Default>(
        &self,
        name: &str,
    ) -> Result<T, Rejection> {
        match self.0.get(name) {
            None => Ok(T::default()),
            Some(text) => text
                .parse()
                .map_err(|e| reject(StatusCode::BAD_REQUEST, format!("{name}={text:?}: {e}"))),
        }
    }

    /// A whole number from 0 to `max` (0 when absent).
    fn count(&self, name: &str, max: u32) -> Result<u32, Rejection> {
        match self.0.get(name) {
            None => Ok(0),
            Some(text) => match text.parse::<u32>() {
                Ok(n) if n <= max => Ok(n),
                _ => Err(reject(
                    StatusCode::BAD_REQUEST,
                    format!("{name}={text:?}: expected a whole number from 0 to {max}"),
                )),
            },
        }
    }

    fn boolean(&self, name: &str) -> Result<bool, Rejection> {
        match self.0.get(name).map(String::as_str) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(other) => Err(reject(
                StatusCode::BAD_REQUEST,
                format!("{name}={other:?}: expected true or false"),
            )),
        }
    }
}

fn job_number(api: &Api, id: &str) -> Result<u64, Rejection> {
    api.pool
        .parse_id(id)
        .map_err(|answer| Box::new(render(*answer, StatusCode::OK)))
}

/// A request refused before it reaches the pool (boxed: a `Response` is
/// large and these travel through `Result`s).
type Rejection = Box<Response>;

fn reject(status: StatusCode, message: impl Into<String>) -> Rejection {
    Box::new(error(status, message))
}

/// Unwraps a `Result<_, Rejection>` in a handler.
macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(res) => return *res,
        }
    };
}

/// `POST /jobs/{module}`.
async fn submit(
    State(api): ApiState,
    Path(module): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let params = tri!(Params::parse(
        query,
        &["wait", "start_later", "timeout", "priority", "retries"]
    ));
    let priority = tri!(params.parsed::<taskmaster_proto::Priority>("priority"));
    let retries = tri!(params.count("retries", taskmaster_proto::jobs::MAX_RETRIES));
    let wait = tri!(params.seconds("wait", MAX_WAIT.as_secs_f64()));
    let start_later = tri!(params.boolean("start_later"));
    // `wait` with `start_later` is a wait like any other (SPEC 6: 200 if the
    // job completed in time, 202 if not): the held job completes within it
    // only if someone starts it meanwhile, else the 202 says start-later.
    let timeout = tri!(params.seconds("timeout", MAX_TIMEOUT_SECS));
    let input = match body {
        Ok(b) => b,
        Err(e) => return error(e.status(), e.body_text()),
    };
    let (ack_tx, ack_rx) = oneshot::channel();
    let (waiter, done) = match wait {
        Some(_) => {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    api.pool.submit(Submission {
        module,
        input,
        options: SubmitOptions {
            detach: true,
            start_later,
            timeout_ms: timeout.map(SubmitOptions::timeout_ms),
            priority,
            retries,
        },
        reply: Reply::Detached,
        ack: Some(Ack::Local(ack_tx)),
        waiter,
    });
    let Ok(ack) = ack_rx.await else {
        return stopped();
    };
    let job = match (&ack.outcome, &ack.body) {
        (Outcome::Ok, Body::Ref(job)) => job.clone(),
        _ => return render(ack, StatusCode::OK),
    };
    let (Some(wait), Some(done)) = (wait, done) else {
        return accepted(&job);
    };
    match tokio::time::timeout(wait, done).await {
        Ok(Ok(answer)) => render(answer, StatusCode::OK),
        _ => {
            // Still running at the deadline: 202 with its status now.
            let Ok(number) = api.pool.parse_id(&job.id) else {
                return accepted(&job);
            };
            match api.pool.op(Op::Status(number)).await {
                Some(Answer {
                    body: Body::View(view),
                    ..
                }) => accepted(&JobRef {
                    id: view.id,
                    status: view.status,
                }),
                _ => accepted(&job),
            }
        }
    }
}

/// A job operation that takes an id and no query parameters.
async fn by_id(
    api: &Api,
    id: &str,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    op: fn(u64) -> Op,
) -> Response {
    tri!(Params::parse(query, &[]));
    let job = tri!(job_number(api, id));
    match api.pool.op(op(job)).await {
        Some(answer) => render(answer, StatusCode::OK),
        None => stopped(),
    }
}

/// `GET /jobs/{id}`.
async fn status(
    State(api): ApiState,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    if let Some(shared) = shared_outcome(&api, &id, false).await {
        return shared;
    }
    by_id(&api, &id, query, Op::Status).await
}

/// With `--nats`: a job another master took, from the shared outcomes.
async fn shared_outcome(api: &Api, id: &str, result: bool) -> Option<Response> {
    if api.pool.parse_id(id).is_ok() {
        return None;
    }
    let answer = api.pool.shared_outcome(id, result).await?;
    Some(render(answer, StatusCode::OK))
}

/// `GET /jobs/{id}/result`.
async fn result(
    State(api): ApiState,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let params = tri!(Params::parse(query, &["wait"]));
    let wait = tri!(params.seconds("wait", MAX_WAIT.as_secs_f64())).unwrap_or_default();
    if let Some(shared) = shared_outcome(&api, &id, true).await {
        return shared;
    }
    let job = tri!(job_number(&api, &id));
    match api.pool.result(job, wait).await {
        Some(answer) => render(answer, StatusCode::OK),
        None => stopped(),
    }
}

/// `POST /jobs/{id}/start`.
async fn start(
    State(api): ApiState,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    by_id(&api, &id, query, Op::Start).await
}

/// `DELETE /jobs/{id}`.
async fn cancel(
    State(api): ApiState,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    by_id(&api, &id, query, Op::Cancel).await
}

/// `GET /jobs`: recent jobs, newest first.
async fn list(
    State(api): ApiState,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let params = tri!(Params::parse(query, &["limit", "status"]));
    let limit = match params.0.get("limit") {
        None => DEFAULT_LIST,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_LIST).contains(&n) => n,
            _ => {
                let msg = format!("limit={text:?}: expected a whole number from 1 to {MAX_LIST}");
                return error(StatusCode::BAD_REQUEST, msg);
            }
        },
    };
    let status = match params.0.get("status") {
        None => None,
        Some(text) => match text.parse::<JobStatus>() {
            Ok(s) => Some(s),
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        },
    };
    match api.pool.op(Op::List { limit, status }).await {
        Some(answer) => render(answer, StatusCode::OK),
        None => stopped(),
    }
}

/// `GET /stats`: the JSON of `taskmaster stats`.
async fn stats(
    State(api): ApiState,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    tri!(Params::parse(query, &[]));
    match api.pool.stats().await {
        Some(stats) => json(StatusCode::OK, &stats),
        None => stopped(),
    }
}

/// `GET /metrics`: Prometheus text (OpenMetrics).
async fn metrics_text(
    State(api): ApiState,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    tri!(Params::parse(query, &[]));
    let Some(stats) = api.pool.stats().await else {
        return stopped();
    };
    let text = api.metrics.render(&stats);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[derive(Serialize)]
struct HealthBody {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

/// `GET /healthz`: 200 once the pool is ready; 503 before, while no child
/// can be started, and while shutting down.
async fn healthz(
    State(api): ApiState,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    tri!(Params::parse(query, &[]));
    let (code, status, message) = match api.pool.health().await {
        Some(Health::Ready) => (StatusCode::OK, "ok", None),
        Some(Health::Starting) => (StatusCode::SERVICE_UNAVAILABLE, "starting", None),
        Some(Health::Broken(cause)) => (StatusCode::SERVICE_UNAVAILABLE, "broken", Some(cause)),
        Some(Health::ShuttingDown) | None => {
            (StatusCode::SERVICE_UNAVAILABLE, "shutting-down", None)
        }
    };
    json(code, &HealthBody { status, message })
}

/// `GET /events[?job=ID]`: lifecycle events as server-sent events, from
/// now on. A subscriber that falls behind gets a comment saying how many
/// events it missed.
async fn events(
    State(api): ApiState,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let params = tri!(Params::parse(query, &["job"]));
    let job = params.0.get("job").cloned();
    if let Some(id) = &job {
        tri!(job_number(&api, id));
    }
    let rx = api.pool.subscribe();
    let stream = futures_util::stream::unfold((rx, job), |(mut rx, job)| async move {
        loop {
            let event = match rx.recv().await {
                Ok(e) => e,
                Err(RecvError::Lagged(n)) => {
                    let note = SseEvent::default().comment(format!("missed {n} events"));
                    return Some((Ok::<_, std::convert::Infallible>(note), (rx, job)));
                }
                Err(RecvError::Closed) => return None,
            };
            if job.is_some() && event.job != job {
                continue;
            }
            let sse = SseEvent::default().event(event.name).data(event.json());
            return Some((Ok(sse), (rx, job)));
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no route {method} {}", uri.path()),
    )
}

/// Every failure answer is JSON `{"error"}`: axum answers some on its own
/// (an empty 405 whose `Allow` header is added further out, a plain-text
/// 400 for a path that is not UTF-8), and those are rewritten here.
async fn json_errors(res: Response) -> Response {
    let failed = res.status().is_client_error() || res.status().is_server_error();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !failed || is_json {
        return res;
    }
    let status = res.status();
    let (mut parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 8 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        match status {
            StatusCode::METHOD_NOT_ALLOWED => {
                "method not allowed on this route (see the Allow header)".to_owned()
            }
            other => other
                .canonical_reason()
                .unwrap_or("request failed")
                .to_lowercase(),
        }
    } else {
        text
    };
    let body = serde_json::to_vec(&ErrorBody { error: message }).expect("error bodies serialize");
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}
