//! Result files for long runs (`classify --output FILE`), in the format the extension names:
//!
//! - `.jsonl`: one JSON object per line, an answer as `classify --json` prints it or `{"input", "error"}`;
//! - `.csv`: timm `inference.py`'s columns with `--results-separate-col` (`filename`, `index_0..`,
//!   `label_0..`, `prob_0..`: the ensemble's top classes, which with one model are that model's), and an
//!   `error` column last;
//! - `.json`: one array of the `.jsonl` objects, written whole at the end through a temporary file renamed
//!   into place (an interrupted run leaves no file).
//!
//! `.jsonl` and `.csv` are appended to, one `write` of whole records per batch followed by a sync, so a
//! crash or a kill at any moment leaves only complete records (a torn last record, which only a full disk
//! or a power cut can leave, is cut off when the file is resumed). A resumed file is read back for the
//! inputs it holds, which the run then skips. The run's settings (models, options) are written beside it
//! as `FILE.wstream.json`; resuming a file with other settings is refused, not mixed.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::output::{self, Existing};
use crate::pipeline::Answer;

/// A result file's format, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
    Json,
}

impl Format {
    /// The format `path`'s extension (any case) names.
    pub fn of(path: &Path) -> Result<Format> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("jsonl") => Ok(Format::Jsonl),
            Some("csv") => Ok(Format::Csv),
            Some("json") => Ok(Format::Json),
            _ => Err(Error::Output {
                path: path.into(),
                msg: "the format comes from the extension: name a .jsonl, .csv or .json file"
                    .into(),
            }),
        }
    }

    /// Whether a file of this format can be resumed (it is written as the run goes).
    pub fn resumable(self) -> bool {
        self != Format::Json
    }
}

/// One input's record: its answer, or why it has none.
pub enum Record<'a> {
    Answer(&'a Answer),
    Failed { input: &'a str, error: &'a str },
}

impl Record<'_> {
    pub fn input(&self) -> &str {
        match self {
            Record::Answer(a) => &a.input,
            Record::Failed { input, .. } => input,
        }
    }

    /// The record as one line of JSON (what `.jsonl` holds and `classify --json` prints).
    pub fn to_json(&self) -> String {
        match self {
            Record::Answer(a) => serde_json::to_string(a).expect("answers serialise"),
            // Written by hand so "input" comes first, as in an answer.
            Record::Failed { input, error } => {
                format!(r#"{{"input":{},"error":{}}}"#, json!(input), json!(error))
            }
        }
    }
}

/// The settings file beside a result file.
pub fn settings_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".wstream.json");
    path.with_file_name(name)
}

/// What a resumed file already held.
#[derive(Debug, Default)]
pub struct Resumed {
    /// The inputs recorded, answered or failed: a run skips them.
    pub done: HashSet<String>,
    /// Bytes of a torn last record that were cut off.
    pub cut: u64,
}

/// Writes the records of a run to a result file.
pub struct RecordWriter {
    path: PathBuf,
    format: Format,
    top: usize,
    /// `.jsonl` / `.csv`: the file, opened for appending and locked against a second writer.
    file: Option<File>,
    /// `.json`: the records so far, written at [`RecordWriter::finish`].
    whole: Vec<String>,
}

impl RecordWriter {
    /// Starts `path` (refused if it exists, unless `resume`), or with `resume` continues it: it must have
    /// been written with the same `settings` (any JSON value naming what changes the answers), and the
    /// inputs it holds are returned. `top` is the classes per record (the CSV's columns); `inputs` are
    /// never written over.
    pub fn open(
        path: &Path,
        settings: &Value,
        top: usize,
        resume: bool,
        inputs: &[PathBuf],
    ) -> Result<(RecordWriter, Resumed)> {
        let format = Format::of(path)?;
        let refuse = |msg: String| Error::Output {
            path: path.into(),
            msg,
        };
        if resume && !format.resumable() {
            return Err(refuse(
                "a .json file is written whole at the end and cannot be resumed; use .jsonl or .csv"
                    .into(),
            ));
        }
        let exists = std::fs::symlink_metadata(path).is_ok();
        let existing = if resume && exists {
            Existing::Replace
        } else {
            Existing::Refuse
        };
        output::check(path, None, existing, inputs)
            .map_err(|e| with_hint(e, resume || !format.resumable()))?;
        let mut writer = RecordWriter {
            path: path.into(),
            format,
            top,
            file: None,
            whole: Vec::new(),
        };
        if format == Format::Json {
            return Ok((writer, Resumed::default()));
        }
        let sidecar = settings_path(path);
        let stamp = json!({"wstream": env!("CARGO_PKG_VERSION"), "settings": settings});
        let resumed = if exists {
            check_settings(path, &sidecar, &stamp)?;
            let (file, resumed) = writer.reopen()?;
            writer.file = Some(file);
            resumed
        } else {
            output::write_atomic(&sidecar, format!("{stamp:#}\n").as_bytes())?;
            // The CSV header goes in by a rename, so the file never exists without it.
            let header = if format == Format::Csv {
                writer.csv_header()
            } else {
                String::new()
            };
            output::write_atomic(path, header.as_bytes())?;
            writer.file = Some(writer.append_locked()?);
            Resumed::default()
        };
        Ok((writer, resumed))
    }

