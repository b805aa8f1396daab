//! Subcommands. Each returns `anyhow::Result`; `run` turns an error into one line on stderr and a non-zero
//! exit status, and a closed stdout (`wstream ... | head`) into a quiet exit.

mod classify;
mod convert;
mod demo;
mod inspect;
mod profile;
#[cfg(feature = "serve")]
mod serve;
mod synth;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wstream",
    version,
    about = "Run large image classifiers from memory-mapped weights, block by block"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the tensors of a safetensors file or model folder, and how much of each is in memory.
    Inspect(inspect::Args),
    /// Classify images (JPEG, PNG, WebP, BMP, TIFF, GIF; folders of them) or preprocessed .npy arrays with
    /// one model or an ensemble.
    Classify(classify::Args),
    /// Run the three-model ensemble on a bundled photo and report memory (synthesises missing models).
    Demo(demo::Args),
    /// Classify, then report block by block what was paged in, what it cost and what stayed resident.
    Profile(profile::Args),
    /// Write a synthetic checkpoint (timm's exact names and shapes, random values) for an architecture.
    Synth(synth::Args),
    /// Write a copy of a model in f16, bf16 or int8, and/or in execution order with page-aligned blocks.
    Convert(convert::Args),
    /// Serve classification over HTTP, batching concurrent requests through each block together.
    #[cfg(feature = "serve")]
    Serve(serve::Args),
}

pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    return ExitCode::SUCCESS;
                }
                // Bare `wstream` (or a subcommand group without its subcommand): the help is the useful
                // answer, but on stderr with the usage exit code, so a script that forgot its arguments
                // neither parses help as output nor carries on as if it had succeeded.
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    return ExitCode::from(2);
                }
                _ => {}
            }
            eprintln!("wstream: {}", printable(&usage_error(&e.to_string())));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Classify(args) => classify::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Profile(args) => profile::run(args),
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wstream: error: {}", printable(&format!("{e:#}")));
            e.downcast_ref::<Exit>()
                .map_or(ExitCode::FAILURE, |x| ExitCode::from(x.code))
        }
    }
}

/// Some inputs failed (`classify --skip-errors`), the others were answered: sysexits' EX_DATAERR, clear
/// of 1 (any other error), 2 (usage), 126/127 (the shell's) and 128 + N (killed by signal N), so a
/// scheduler can tell "done, with bad inputs" from a crash.
pub(crate) const EXIT_PARTIAL: u8 = 65;
/// The weights were unavailable (missing, unreadable, changed or truncated under the run) or the result
/// file could not be written: running again later may succeed, so a retry policy (Kubernetes
/// `podFailurePolicy`, Slurm requeue) keys on it. sysexits' EX_TEMPFAIL.
pub(crate) const EXIT_RETRYABLE: u8 = 75;

/// An error that ends the process with an exit status of its own instead of 1.
#[derive(Debug)]
pub(crate) struct Exit {
    pub code: u8,
    pub error: anyhow::Error,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Exit {}

/// `error`, ending the process with status `code`.
pub(crate) fn exit_with(code: u8, error: impl Into<anyhow::Error>) -> anyhow::Error {
    Exit {
        code,
        error: error.into(),
    }
    .into()
}

/// clap's rendering of a usage error as one line. Its first paragraph is the message, and for a missing
/// argument the names follow on indented lines of their own (so its first line alone names nothing); a
/// `tip:` paragraph (a similar flag, `--` before a value) is kept, the usage block is left out.
fn usage_error(rendered: &str) -> String {
    let first: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let mut parts = vec![first.join(" ")];
    parts.extend(
        rendered
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("tip: "))
            .map(String::from),
    );
    let message = parts.join("; ");
    // Point at the help of the subcommand that was being parsed, which names its arguments.
    let command = std::env::args()
        .nth(1)
        .filter(|a| {
            <Cli as clap::CommandFactory>::command()
                .find_subcommand(a)
                .is_some()
        })
        .map_or("wstream".to_string(), |a| format!("wstream {a}"));
    format!(
        "{} (see {command} --help)",
        message.trim_start_matches("error: ")
    )
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Sizes rayon's global pool (and so the GEMM threads): `threads` or all cores.
pub(crate) fn set_threads(threads: Option<u64>) -> anyhow::Result<()> {
    let n = threads.map_or(0, |t| t as usize);
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| anyhow::anyhow!("cannot start {n} compute threads: {e}"))
}

/// Writes a line to stdout, reporting a closed pipe as an error instead of panicking like `println!`.
pub(crate) fn out(line: impl std::fmt::Display) -> std::io::Result<()> {
    writeln!(std::io::stdout().lock(), "{line}")
}

/// A byte count with an optional K, M or G suffix (powers of 1024): `512M`, `1.5G`, `4096`.
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("`{s}`: unknown size suffix `{c}` (use K, M or G)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    match num.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v * (mult as f64) < 1.8e19 => {
            Ok((v * mult as f64) as u64)
        }
        _ => Err(format!("`{s}` is not a positive size such as 512M or 2G")),
    }
}

/// `s` as it is safe to print: control characters (newlines, tabs, ESC of ANSI codes, C1) and the Unicode
/// bidi overrides escaped as `\n`, `\u{1b}`, `\u{202e}`. Every string a file provides (tensor names, JSON
/// keys, labels, model names, paths) goes through it on its way to a human, so it can neither restyle the
/// terminal nor split the one line an error is; JSON output needs none of it (serde escapes).
pub(crate) fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(unsafe_char) {
        return s.into();
    }
    let mut escaped = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            escaped.extend(c.escape_debug());
        } else if unsafe_char(c) {
            escaped.extend(c.escape_unicode());
        } else {
            escaped.push(c);
        }
    }
    escaped.into()
}

/// Bytes as a short human figure: 1536 -> "1.5 KiB".
pub(crate) fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Set by `classify --quiet`: notes are not printed (warnings and errors always are).
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}

/// One `note:` line on stderr: what a command chose or found for the user (unless --quiet).
pub fn note(msg: impl std::fmt::Display) {
    if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("note: {msg}");
    }
}
