//! `wstream serve` end to end: the real binary on 127.0.0.1, port 0, talked to with ureq (and raw sockets
//! where a client must misbehave). Every server here serves the tiny fixtures, so each test takes at most
//! a few seconds, most of it deliberate waits (batch windows, read timeouts).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The start of an ICO file: an image format wstream does not read.
const ICO: &[u8] = b"\x00\x00\x01\x00\x01\x00\x10\x10....";

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn data(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .unwrap()
}

/// A running server; killed when dropped (a test that wants its exit status waits for it first).
struct Served {
    child: Child,
    /// `127.0.0.1:PORT`
    addr: String,
}

impl Served {
    fn start(model: &Path, flags: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wstream"))
            .arg("serve")
            .arg("--model")
            .arg(model)
            .args(["--addr", "127.0.0.1:0", "--threads", "1"])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wstream serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(addr) = line.trim().strip_prefix("listening on http://") else {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("first stdout line {line:?}; stderr: {err}");
        };
        Served {
            addr: addr.to_string(),
            child,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Status, headers of interest and body of a request; any status is an answer, not an error.
    fn call(&self, req: ureq::Request, body: Option<(&str, &[u8])>) -> Reply {
        let result = match body {
            Some((ctype, bytes)) => req.set("Content-Type", ctype).send_bytes(bytes),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("request failed: {e}"),
        };
        Reply {
            status: resp.status(),
            allow: resp.header("Allow").map(String::from),
            retry_after: resp.header("Retry-After").map(String::from),
            body: resp.into_string().unwrap(),
        }
    }

    fn get(&self, path: &str) -> Reply {
        self.call(ureq::get(&self.url(path)), None)
    }

    fn post(&self, path: &str, ctype: &str, bytes: &[u8]) -> Reply {
        self.call(ureq::post(&self.url(path)), Some((ctype, bytes)))
    }

    fn metric(&self, line_start: &str) -> f64 {
        metric(&self.get("/metrics").body, line_start)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    allow: Option<String>,
    retry_after: Option<String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap().to_string()
    }
}

/// The value of the metric line starting with `line_start` (name and labels), 0 if absent.
fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// `classify --json`'s object for `input`, and the server's for the same bytes, without the fields that
/// differ by nature (`input`, `elapsed_ms`; `queue_ms` and `batch_size` checked and removed).
fn compare_with_cli(server: &Served, model: &Path, input: &Path, ctype: &str, flags: &[&str]) {
    let mut args = vec!["classify", "--json", "--model", model.to_str().unwrap()];
    args.extend(flags);
    args.push(input.to_str().unwrap());
    let (code, out, err) = common::wstream(&args);
    assert_eq!(code, 0, "{err}");
    let mut cli: Value = serde_json::from_str(out.trim()).unwrap();
    let query = flags
        .chunks(2)
        .map(|f| match f {
            ["--top", k] => format!("top={k}"),
            ["--logits"] | ["--logits", _] => "logits=true".into(),
            _ => panic!("flag {f:?}"),
        })
        .collect::<Vec<_>>()
        .join("&");
    let reply = server.post(
        &format!("/v1/classify?{query}"),
        ctype,
        &std::fs::read(input).unwrap(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut ours = reply.json();
    let obj = ours.as_object_mut().unwrap();
    assert!(obj.remove("queue_ms").unwrap().as_f64().unwrap() >= 0.0);
    assert!(obj.remove("batch_size").unwrap().as_u64().unwrap() >= 1);
    for v in [&mut ours, &mut cli] {
        let o = v.as_object_mut().unwrap();
        assert!(o.remove("elapsed_ms").unwrap().as_f64().unwrap() > 0.0);
        o.remove("input").unwrap();
    }
    assert_eq!(ours, cli, "{input:?} {flags:?}");
}

#[test]
fn answers_equal_classify_json_for_jpeg_png_and_npy() {
    let vit = fixture("vit_tiny");
    let server = Served::start(&vit, &["--batch-window-ms", "0"]);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    compare_with_cli(&server, &vit, &dir.join("cat.jpg"), "image/jpeg", &[]);
    compare_with_cli(
        &server,
        &vit,
        &dir.join("coffee.png"),
        "image/png",
        &["--top", "3", "--logits"],
    );
    compare_with_cli(
        &server,
        &vit,
        &vit.join("reference/cat.input.npy"),
        "application/x-npy",
        &["--top", "1000"],
    );
    compare_with_cli(
        &server,
        &vit,
        &dir.join("jpeg/lossy.webp"),
        "image/webp",
        &[],
    );
    // `top` and `logits` shape the answer per request.
    let a = server
        .post(
            "/v1/classify?top=2&logits=true",
            "image/jpeg",
            &data("cat.jpg"),
        )
        .json();
    assert_eq!(a["models"][0]["top"].as_array().unwrap().len(), 2);
    assert_eq!(a["ensemble"]["top"].as_array().unwrap().len(), 2);
    assert_eq!(a["models"][0]["logits"].as_array().unwrap().len(), 1000);
}

#[test]
fn concurrent_requests_batch_and_metrics_count_them() {
    let vit = fixture("vit_tiny");
    let server = Served::start(
        &vit,
        &[
            "--max-batch",
            "16",
            "--batch-window-ms",
            "300",
            "--queue",
            "32",
        ],
    );
    let jpeg = data("cat.jpg");
    let sizes: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                s.spawn(|| {
                    let r = server.post("/v1/classify", "image/jpeg", &jpeg);
                    assert_eq!(r.status, 200, "{}", r.body);
                    r.json()["batch_size"].as_u64().unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(sizes.iter().any(|&n| n > 1), "no batching: {sizes:?}");
    assert!(sizes.iter().all(|&n| n <= 16), "{sizes:?}");
    let text = server.get("/metrics").body;
    assert_eq!(
        metric(
            &text,
            r#"wstream_requests_total{route="/v1/classify",status="200"}"#
        ),
        16.0
    );
    let batches = metric(&text, "wstream_batches_total");
    assert!((1.0..16.0).contains(&batches), "{batches}");
    assert_eq!(metric(&text, "wstream_batch_size_count"), batches);
    assert_eq!(metric(&text, "wstream_batch_size_sum"), 16.0);
    assert_eq!(metric(&text, "wstream_queue_wait_seconds_count"), 16.0);
    assert_eq!(
        metric(
            &text,
            r#"wstream_request_duration_seconds_count{route="/v1/classify"}"#
        ),
        16.0
    );
    assert_eq!(metric(&text, "wstream_queue_depth"), 0.0);
    assert_eq!(metric(&text, "wstream_healthy"), 1.0);
    assert!(metric(&text, r#"wstream_process_resident_bytes{kind="total"}"#) > 1e6);
    let model = wstream::models::Model::load(&vit).unwrap();
    let m = &model.name;
    assert_eq!(
        metric(&text, &format!(r#"wstream_weights_bytes{{model="{m}"}}"#)),
        model.store.total_bytes() as f64
    );
    // The weights were just read: the page cache holds at least some of them.
    assert!(
        metric(
            &text,
            &format!(r#"wstream_weights_cached_bytes{{model="{m}"}}"#)
        ) > 0.0
    );
    for b in &model.blocks {
        let labels = format!(r#"{{model="{m}",block="{}"}}"#, b.name());
        assert_eq!(
            metric(&text, &format!("wstream_block_runs_total{labels}")),
            batches,
            "{}",
            b.name()
        );
        for series in [
            "compute_seconds",
            "wait_seconds",
            "major_faults",
            "paged_in_bytes",
            "storage_read_bytes",
        ] {
            let name = format!("wstream_block_{series}_total{labels} ");
            assert!(text.contains(&name), "no {name}");
        }
    }
    assert!(metric(&text, "wstream_block_compute_seconds_total") >= 0.0);
    for name in ["wstream_batch_size", "wstream_block_paged_in_bytes_total"] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
    }
}

#[test]
fn a_full_queue_answers_503_at_once_and_the_queued_still_run() {
    let vit = fixture("vit_tiny");
    // A long window keeps the first four waiting for company: the queue is full while they wait.
    let server = Served::start(
        &vit,
        &[
            "--max-batch",
            "64",
            "--batch-window-ms",
            "1500",
            "--queue",
            "4",
        ],
    );
    let jpeg = data("cat.jpg");
    std::thread::scope(|s| {
        let queued: Vec<_> = (0..4)
            .map(|_| s.spawn(|| server.post("/v1/classify", "image/jpeg", &jpeg)))
            .collect();
        let t = Instant::now();
        while server.metric("wstream_queue_depth") < 4.0 {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "requests never queued"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let t = Instant::now();
        let r = server.post("/v1/classify", "image/jpeg", &jpeg);
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.retry_after.as_deref(), Some("1"));
        assert!(r.error().contains("--queue"), "{}", r.body);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        for h in queued {
            let r = h.join().unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.json()["batch_size"], 4);
        }
    });
}

/// Writes a whole raw request and returns what the server answered until it closed the connection.
fn raw(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer (and close) before the request is all written.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Only the status line and headers matter; a reset after them is fine.
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn bad_requests_get_one_clear_error_and_the_server_goes_on() {
    let vit = fixture("vit_tiny");
    let server = Served::start(&vit, &["--max-body", "64K", "--batch-window-ms", "0"]);
    let jpeg = data("cat.jpg");
    let cases: [(&str, &str, Vec<u8>, u16, &str); 7] = [
        (
            "/v1/classify",
            "image/jpeg",
            ICO.to_vec(),
            400,
            "request body: is an image in ICO format",
        ),
        (
            "/v1/classify",
            "text/plain",
            jpeg.clone(),
            400,
            "Content-Type `text/plain`",
        ),
        (
            "/v1/classify?top=0",
            "image/jpeg",
            jpeg.clone(),
            400,
            "top=0",
        ),
        (
            "/v1/classify?colour=red",
            "image/jpeg",
            jpeg.clone(),
            400,
            "`colour`",
        ),
        (
            "/v1/classify",
            "image/png",
            jpeg[..jpeg.len() / 2].to_vec(),
            400,
            "truncated or corrupt JPEG",
        ),
        (
            "/v1/classify",
            "application/x-npy",
            b"\x93NUMPY junk".to_vec(),
            400,
            "not a usable .npy array",
        ),
        ("/v1/classify", "image/jpeg", Vec::new(), 400, "empty"),
    ];
    for (path, ctype, body, status, says) in cases {
        let r = server.post(path, ctype, &body);
        assert_eq!(r.status, status, "{path} {ctype}: {}", r.body);
        assert!(r.error().contains(says), "{path} {ctype}: {}", r.body);
        assert!(!r.error().contains('\n'));
    }
    // The CLI gives the same message for the same bytes.
    let dir = tempfile::tempdir().unwrap();
    let ico = dir.path().join("x.jpg");
    std::fs::write(&ico, ICO).unwrap();
    let (_, _, err) = common::wstream(&[
        "classify",
        "--model",
        vit.to_str().unwrap(),
        ico.to_str().unwrap(),
    ]);
    let r = server.post("/v1/classify", "image/jpeg", ICO);
    assert_eq!(
        err.trim().replace(ico.to_str().unwrap(), "request body"),
        format!("wstream: error: {}", r.error())
    );
    // An npy array the model cannot take.
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2, 2), }";
    let header = format!("{header:<117}\n");
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    npy.extend_from_slice(&[0; 48]);
    let r = server.post("/v1/classify", "application/x-npy", &npy);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().contains("expects [3, 32, 32]"), "{}", r.body);
    // A declared length over the limit is refused from the headers, before the body is read (a client
    // that sends it anyway, without `Expect: 100-continue`, sees the connection reset after the answer).
    let t = Instant::now();
    let head = raw(
        &server.addr,
        b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000000000\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("65536-byte limit (--max-body)"), "{head}");
    assert!(t.elapsed() < Duration::from_secs(2));
    // A chunked body (no length given) is cut off at the limit.
    let mut chunked =
        b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..80 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[0xFF; 0x400]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert!(raw(&server.addr, &chunked).starts_with("HTTP/1.1 413"));
    let r = server.get("/v2/classify");
    assert_eq!(r.status, 404);
    assert!(r.error().contains("POST /v1/classify"));
    let r = server.get("/v1/classify");
    assert_eq!((r.status, r.allow.as_deref()), (405, Some("POST")));
    let r = server.post("/metrics", "image/jpeg", &jpeg);
    assert_eq!((r.status, r.allow.as_deref()), (405, Some("GET")));
    // And a good request after all of them.
    assert_eq!(server.post("/v1/classify", "image/jpeg", &jpeg).status, 200);
    let text = server.get("/metrics").body;
    assert_eq!(
        metric(
            &text,
            r#"wstream_requests_total{route="/v1/classify",status="400"}"#
        ),
        9.0
    );
    assert_eq!(
        metric(
            &text,
            r#"wstream_requests_total{route="/v1/classify",status="413"}"#
        ),
        2.0
    );
}

#[test]
fn an_api_key_guards_every_route_but_healthz() {
    let server = Served::start(&fixture("vit_tiny"), &["--api-key", "s3cret"]);
    let jpeg = data("cat.jpg");
    let post = |auth: Option<&str>| {
        let mut req = ureq::post(&server.url("/v1/classify"));
        if let Some(a) = auth {
            req = req.set("Authorization", a);
        }
        server.call(req, Some(("image/jpeg", &jpeg))).status
    };
    assert_eq!(post(None), 401);
    assert_eq!(post(Some("Bearer s3cre")), 401);
    assert_eq!(post(Some("Bearer s3cret2")), 401);
    assert_eq!(post(Some("s3cret")), 401);
    assert_eq!(post(Some("Bearer s3cret")), 200);
    assert_eq!(server.get("/metrics").status, 401);
    assert_eq!(server.get("/v1/models").status, 401);
    assert_eq!(server.get("/healthz").status, 200);
    let r = server.call(
        ureq::get(&server.url("/v1/models")).set("Authorization", "Bearer s3cret"),
        None,
    );
    let m = &r.json()[0];
    assert_eq!(m["name"], "vit_tiny_patch16_224");
    assert_eq!(m["family"], "vit");
    assert_eq!(m["dtype"], "F32");
    let model = wstream::models::Model::load(fixture("vit_tiny")).unwrap();
    assert_eq!(m["bytes"], model.store.total_bytes());
    assert_eq!(
        m["preprocessing"]["input_size"],
        serde_json::json!([3, 32, 32])
    );
    assert_eq!(m["preprocessing"]["interpolation"], "bicubic");
    assert_eq!(m["labels"], "imagenet-1k");
}

#[test]
fn stalled_clients_time_out_without_holding_up_others() {
    let server = Served::start(
        &fixture("vit_tiny"),
        &["--read-timeout-secs", "2", "--batch-window-ms", "0"],
    );
    // Half a body, then silence; and headers that never end.
    let mut half = TcpStream::connect(&server.addr).unwrap();
    half.write_all(
        b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n",
    )
    .unwrap();
    half.write_all(&[0xFF; 500]).unwrap();
    let mut headless = TcpStream::connect(&server.addr).unwrap();
    headless
        .write_all(b"POST /v1/classify HTTP/1.1\r\nHost:")
        .unwrap();
    let t = Instant::now();
    let r = server.post("/v1/classify", "image/jpeg", &data("cat.jpg"));
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // Each stalled connection is answered or closed by the read timeout.
    for (s, expect) in [(&mut half, "HTTP/1.1 408"), (&mut headless, "")] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with(expect), "{out}");
    }
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
}

#[test]
fn a_request_whose_client_left_is_dropped_before_its_batch() {
    let server = Served::start(
        &fixture("vit_tiny"),
        &["--batch-window-ms", "800", "--max-batch", "8"],
    );
    let jpeg = data("cat.jpg");
    let mut gone = TcpStream::connect(&server.addr).unwrap();
    let head = format!(
        "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        jpeg.len()
    );
    gone.write_all(head.as_bytes()).unwrap();
    gone.write_all(&jpeg).unwrap();
    let t = Instant::now();
    while server.metric("wstream_queue_depth") < 1.0 {
        assert!(t.elapsed() < Duration::from_secs(5), "never queued");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(gone);
    let r = server.post("/v1/classify", "image/jpeg", &jpeg);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["batch_size"],
        1,
        "the left request ran: {}",
        r.body
    );
    let text = server.get("/metrics").body;
    assert_eq!(metric(&text, "wstream_requests_dropped_total"), 1.0);
    assert_eq!(metric(&text, "wstream_batch_size_sum"), 1.0);
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    let mut server = Served::start(
        &fixture("vit_tiny"),
        &["--batch-window-ms", "1000", "--max-batch", "8"],
    );
    let jpeg = data("cat.jpg");
    let url = server.url("/v1/classify");
    let in_flight = std::thread::spawn(move || {
        ureq::post(&url)
            .set("Content-Type", "image/jpeg")
            .send_bytes(&jpeg)
            .map(|r| r.status())
            .map_err(|e| e.to_string())
    });
    let t = Instant::now();
    while server.metric("wstream_queue_depth") < 1.0 {
        assert!(t.elapsed() < Duration::from_secs(5), "never queued");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = server.child.id();
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    assert_eq!(in_flight.join().unwrap().unwrap(), 200);
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(TcpStream::connect(&server.addr).is_err(), "still accepting");
    let mut err = String::new();
    server
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("SIGTERM"), "{err}");
}

#[test]
fn changed_weights_fail_requests_with_500_and_healthz_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("vit");
    std::fs::create_dir(&model).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("vit_tiny").join(f), model.join(f)).unwrap();
    }
    let server = Served::start(&model, &["--batch-window-ms", "0"]);
    let jpeg = data("cat.jpg");
    assert_eq!(server.post("/v1/classify", "image/jpeg", &jpeg).status, 200);
    let weights = model.join("model.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let r = server.post("/v1/classify", "image/jpeg", &jpeg);
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(
        r.error().contains("model.safetensors: changed on disk"),
        "{}",
        r.body
    );
    let h = server.get("/healthz");
    assert_eq!(h.status, 503);
    assert_eq!(h.json()["status"], "unhealthy");
    assert!(h.json()["error"]
        .as_str()
        .unwrap()
        .contains("changed on disk"));
    // The process lives and says so in its metrics too.
    let text = server.get("/metrics").body;
    assert_eq!(metric(&text, "wstream_healthy"), 0.0);
    assert_eq!(
        metric(
            &text,
            r#"wstream_requests_total{route="/v1/classify",status="500"}"#
        ),
        1.0
    );
}

#[test]
fn batches_hold_no_more_than_the_memory_limit_allows() {
    use wstream::exec::{ExecOptions, Executor};
    let vit = fixture("vit_tiny");
    let models = vec![wstream::models::Model::load(&vit).unwrap()];
    let budget = Executor::new(&models, ExecOptions::default())
        .unwrap()
        .budget();
    // Exactly what two inputs are estimated to need: batches of 2, though --max-batch says 16.
    let limit = wstream::pipeline::estimate(&models, budget, 2).unwrap().0;
    let server = Served::start(
        &vit,
        &[
            "--memory",
            &limit.to_string(),
            "--max-batch",
            "16",
            "--batch-window-ms",
            "300",
        ],
    );
    let jpeg = data("cat.jpg");
    let sizes: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| server.post("/v1/classify", "image/jpeg", &jpeg).json()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap()["batch_size"].as_u64().unwrap())
            .collect()
    });
    assert!(sizes.iter().all(|&n| n <= 2), "{sizes:?}");
    assert!(sizes.contains(&2), "{sizes:?}");
}
