//! `wstream serve`: the classify pipeline as an HTTP service. Requests that arrive together share one
//! pass over the weights: a single batcher thread ([`batcher`]) gathers queued requests and runs them as
//! one layer-major batch ([`Pipeline::run_batch`]), so each block is paged in once per batch, not once per
//! image. tokio and hyper do the I/O on one thread; decoding runs on tokio's blocking pool; the models
//! compute on rayon's pool.
//!
//! Routes: `POST /v1/classify`, `GET /v1/models`, `GET /healthz`, `GET /metrics` ([`metrics`]). Every
//! error is a JSON `{"error": "..."}` with the one-line message the CLI would print.

mod batcher;
mod metrics;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::pipeline::{Answer, Item, Pipeline, Source};

use batcher::{Done, Failure, Job, Limits};
use metrics::Metrics;

/// How the server listens, queues and batches.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    /// Most requests in one batch (also bounded by what the pipeline's memory limit allows).
    pub max_batch: usize,
    /// Longest a request waits for others to join its batch.
    pub batch_window: Duration,
    /// Most requests waiting for a batch; beyond it, 503.
    pub queue: usize,
    /// Largest request body, in bytes; beyond it, 413.
    pub max_body: u64,
    /// With a key, every route but /healthz needs `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Longest a client may take to send a request's headers, and then its body.
    pub read_timeout: Duration,
    /// Longest a shutdown waits for accepted requests to finish.
    pub drain_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_batch: 8,
            batch_window: Duration::from_millis(5),
            queue: 64,
            max_body: 32 << 20,
            api_key: None,
            read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(60),
        }
    }
}

/// A bound, not yet running server.
pub struct Server {
    listener: std::net::TcpListener,
    pipeline: Pipeline,
    config: Config,
}

/// What the request handlers share.
struct Shared {
    pipeline: Arc<Pipeline>,
    config: Config,
    queue: Sender<Job>,
    depth: Arc<AtomicUsize>,
    /// Requests being decoded: the batcher waits a little for them ([`Limits::decoding`]).
    decoding: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    started: Instant,
}

/// The body of a classify answer: the pipeline's answer (what `classify --json` prints) plus the queueing.
#[derive(Serialize)]
struct ClassifyAnswer {
    #[serde(flatten)]
    answer: Answer,
    queue_ms: f64,
    batch_size: usize,
}

const CLASSIFY: &str = "/v1/classify";
const MODELS: &str = "/v1/models";
const HEALTHZ: &str = "/healthz";
const METRICS: &str = "/metrics";

/// Pipeline options a server needs: every class ranked and the logits kept, so that each request's
/// `top` and `logits` are cut from one run (ranking is a stable sort, so the first K of all are the top K).
pub fn pipeline_options(mut options: crate::pipeline::Options) -> crate::pipeline::Options {
    options.top = usize::MAX;
    options.logits = true;
    options
}

impl Server {
    /// Binds `config.addr`. The pipeline should have been built with [`pipeline_options`] and
    /// `batch` = [`Config::max_batch`]; its [`Pipeline::batch`] (the batch within the memory limit) is then
    /// the most requests a batch holds.
    pub fn bind(pipeline: Pipeline, config: Config) -> Result<Server> {
        let fail = |what: &str, e: std::io::Error| Error::Server(format!("{what}: {e}"));
        if config.queue == 0 || config.max_batch == 0 {
            return Err(Error::Options(
                "the queue and the batch hold at least one request".into(),
            ));
        }
        let listener = std::net::TcpListener::bind(config.addr)
            .map_err(|e| fail(&format!("cannot listen on {}", config.addr), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| fail("cannot set the socket non-blocking", e))?;
        Ok(Server {
            listener,
            pipeline,
            config,
        })
    }

    /// The address bound (the port chosen when the config asked for port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::Server(format!("cannot read the bound address: {e}")))
    }