    fn append_locked(&self) -> Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        file.try_lock().map_err(|_| Error::Output {
            path: self.path.clone(),
            msg: "another process is writing it (two runs or shards with the same --output?)"
                .into(),
        })?;
        Ok(file)
    }

    /// Opens an existing file for appending: reads its records, cuts a torn last one off.
    fn reopen(&self) -> Result<(File, Resumed)> {
        let mut file = self.append_locked()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        let (inputs, complete) = match self.format {
            Format::Jsonl => jsonl_inputs(&bytes, &self.path)?,
            _ => csv_inputs(&bytes, &self.csv_header(), &self.path)?,
        };
        let cut = (bytes.len() - complete) as u64;
        if cut > 0 {
            file.set_len(complete as u64)
                .map_err(|e| Error::io(&self.path, e))?;
        }
        Ok((
            file,
            Resumed {
                done: inputs.into_iter().collect(),
                cut,
            },
        ))
    }

    fn csv_header(&self) -> String {
        let mut cols = vec!["filename".to_string()];
        for prefix in ["index", "label", "prob"] {
            cols.extend((0..self.top).map(|i| format!("{prefix}_{i}")));
        }
        cols.push("error".into());
        cols.join(",") + "\n"
    }

    fn csv_row(&self, record: &Record) -> String {
        let mut cols = vec![csv_field(record.input())];
        match record {
            Record::Answer(a) => {
                let top = &a.ensemble.top;
                let cell = |i: usize, f: &dyn Fn(&crate::classify::Ranked) -> String| {
                    top.get(i).map(f).unwrap_or_default()
                };
                cols.extend((0..self.top).map(|i| cell(i, &|r| r.class.to_string())));
                cols.extend((0..self.top).map(|i| cell(i, &|r| csv_field(&r.label))));
                cols.extend((0..self.top).map(|i| cell(i, &|r| r.prob.to_string())));
                cols.push(String::new());
            }
            Record::Failed { error, .. } => {
                cols.extend(std::iter::repeat_n(String::new(), 3 * self.top));
                cols.push(csv_field(error));
            }
        }
        cols.join(",") + "\n"
    }

    /// Writes one batch's records: for `.jsonl` and `.csv` one append of whole records, synced before
    /// this returns, so they survive a kill or a crash of this process from then on.
    pub fn write(&mut self, records: &[Record]) -> Result<()> {
        let mut text = String::new();
        for r in records {
            match self.format {
                Format::Csv => text.push_str(&self.csv_row(r)),
                Format::Jsonl => {
                    text.push_str(&r.to_json());
                    text.push('\n');
                }
                Format::Json => self.whole.push(r.to_json()),
            }
        }
        if let Some(file) = &mut self.file {
            let io = |e| Error::io(&self.path, e);
            file.write_all(text.as_bytes()).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        Ok(())
    }

    /// Ends the run: a `.json` file is written now (temporary file, renamed into place).
    pub fn finish(self) -> Result<()> {
        if self.format == Format::Json {
            let body = if self.whole.is_empty() {
                "[]\n".to_string()
            } else {
                format!("[\n{}\n]\n", self.whole.join(",\n"))
            };
            output::write_atomic(&self.path, body.as_bytes())?;
        }
        Ok(())
    }
}

fn with_hint(e: Error, resume_given: bool) -> Error {
    match e {
        Error::Output { path, msg } if msg.starts_with("already exists") && !resume_given => {
            Error::Output {
                path,
                msg: "already exists; add --resume to continue it (skipping the inputs it holds), \
                      or remove it or pick another name"
                    .into(),
            }
        }
        e => e,
    }
}

