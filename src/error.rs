//! The library's error type. Every message names the file (and the tensor, where there is one) and gives
//! expected vs actual numbers, so the CLI can print it as the one line a user needs.
//!
//! A message is complete on its own, so no variant also reports a `source()`: an OS error is part of
//! [`Error::Io`]'s message, and a printer that walks the chain (anyhow's `{:#}`) shows it once.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: no such file or folder", path.display())]
    NotFound { path: PathBuf },
    #[error("{}: folder holds no model.safetensors, model.safetensors.index.json or other .safetensors file", path.display())]
    NoWeights { path: PathBuf },
    #[error("{}: folder holds {count} .safetensors files and no model.safetensors.index.json; name one file", path.display())]
    AmbiguousWeights { path: PathBuf, count: usize },
    /// A folder, FIFO, socket or device where a file to read was expected: never opened for reading, since
    /// a FIFO would block forever and a device can be endless.
    #[error("{}: not a regular file but {kind}; name a file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    /// A file read into memory (config.json, shard index, `.npy`) larger than wstream reads of its kind.
    #[error("{}: {what} of {size} bytes is over the {limit}-byte limit", path.display())]
    FileTooLarge {
        path: PathBuf,
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("{}: file is empty (0 bytes), not a safetensors file", path.display())]
    EmptyFile { path: PathBuf },
    #[error("{}: file is {len} bytes, shorter than the 8-byte header length of a safetensors file", path.display())]
    TooShort { path: PathBuf, len: u64 },
    #[error("{}: header length {header_len} is over the {limit}-byte limit (not a safetensors file?)", path.display())]
    HeaderTooLarge {
        path: PathBuf,
        header_len: u64,
        limit: u64,
    },
    #[error("{}: header length {header_len} runs past the end of the file ({file_len} bytes)", path.display())]
    HeaderPastEnd {
        path: PathBuf,
        header_len: u64,
        file_len: u64,
    },
    #[error("{}: header is not valid UTF-8 (bad byte at header offset {offset})", path.display())]
    HeaderNotUtf8 { path: PathBuf, offset: usize },
    #[error("{}: header is not valid safetensors JSON: {msg}", path.display())]
    HeaderJson { path: PathBuf, msg: String },
    #[error("{}: lists {count} tensors, over wstream's limit of {limit} per checkpoint", path.display())]
    TooManyTensors {
        path: PathBuf,
        count: usize,
        limit: usize,
    },
    #[error("{}: tensor `{name}` appears twice", path.display())]
    DuplicateTensor { path: PathBuf, name: String },
    #[error("{}: tensor `{name}`: {msg}", path.display())]
    BadTensor {
        path: PathBuf,
        name: String,
        msg: String,
    },
    #[error("{}: data section is truncated: tensor `{name}` ends at data byte {needed} but the file holds {actual} data bytes", path.display())]
    Truncated {
        path: PathBuf,
        name: String,
        needed: u64,
        actual: u64,
    },
    #[error("{}: tensors cover {covered} data bytes but the file holds {actual}: a gap at the end", path.display())]
    TrailingBytes {
        path: PathBuf,
        covered: u64,
        actual: u64,
    },
    #[error("{}: shard index names `{shard}`, which is missing ({})", index.display(), reason)]
    MissingShard {
        index: PathBuf,
        shard: String,
        reason: String,
    },
    #[error("{}: shard index: {msg}", index.display())]
    ShardIndex { index: PathBuf, msg: String },
    #[error("{}: changed on disk since it was opened ({what}); reopen it", path.display())]
    FileChanged { path: PathBuf, what: String },
    #[error("{}: no tensor named `{name}`", path.display())]
    NoTensor { path: PathBuf, name: String },
    #[error("{}: tensor `{name}` has dtype {actual}, expected {expected}", path.display())]
    WrongDtype {
        path: PathBuf,
        name: String,
        expected: String,
        actual: String,
    },
    #[error("{}: tensor `{name}` has shape {actual:?}, expected {expected:?}", path.display())]
    WrongShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    /// Weights that do not make a model wstream can run (an unknown family, missing or misshapen tensors,
    /// weights that disagree with their config); `path` is the model's.
    #[error("{}: {msg}", path.display())]
    Model { path: PathBuf, msg: String },
    /// A config.json that is not timm's or asks for what wstream does not do; `path` is the config, or the
    /// model it belongs to.
    #[error("{}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },
    /// An input file (image, .npy) that cannot be read as one.
    #[error("{}: {msg}", path.display())]
    Input { path: PathBuf, msg: String },
    /// An input that does not fit the model it reached (shape, size); `path` is the model's.
    #[error("{}: {msg}", path.display())]
    InputShape { path: PathBuf, msg: String },
    /// A memory budget below what the largest block needs paged in at once.
    #[error("{}: budget of {budget} bytes is below what block `{block}` of {model} needs: the minimum budget is {needed} bytes", path.display())]
    Budget {
        path: PathBuf,
        budget: u64,
        model: String,
        block: String,
        needed: u64,
    },
    /// A memory limit below what one input needs: its activations and the process's own memory, which
    /// cannot be paged out (the mapped weights can).
    #[error("{}: one input needs about {needed} bytes of memory for {model}'s activations, over the memory limit of {limit} bytes ({whence}); raise it with --memory", path.display())]
    Memory {
        path: PathBuf,
        model: String,
        needed: u64,
        limit: u64,
        whence: String,
    },
    /// An output that is refused (it exists, or is the input) or came out other than planned.
    #[error("{}: {msg}", path.display())]
    Output { path: PathBuf, msg: String },
    /// An architecture `synth` has no recipe for.
    #[error("unknown architecture `{arch}`; known: {known}")]
    UnknownArch { arch: String, known: String },
    /// The HTTP server could not start or run (an address that cannot be bound).
    #[error("{0}")]
    Server(String),
    /// A hub id the local Hugging Face cache cannot answer (the message says where it looked).
    #[error("{0}")]
    Hub(String),
    /// Options a library caller gave that cannot work (no model, an empty batch).
    #[error("{0}")]
    Options(String),
    /// A run its caller asked to stop ([`crate::exec::Executor::run_until`]).
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        let path = path.into();
        if error.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound { path }
        } else {
            Error::Io { path, error }
        }
    }
}