    /// Serves until `shutdown` completes, then stops accepting, lets accepted requests finish (for at most
    /// [`Config::drain_timeout`]) and returns.
    pub fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Server(format!("cannot start the I/O runtime: {e}")))?;
        // Bounded by `depth` against Config::queue, which also counts the requests a batch is gathering.
        let (tx, rx) = channel();
        let depth = Arc::new(AtomicUsize::new(0));
        let metrics = Arc::new(Metrics::default());
        let pipeline = Arc::new(self.pipeline);
        let decoding = Arc::new(AtomicUsize::new(0));
        let limits = Limits {
            max_batch: pipeline.batch(),
            window: self.config.batch_window,
            decoding: decoding.clone(),
        };
        let batcher = {
            let (pipeline, depth, metrics) = (pipeline.clone(), depth.clone(), metrics.clone());
            std::thread::Builder::new()
                .name("wstream-batcher".into())
                .spawn(move || {
                    batcher::run(rx, limits, &depth, &metrics, |items| {
                        pipeline.run_batch(items)
                    })
                })
                .map_err(|e| Error::Server(format!("cannot start the batch thread: {e}")))?
        };
        let shared = Arc::new(Shared {
            pipeline,
            config: self.config,
            queue: tx,
            depth,
            decoding,
            metrics,
            started: Instant::now(),
        });
        let drained = runtime.block_on(accept_loop(self.listener, shared, shutdown))?;
        runtime.shutdown_timeout(Duration::from_secs(1));
        // Every sender is gone once every connection is: the batcher ends after its batch.
        if drained {
            let _ = batcher.join();
        }
        Ok(())
    }
}

/// Accepts connections until `shutdown`; then waits for the open ones. Returns whether they all finished.
async fn accept_loop(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> Result<bool> {
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| Error::Server(format!("cannot register the socket: {e}")))?;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.read_timeout);
    let drain_timeout = shared.config.drain_timeout;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors, or a connection reset before it was accepted: the next
                        // accept may work; pausing keeps a persistent error from spinning.
                        eprintln!("warning: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let shared = shared.clone();
                let service = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(req, &shared).await) }
                });
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    // A connection's errors (reset, timeout) are its client's business.
                    let _ = conn.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drop(shared);
    Ok(tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_ok())
}

/// Waits for SIGTERM or SIGINT and names the one that came. For programs: [`Server::run`]'s `shutdown`.
/// The handlers are installed when it is first polled, inside the server's runtime.
pub async fn termination_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

type Reply = Response<Full<Bytes>>;

fn json(status: StatusCode, body: &impl Serialize) -> Reply {
    let text = serde_json::to_vec(body).expect("JSON of plain values");
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, msg: impl Into<String>) -> Reply {
    #[derive(Serialize)]
    struct Body {
        error: String,
    }
    json(status, &Body { error: msg.into() })
}

/// Constant-time equality of two byte strings (their lengths may leak, their contents do not).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

async fn handle(req: Request<Incoming>, shared: &Shared) -> Reply {
    let start = Instant::now();
    let (route, allow) = match req.uri().path() {
        CLASSIFY => (CLASSIFY, Method::POST),
        MODELS => (MODELS, Method::GET),
        HEALTHZ => (HEALTHZ, Method::GET),
        METRICS => (METRICS, Method::GET),
        _ => ("other", Method::GET),
    };
    let reply = if route == "other" || req.method() != allow || !authorized(&req, shared, route) {
        refuse(req, shared, route, allow).await
    } else {
        match route {
            CLASSIFY => classify(req, shared).await,
            MODELS => json(StatusCode::OK, &models(&shared.pipeline)),
            HEALTHZ => healthz(shared),
            _ => {
                let text = shared.metrics.render(
                    shared.pipeline.models(),
                    shared.depth.load(Ordering::Relaxed),
                    unhealthy(&shared.pipeline).is_none(),
                );
                let mut r = Response::new(Full::new(Bytes::from(text)));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
        }
    };
    shared
        .metrics
        .request(route, reply.status().as_u16(), start.elapsed());
    reply
}

/// Reads and drops a refused request's body (up to --max-body, within the read timeout) before the
/// answer goes out: closing a socket with unread data resets it, and the client, still sending, would
/// see a broken pipe instead of the answer. A body declared over the limit is not read (413 says so).
async fn discard(body: Incoming, shared: &Shared) {
    let body = Limited::new(body, shared.config.max_body as usize);
    let _ = tokio::time::timeout(shared.config.read_timeout, body.collect()).await;
}

/// 404, 405 or 401.
async fn refuse(req: Request<Incoming>, shared: &Shared, route: &str, allow: Method) -> Reply {
    let reply = if route == "other" {
        error(
            StatusCode::NOT_FOUND,
            format!(
                "no route {}; routes: POST {CLASSIFY}, GET {MODELS}, GET {HEALTHZ}, GET {METRICS}",
                req.uri().path()
            ),
        )
    } else if req.method() != allow {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{route} takes {allow}, not {}", req.method()),
        );
        r.headers_mut().insert(
            ALLOW,
            HeaderValue::from_static(if route == CLASSIFY { "POST" } else { "GET" }),
        );
        r
    } else {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API key: send `Authorization: Bearer KEY`",
        );
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
        r
    };
    if !over_limit(&req, shared) {
        discard(req.into_body(), shared).await;
    }
    reply
}