fn check_settings(path: &Path, sidecar: &Path, stamp: &Value) -> Result<()> {
    let refuse = |msg: String| Error::Output {
        path: path.into(),
        msg,
    };
    let text = match std::fs::read_to_string(sidecar) {
        Ok(t) => t,
        Err(e) => {
            return Err(refuse(format!(
                "cannot be resumed: its settings file {} is unreadable ({e}); wstream resumes only \
                 a file it started, with the same models and options",
                sidecar.display()
            )))
        }
    };
    let old: Value = serde_json::from_str(&text).map_err(|e| {
        refuse(format!(
            "cannot be resumed: its settings file {} is not valid JSON ({e})",
            sidecar.display()
        ))
    })?;
    if old != *stamp {
        let diff = differences(&old["settings"], &stamp["settings"]);
        let what = if old["wstream"] != stamp["wstream"] && diff.is_empty() {
            format!(
                "wstream {} wrote it, this is {}",
                old["wstream"], stamp["wstream"]
            )
        } else {
            diff.join("; ")
        };
        return Err(refuse(format!(
            "was written with other settings ({what}); resuming would mix answers of two runs: \
             resume with the same models and options, or write a new file"
        )));
    }
    Ok(())
}

/// The settings that differ between two runs, as `key: was X, now Y`.
fn differences(old: &Value, new: &Value) -> Vec<String> {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return vec![format!("was {old}, now {new}")];
    };
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| o.get(*k) != n.get(*k))
        .map(|k| {
            let show = |v: Option<&Value>| v.map_or("(none)".into(), |v| v.to_string());
            format!("{k}: was {}, now {}", show(o.get(k)), show(n.get(k)))
        })
        .collect()
}

/// The inputs of a `.jsonl` file's complete lines, and the length of those lines.
fn jsonl_inputs(bytes: &[u8], path: &Path) -> Result<(Vec<String>, usize)> {
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let mut inputs = Vec::new();
    for (n, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let input = serde_json::from_slice::<Value>(line)
            .ok()
            .and_then(|v| v.get("input")?.as_str().map(String::from));
        match input {
            Some(i) => inputs.push(i),
            None => {
                return Err(Error::Output {
                    path: path.into(),
                    msg: format!(
                        "line {} is not a record wstream writes (a JSON object with \"input\"); \
                         not resuming a file edited by hand",
                        n + 1
                    ),
                })
            }
        }
    }
    Ok((inputs, complete))
}

/// The first fields of a CSV file's complete records after its header (which must be `header`), and the
/// length of those records.
fn csv_inputs(bytes: &[u8], header: &str, path: &Path) -> Result<(Vec<String>, usize)> {
    if !bytes.starts_with(header.as_bytes()) {
        return Err(Error::Output {
            path: path.into(),
            msg: format!(
                "its first line is not the header this run writes ({}); not resuming it",
                header.trim_end()
            ),
        });
    }
    let mut inputs = Vec::new();
    let (mut quoted, mut first_done) = (false, false);
    let mut field = Vec::new();
    let mut complete = header.len();
    let mut i = header.len();
    while i < bytes.len() {
        let b = bytes[i];
        if quoted {
            if b == b'"' && bytes.get(i + 1) == Some(&b'"') {
                // A doubled quote inside quotes is one quote of the value.
                if !first_done {
                    field.push(b'"');
                }
                i += 1;
            } else if b == b'"' {
                quoted = false;
            } else if !first_done {
                field.push(b);
            }
        } else {
            match b {
                b'"' => quoted = true,
                b',' => first_done = true,
                b'\n' => {
                    inputs.push(String::from_utf8_lossy(&field).into_owned());
                    field.clear();
                    first_done = false;
                    complete = i + 1;
                }
                _ if !first_done => field.push(b),
                _ => {}
            }
        }
        i += 1;
    }
    Ok((inputs, complete))
}

/// A CSV field: quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_first_fields_round_trip() {
        let header = "filename,error\n";
        let names = ["plain.jpg", "a,b.jpg", "say \"hi\".png", "two\nlines.jpg"];
        let mut text = header.to_string();
        for n in names {
            text.push_str(&format!("{},x\n", csv_field(n)));
        }
        let torn = format!("{text}\"cut,");
        let (inputs, complete) = csv_inputs(torn.as_bytes(), header, Path::new("r.csv")).unwrap();
        assert_eq!(inputs, names);
        assert_eq!(complete, text.len());
        assert!(csv_inputs(b"other\n", header, Path::new("r.csv")).is_err());
    }

    #[test]
    fn jsonl_torn_tail_and_foreign_lines() {
        let (inputs, complete) = jsonl_inputs(
            b"{\"input\":\"a\"}\n{\"input\":\"b\",\"error\":\"x\"}\n{\"inp",
            Path::new("r"),
        )
        .unwrap();
        assert_eq!(inputs, ["a", "b"]);
        assert_eq!(complete, 40);
        assert!(jsonl_inputs(b"[1]\n", Path::new("r")).is_err());
    }
}