fn over_limit(req: &Request<Incoming>, shared: &Shared) -> bool {
    req.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > shared.config.max_body)
}

/// /healthz stays open without the key, for probes that carry no secrets.
fn authorized(req: &Request<Incoming>, shared: &Shared, route: &str) -> bool {
    let Some(key) = &shared.config.api_key else {
        return true;
    };
    if route == HEALTHZ {
        return true;
    }
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let token = given.strip_prefix(b"Bearer ").unwrap_or_default();
    same_secret(token, key.as_bytes())
}

/// The first weights file that changed since it was opened, as its error message.
fn unhealthy(pipeline: &Pipeline) -> Option<String> {
    pipeline
        .models()
        .iter()
        .find_map(|m| m.store.check_unchanged().err())
        .map(|e| e.to_string())
}

fn healthz(shared: &Shared) -> Reply {
    #[derive(Serialize)]
    struct Health {
        status: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        uptime_s: f64,
        queue_depth: usize,
    }
    let error = unhealthy(&shared.pipeline);
    let status = if error.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json(
        status,
        &Health {
            status: if error.is_some() { "unhealthy" } else { "ok" },
            error,
            uptime_s: shared.started.elapsed().as_secs_f64(),
            queue_depth: shared.depth.load(Ordering::Relaxed),
        },
    )
}

#[derive(Serialize)]
struct ModelInfo {
    name: String,
    family: &'static str,
    /// The dtype holding most of the weight bytes (an int8 file's scales are f32).
    dtype: String,
    bytes: u64,
    input_size: [usize; 3],
    num_classes: usize,
    /// The eval transform, as classify's JSON `preprocess` field gives it.
    preprocessing: crate::transform::Transform,
    labels: &'static str,
}

fn models(pipeline: &Pipeline) -> Vec<ModelInfo> {
    pipeline
        .models()
        .iter()
        .zip(pipeline.transforms())
        .map(|(m, t)| {
            let mut by_dtype: BTreeMap<String, u64> = BTreeMap::new();
            for t in m.store.tensors() {
                *by_dtype.entry(format!("{:?}", t.dtype)).or_default() += t.nbytes() as u64;
            }
            let dtype = by_dtype
                .into_iter()
                .max_by_key(|(_, b)| *b)
                .map(|(d, _)| d)
                .unwrap_or_default();
            ModelInfo {
                name: m.name.clone(),
                family: m.family.name(),
                dtype,
                bytes: m.store.total_bytes(),
                input_size: m.input_size(),
                num_classes: m.num_classes,
                preprocessing: t.clone(),
                labels: crate::classify::label_source(m),
            }
        })
        .collect()
}

/// `top` and `logits` of a classify request's query.
fn parse_query(query: Option<&str>) -> std::result::Result<(usize, bool), String> {
    let (mut top, mut logits) = (5, false);
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "top" => {
                top =
                    value.parse().ok().filter(|&k| k >= 1).ok_or_else(|| {
                        format!("query top={value}: give a whole number of 1 or more")
                    })?
            }
            "logits" => {
                logits = match value {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    _ => return Err(format!("query logits={value}: give true or false")),
                }
            }
            _ => {
                return Err(format!(
                    "unknown query parameter `{}`; known: top, logits",
                    key.escape_debug()
                ))
            }
        }
    }
    Ok((top, logits))
}

/// The kinds of body a classify request may carry.
enum Body {
    Image,
    Npy,
}

async fn classify(req: Request<Incoming>, shared: &Shared) -> Reply {
    let (top, logits) = match parse_query(req.uri().query()) {
        Ok(q) => q,
        Err(msg) => {
            discard(req.into_body(), shared).await;
            return error(StatusCode::BAD_REQUEST, msg);
        }
    };
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let kind = match content_type.as_deref() {
        // The decoder reads the format from the bytes; the type only says an image is meant.
        Some(
            "image/jpeg" | "image/png" | "image/webp" | "image/bmp" | "image/tiff" | "image/gif",
        ) => Body::Image,
        Some("application/x-npy") => Body::Npy,
        other => {
            let msg = format!(
                "Content-Type {}: send an image (image/jpeg, image/png, image/webp, image/bmp, \
                 image/tiff, image/gif) or application/x-npy",
                other.map_or("missing".into(), |t| format!("`{}`", t.escape_debug()))
            );
            discard(req.into_body(), shared).await;
            return error(StatusCode::BAD_REQUEST, msg);
        }
    };
    let max_body = shared.config.max_body;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is over the {max_body}-byte limit (--max-body)"),
        )
    };
    if over_limit(&req, shared) {
        return too_large();
    }
    let body = Limited::new(req.into_body(), max_body as usize);
    let bytes = match tokio::time::timeout(shared.config.read_timeout, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s",
                    shared.config.read_timeout.as_secs_f64()
                ),
            )
        }
    };
    let max_pixels = shared.pipeline.options().max_pixels;
    let decoding = Decoding::start(&shared.decoding);
    let decoded = tokio::task::spawn_blocking(move || decode(&bytes, kind, max_pixels)).await;
    let source = match decoded {
        Ok(Ok(source)) => source,
        Ok(Err(msg)) => return error(StatusCode::BAD_REQUEST, msg),
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("decoding failed: {e}"),
            )
        }
    };
    let (reply, answer) = oneshot::channel();
    let job = Job {
        item: Item {
            name: BODY_NAME.into(),
            source,
        },
        queued: Instant::now(),
        reply,
    };
    if shared.depth.fetch_add(1, Ordering::Relaxed) >= shared.config.queue {
        shared.depth.fetch_sub(1, Ordering::Relaxed);
        return busy();
    }
    let sent = shared.queue.send(job);
    // Only now: the batcher must see the job queued before it sees the decoding over.
    drop(decoding);
    if sent.is_err() {
        shared.depth.fetch_sub(1, Ordering::Relaxed);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        );
    }
    match answer.await {
        Ok(Ok(done)) => json(StatusCode::OK, &shape(done, top, logits)),
        Ok(Err(Failure::Input(msg))) => error(StatusCode::BAD_REQUEST, msg),
        Ok(Err(Failure::Run(msg))) => {
            eprintln!("error: {}", msg.escape_debug());
            error(StatusCode::INTERNAL_SERVER_ERROR, msg)
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the batch thread stopped before answering",
        ),
    }
}

/// The name a request's input has in messages and in its answer's `input`.
const BODY_NAME: &str = "request body";

fn busy() -> Reply {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the queue is full (--queue); retry shortly",
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Counts a request as being decoded until dropped (on every path out of the handler).
struct Decoding<'a>(&'a AtomicUsize);

impl<'a> Decoding<'a> {
    fn start(count: &'a AtomicUsize) -> Decoding<'a> {
        count.fetch_add(1, Ordering::AcqRel);
        Decoding(count)
    }
}

impl Drop for Decoding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A body as an input: a decoded image, or a `[3, H, W]` / `[1, 3, H, W]` f32 array of finite values
/// (a NaN or infinity would fail the whole batch it runs in).
fn decode(bytes: &[u8], kind: Body, max_pixels: u64) -> std::result::Result<Source, String> {
    let name = Path::new(BODY_NAME);
    match kind {
        Body::Image => crate::preprocess::decode_rgb_bytes(bytes, name, max_pixels)
            .map(Source::Decoded)
            .map_err(|e| e.to_string()),
        Body::Npy => {
            let (chw, shape) = crate::npy::parse_f32(bytes, name).map_err(|e| e.to_string())?;
            let (h, w) = match shape[..] {
                [3, h, w] | [1, 3, h, w] => (h, w),
                ref other => {
                    return Err(format!(
                        "{BODY_NAME}: array of shape {other:?} is not one [3, H, W] or [1, 3, H, W] image"
                    ))
                }
            };
            if let Some(i) = chw.iter().position(|v| !v.is_finite()) {
                return Err(format!(
                    "{BODY_NAME}: value {} at index {i} is not finite",
                    chw[i]
                ));
            }
            Ok(Source::Tensor {
                chw,
                shape: [3, h, w],
            })
        }
    }
}

/// A request's answer cut to its `top` classes, with or without the logits.
fn shape(done: Done, top: usize, logits: bool) -> ClassifyAnswer {
    let mut answer = done.answer;
    for m in &mut answer.models {
        m.top.truncate(top);
        if !logits {
            m.logits = None;
        }
    }
    answer.ensemble.top.truncate(top);
    ClassifyAnswer {
        answer,
        queue_ms: done.queue_ms,
        batch_size: done.batch_size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"key", b"key"));
        assert!(!same_secret(b"key", b"kez"));
        assert!(!same_secret(b"key", b"key1"));
        assert!(!same_secret(b"", b"key"));
    }

    #[test]
    fn queries_parse_or_say_why() {
        assert_eq!(parse_query(None), Ok((5, false)));
        assert_eq!(parse_query(Some("top=3&logits=true")), Ok((3, true)));
        assert!(parse_query(Some("top=0")).unwrap_err().contains("top=0"));
        assert!(parse_query(Some("x=1")).unwrap_err().contains("`x`"));
        assert!(parse_query(Some("logits=maybe")).is_err());
    }
}
