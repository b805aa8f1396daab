//! The streaming executor: runs models block by block with the weights of only a few blocks resident.
//!
//! All models are mapped up front (cheap: nothing is read). The blocks of every model form one schedule; a
//! prefetch thread walks ahead of the compute thread, mapping each block's pages in (MADV_POPULATE_READ,
//! which reads them in 2 MiB folios on the mappings [`crate::store`] advises HUGEPAGE) so page faults land
//! on the prefetch thread, not on compute. Once a block has
//! run, its pages are released (madvise DONTNEED, rounded inward so a page shared with a neighbour stays;
//! with [`Evict::Cache`] also dropped from the page cache). How far the prefetcher may run ahead is bounded by
//! a byte budget, so resident weights stay at about one block plus the look-ahead, whatever the model size.
//! A next block that does not fit the budget is still read into the page cache, which the budget does not
//! count, by the prefetch thread ([`residency::read_into_cache`]: mapped 2 MiB at a time and unmapped).
//!
//! Streaming changes memory, not numerics: each block runs the same code as [`Model::forward`].

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::{Act, Model};
use crate::process::{self, Faults, MemReading};
use crate::residency::{self, Released};
use crate::store::{FileRange, MappedFile};
use crate::weight;

/// What happens to a block's pages after it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Evict {
    /// Unmap them from the process; the page cache keeps them warm for the next run.
    #[default]
    Rss,
    /// Also drop them from the page cache, for boxes where the cache itself must stay small.
    Cache,
}

/// Executor settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecOptions {
    /// Most weight bytes mapped into the process at once (current block + look-ahead); the look-ahead grows
    /// to fill it. `None`: [`default_budget`].
    pub budget: Option<u64>,
    /// Most blocks prefetched ahead of the one computing.
    pub lookahead: usize,
    pub evict: Evict,
    /// Whether the run takes the records' readings: each step's page-cache residency before it is paged in
    /// ([`BlockRecord::resident_before`], mincore on the prefetch thread), the bytes read from storage
    /// ([`BlockRecord::storage_read`], four reads of /proc/thread-self/io per block) and the memory after
    /// each block ([`BlockRecord::mem_after`], /proc/self/status). On an unmapped range mincore looks up
    /// every 4 KiB page in the page cache, and each /proc read is a file opened, formatted and parsed: work
    /// on the cores the compute threads use, some of it on the compute thread itself. A run that reports
    /// none of them skips them.
    pub readings: bool,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            budget: None,
            lookahead: MAX_LOOKAHEAD,
            evict: Evict::Rss,
            readings: true,
        }
    }
}

/// The furthest the prefetcher runs ahead.
pub const MAX_LOOKAHEAD: usize = 16;

/// The most the default budget allows: two f32 blocks of the Large models' usual size, so the f32
/// ensemble's peak RSS stays well under 256 MiB.
pub const DEFAULT_BUDGET_CAP: u64 = 160 << 20;

/// The budget when none is given: the block computing and the next one (twice the largest block), at most
/// [`DEFAULT_BUDGET_CAP`], never below the largest block. Compact weights (int8: a quarter of the bytes)
/// get a budget as much smaller, which is what keeps their peak RSS low.
pub fn default_budget(largest_block: u64) -> u64 {
    (2 * largest_block)
        .min(DEFAULT_BUDGET_CAP)
        .max(largest_block)
}

/// What one block's run cost.
#[derive(Debug, Clone, Serialize)]
pub struct BlockRecord {
    pub model: String,
    pub block: String,
    /// Which batch of the run this was (from 0), the index of its first input among the run's inputs, and
    /// how many inputs it held. The executor runs one batch: the pipeline, which splits a run into
    /// batches, fills in `batch` and `first_input`.
    pub batch: usize,
    pub first_input: usize,
    pub inputs: usize,
    /// Page-rounded bytes of the block's weights.
    pub weight_bytes: u64,
    /// Of those, in the page cache when the prefetch thread began reading them (mincore); 0 when the run
    /// took no readings ([`ExecOptions::readings`]).
    #[serde(rename = "resident_before_bytes")]
    pub resident_before: u64,
    pub compute_faults: Faults,
    pub prefetch_faults: Faults,
    /// Bytes read from storage for this block, by the prefetch thread and by the compute thread while it ran,
    /// where the kernel accounts them (/proc/thread-self/io); `None` when the run took no readings.
    #[serde(rename = "storage_read_bytes")]
    pub storage_read: Option<u64>,
    /// Time the compute thread waited for the block's prefetch.
    #[serde(rename = "wait_ms", serialize_with = "as_ms")]
    pub wait: Duration,
    #[serde(rename = "compute_ms", serialize_with = "as_ms")]
    pub compute: Duration,
    /// When the block was due (it then waited, then computed) and when it was released, since the run began
    /// (the pipeline's run: its first batch's executor run).
    #[serde(rename = "start_ms", serialize_with = "as_ms")]
    pub start: Duration,
    #[serde(rename = "end_ms", serialize_with = "as_ms")]
    pub end: Duration,
    /// The process's memory after the block ran; zeros when the run took no readings.
    #[serde(rename = "mem_after_bytes")]
    pub mem_after: MemReading,
    #[serde(rename = "released_bytes")]
    pub released: Released,
    /// Scratch the block widened f16/bf16/int8 weights into, or quantized int8 activations into (bounded
    /// chunks + small tensors; an upper bound on what it held at once). 0 for f32 weights, read in place.
    pub scratch_bytes: u64,
}

/// What the executor is doing, as it happens. Steps number the blocks of all models in schedule order.
#[derive(Debug)]
pub enum Event<'a> {
    /// The prefetch thread was asked for a step's pages.
    PrefetchIssued { step: usize, at: Duration },
    /// A step's pages were in place (reported when the compute thread reaches it).
    PrefetchDone { step: usize, at: Duration },
    BlockStart {
        step: usize,
        model: &'a str,
        block: &'a str,
        at: Duration,
    },
    /// The block ran and its pages were released.
    BlockEnd(&'a BlockRecord),
    /// Something went wrong without stopping the run. An executor reports only its first warning: a
    /// refusal usually repeats for every block of a file, and once is enough to explain a slow run.
    Warning(&'a Warning),
}

/// Something that went wrong without stopping the run.
#[derive(Debug)]
pub enum Warning {
    /// The kernel refused to read a weight file ahead (madvise POPULATE_READ). Read-ahead is advisory: the
    /// pages are still read, only when they are mapped in rather than ahead of time.
    ReadAheadRefused {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Warning::ReadAheadRefused { path, error } => write!(
                f,
                "{}: the kernel refused to read weights ahead (madvise POPULATE_READ): {error}; \
                 they are read when mapped in instead",
                path.display()
            ),
        }
    }
}

/// What prefetching one step cost the prefetch thread.
#[derive(Debug, Default, Clone, Copy)]
struct Prefetched {
    /// Bytes of the step in the page cache when it was requested (mincore).
    resident_before: u64,
    faults: Faults,
    storage_read: Option<u64>,
    at: Duration,
}

/// Durations serialise as milliseconds.
pub fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

fn read_since(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    before.zip(after).map(|(a, b)| b.saturating_sub(a))
}

/// One block of the schedule: which model, which block, which byte ranges.
struct Step {
    model: usize,
    block: usize,
    ranges: Vec<FileRange>,
    bytes: u64,
}

/// Runs models block by block within a memory budget.
pub struct Executor<'m> {
    models: &'m [Model],
    opts: ExecOptions,
    /// The budget in force: the given one, or the default.
    budget: u64,
    steps: Vec<Step>,
    /// Whether a warning was reported (see [`Event::Warning`]).
    warned: AtomicBool,
}

fn page_rounded(ranges: &[FileRange]) -> u64 {
    let p = residency::page_size();
    ranges
        .iter()
        .map(|r| ((r.range.end.div_ceil(p) - r.range.start / p) * p) as u64)
        .sum()
}

/// Reads `range` of the mapping of `path` into the page cache without leaving it mapped; a refusal is a
/// warning.
fn read_ahead(map: &[u8], range: Range<usize>, path: &Path) -> std::result::Result<(), Warning> {
    residency::read_into_cache(map, range).map_err(|error| Warning::ReadAheadRefused {
        path: path.to_path_buf(),
        error,
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<'m> Executor<'m> {
    /// Plans the schedule; refuses a budget below what the largest block needs, before any work.
    pub fn new(models: &'m [Model], opts: ExecOptions) -> Result<Self> {
        let mut steps = Vec::new();
        for (mi, m) in models.iter().enumerate() {
            for bi in 0..m.blocks.len() {
                let ranges = m.block_ranges(bi)?;
                let bytes = page_rounded(&ranges);
                steps.push(Step {
                    model: mi,
                    block: bi,
                    ranges,
                    bytes,
                });
            }
        }
        if let (Some(budget), Some(big)) = (opts.budget, steps.iter().max_by_key(|s| s.bytes)) {
            if big.bytes > budget {
                let m = &models[big.model];
                return Err(Error::Budget {
                    path: m.store.path().to_path_buf(),
                    budget,
                    model: m.name.clone(),
                    block: m.blocks[big.block].name().into(),
                    needed: big.bytes,
                });
            }
        }
        let largest = steps.iter().map(|s| s.bytes).max().unwrap_or(0);
        let budget = opts.budget.unwrap_or(default_budget(largest));
        Ok(Executor {
            models,
            opts,
            budget,
            steps,
            warned: AtomicBool::new(false),
        })
    }

    /// The largest block's page-rounded weight bytes: the smallest budget that works.
    pub fn min_budget(&self) -> u64 {
        self.steps.iter().map(|s| s.bytes).max().unwrap_or(0)
    }

    /// The budget in force: the one given, or [`default_budget`] of the largest block.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Runs every model on its input (`inputs[i]` for `models[i]`, each `[batch, 3, h, w]`; a batch goes
    /// through each block before the next block, so each block is paged in once per batch). Returns each
    /// model's output and a record per block.
    pub fn run(&self, inputs: Vec<Act>) -> Result<(Vec<Act>, Vec<BlockRecord>)> {
        self.run_observed(inputs, |_| {})
    }

    /// [`Executor::run`], telling `observe` what happens as it happens (on the thread running the blocks: a
    /// worker of the current rayon pool).
    pub fn run_observed(
        &self,
        inputs: Vec<Act>,
        observe: impl FnMut(Event) + Send,
    ) -> Result<(Vec<Act>, Vec<BlockRecord>)> {
        self.run_until(inputs, &|| false, observe)
    }

    /// [`Executor::run_observed`], asking `stop` before each block and ending the run with
    /// [`Error::Interrupted`] once it says yes: how a caller that cannot take a signal itself (a Python
    /// call with the interpreter's lock released) ends a long run within one block.
    pub fn run_until(
        &self,
        inputs: Vec<Act>,
        stop: &(dyn Fn() -> bool + Sync),
        mut observe: impl FnMut(Event) + Send,
    ) -> Result<(Vec<Act>, Vec<BlockRecord>)> {
        assert_eq!(inputs.len(), self.models.len(), "one input per model");
        for m in self.models {
            m.store.check_unchanged()?;
        }
        let prefetcher = Prefetcher::new(self, Instant::now());
        let mut acts: Vec<Option<Act>> = inputs.into_iter().map(Some).collect();
        let mut records = Vec::with_capacity(self.steps.len());

        // The blocks run on a worker of the current rayon pool, so their parallel ops fork and join inside
        // it; from a thread outside the pool every op is injected into it and the caller sleeps until the op
        // ends (about 5% of a warm ensemble's time, measured). rayon::scope runs this closure on a worker.
        rayon::scope(|_| {
            std::thread::scope(|scope| -> Result<()> {
                let (tx, rx) = mpsc::channel();
                let prefetcher = &prefetcher;
                scope.spawn(move || prefetcher.serve(rx));
                // Dropped when this closure returns, which ends the prefetch thread, also on an error.
                let mut ahead = Lookahead {
                    tx,
                    requested: 0,
                    hinted: 0,
                };
                for i in 0..self.steps.len() {
                    if stop() {
                        return Err(Error::Interrupted);
                    }
                    prefetcher.request_ahead(&mut ahead, i, &mut observe);
                    records.push(self.step(i, prefetcher, &mut acts, &mut observe)?);
                }
                Ok(())
            })
        })?;
        let outputs = acts
            .into_iter()
            .map(|a| a.expect("every model ran"))
            .collect();
        Ok((outputs, records))
    }

    /// Runs step `i` on the compute thread: waits for its pages, runs its block over the whole batch,
    /// releases the pages, and returns the block's record.
    fn step(
        &self,
        i: usize,
        prefetcher: &Prefetcher,
        acts: &mut [Option<Act>],
        observe: &mut impl FnMut(Event),
    ) -> Result<BlockRecord> {
        let step = &self.steps[i];
        let model = &self.models[step.model];
        let block = &model.blocks[step.block];
        let begin = prefetcher.start.elapsed();
        observe(Event::BlockStart {
            step: i,
            model: &model.name,
            block: block.name(),
            at: begin,
        });
        let wait_start = Instant::now();
        let (prefetched, refused) = prefetcher.wait(i);
        let wait = wait_start.elapsed();
        observe(Event::PrefetchDone {
            step: i,
            at: prefetched.at,
        });
        if let Some(w) = refused {
            self.warn(&w, observe);
        }

        let (faults, read) = (Faults::thread(), self.storage_read());
        let compute_start = Instant::now();
        weight::take_scratch();
        let x = acts[step.model]
            .take()
            .expect("activation of a running model");
        acts[step.model] = Some(block.forward_int8(&model.store, x, model.int8_activations)?);
        let compute = compute_start.elapsed();
        // A file written while the block read it gave it other weights (a same-size overwrite in place
        // gives NaN answers, not a fault): its times changed before its bytes did, so checking after the
        // read catches it. A stat per file of the block: microseconds against milliseconds of compute.
        for (k, r) in step.ranges.iter().enumerate() {
            if k == 0 || step.ranges[k - 1].file != r.file {
                self.file(step.model, r.file).check_unchanged()?;
            }
        }
        let scratch_bytes = weight::take_scratch() as u64;
        let compute_faults = Faults::thread().since(faults);
        let compute_read = read_since(read, self.storage_read());
        let released = self.release(i)?;
        if step.block + 1 == model.blocks.len() && step.model + 1 < self.models.len() {
            process::trim_freed_heap();
        }
        let record = BlockRecord {
            model: model.name.clone(),
            block: block.name().to_string(),
            batch: 0,
            first_input: 0,
            inputs: acts[step.model].as_ref().map_or(0, |a| a.shape[0]),
            weight_bytes: step.bytes,
            resident_before: prefetched.resident_before,
            compute_faults,
            prefetch_faults: prefetched.faults,
            storage_read: prefetched
                .storage_read
                .zip(compute_read)
                .map(|(a, b)| a + b),
            wait,
            compute,
            start: begin,
            end: prefetcher.start.elapsed(),
            mem_after: if self.opts.readings {
                MemReading::now()
            } else {
                MemReading::default()
            },
            released,
            scratch_bytes,
        };
        observe(Event::BlockEnd(&record));
        Ok(record)
    }

    /// Reports `w` if this executor has not reported a warning yet.
    fn warn(&self, w: &Warning, observe: &mut impl FnMut(Event)) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            observe(Event::Warning(w));
        }
    }

    fn file(&self, model: usize, file: usize) -> &MappedFile {
        &self.models[model].store.files()[file]
    }

    /// The calling thread's bytes read from storage so far, when the run takes readings.
    fn storage_read(&self) -> Option<u64> {
        self.opts
            .readings
            .then(process::thread_storage_read_bytes)
            .flatten()
    }

    fn release(&self, i: usize) -> Result<Released> {
        let s = &self.steps[i];
        let mut total = Released::default();
        for r in &s.ranges {
            let f = self.file(s.model, r.file);
            let drop_cache = (self.opts.evict == Evict::Cache).then(|| f.file());
            let rel = residency::release(f.bytes(), r.range.clone(), drop_cache)
                .map_err(|e| Error::io(&f.path, e))?;
            total.unmapped += rel.unmapped;
            total.dropped_from_cache += rel.dropped_from_cache;
        }
        Ok(total)
    }
}

/// The prefetch thread's state, which the compute thread reads: it pages in the steps the compute thread
/// requests, in order, and the compute thread waits on it for each step's pages.
struct Prefetcher<'e> {
    exec: &'e Executor<'e>,
    /// When the run began: events and records are timed from here.
    start: Instant,
    progress: Mutex<Progress>,
    /// Signalled each time a step is paged in.
    paged: Condvar,
}

/// What the prefetch thread has done so far.
struct Progress {
    /// Steps paged in (a prefix of the schedule).
    done: usize,
    /// What each step cost the prefetch thread.
    cost: Vec<Prefetched>,
    /// A read-ahead refusal the compute thread has not seen yet.
    refused: Option<Warning>,
}

/// What the compute thread asks of the prefetch thread, done in the order asked.
enum Job {
    /// Map a step's pages in.
    Page(usize),
    /// Read a step's pages into the page cache without mapping them (it did not fit the budget).
    Hint(usize),
}

/// The compute thread's side of the prefetch schedule.
struct Lookahead {
    /// Requests to the prefetch thread.
    tx: Sender<Job>,
    /// Steps requested so far.
    requested: usize,
    /// The furthest step announced to the kernel without being requested (it did not fit the budget).
    hinted: usize,
}

impl<'e> Prefetcher<'e> {
    fn new(exec: &'e Executor<'e>, start: Instant) -> Self {
        Prefetcher {
            exec,
            start,
            progress: Mutex::new(Progress {
                done: 0,
                cost: vec![Prefetched::default(); exec.steps.len()],
                refused: None,
            }),
            paged: Condvar::new(),
        }
    }

    /// The prefetch thread: maps in each requested step's pages (populate), so the page faults land here
    /// and not on the compute thread, and reads hinted steps into the page cache. No WILLNEED before the
    /// populate: it would read 4 KiB folios, where populate on the HUGEPAGE mapping reads 2 MiB ones and
    /// reads ahead of itself. Also takes each step's page-cache reading (mincore) when it first gets to
    /// the step, off the compute thread.
    fn serve(&self, requests: Receiver<Job>) {
        let mut first_resident = vec![None; self.exec.steps.len()];
        let readings = self.exec.opts.readings;
        for job in requests {
            let i = match job {
                Job::Hint(j) => {
                    first_resident[j] = readings.then(|| self.resident(j));
                    if let Some(w) = self.hint(j) {
                        lock(&self.progress).refused.get_or_insert(w);
                    }
                    continue;
                }
                Job::Page(i) => i,
            };
            let resident_before = match first_resident[i].take() {
                Some(r) => r,
                None if readings => self.resident(i),
                None => 0,
            };
            let (faults, read) = (Faults::thread(), self.exec.storage_read());
            let s = &self.exec.steps[i];
            for r in &s.ranges {
                residency::populate(self.exec.file(s.model, r.file).bytes(), r.range.clone());
            }
            let done = Prefetched {
                resident_before,
                faults: Faults::thread().since(faults),
                storage_read: read_since(read, self.exec.storage_read()),
                at: self.start.elapsed(),
            };
            let mut p = lock(&self.progress);
            p.cost[i] = done;
            p.done = i + 1;
            self.paged.notify_all();
        }
    }

    /// On the compute thread, before step `i` runs: requests step `i` and every step after it that fits the
    /// look-ahead and the budget. When the next step does not fit, has the prefetch thread read it into the
    /// page cache (which the budget does not count) without mapping it in.
    fn request_ahead(&self, ahead: &mut Lookahead, i: usize, observe: &mut impl FnMut(Event)) {
        let n = self.exec.steps.len();
        while ahead.requested < n && (ahead.requested == i || self.may_prefetch(i, ahead.requested))
        {
            let j = ahead.requested;
            // The receiver lives until the compute thread is done.
            let _ = ahead.tx.send(Job::Page(j));
            observe(Event::PrefetchIssued {
                step: j,
                at: self.start.elapsed(),
            });
            ahead.requested += 1;
        }
        if ahead.requested == i + 1 && ahead.requested < n && ahead.hinted < ahead.requested {
            let _ = ahead.tx.send(Job::Hint(ahead.requested));
            ahead.hinted = ahead.requested;
        }
    }

    /// Blocks until step `i` is paged in; returns what it cost the prefetch thread and a read-ahead refusal
    /// not yet reported.
    fn wait(&self, i: usize) -> (Prefetched, Option<Warning>) {
        let mut p = lock(&self.progress);
        while p.done <= i {
            p = self.paged.wait(p).unwrap_or_else(PoisonError::into_inner);
        }
        (p.cost[i], p.refused.take())
    }

    /// Whether step `j` may be prefetched while step `i` computes: within the look-ahead and the budget.
    fn may_prefetch(&self, i: usize, j: usize) -> bool {
        j - i <= self.exec.opts.lookahead
            && self.exec.steps[i..=j].iter().map(|s| s.bytes).sum::<u64>() <= self.exec.budget
    }

    /// Reads step `i` into the page cache without leaving it mapped; returns the first refusal.
    fn hint(&self, i: usize) -> Option<Warning> {
        let s = &self.exec.steps[i];
        let mut refused = None;
        for r in &s.ranges {
            let f = self.exec.file(s.model, r.file);
            if let Err(w) = read_ahead(f.bytes(), r.range.clone(), &f.path) {
                refused.get_or_insert(w);
            }
        }
        refused
    }

    /// Bytes of step `i` in the page cache (mincore; 0 where it cannot tell).
    fn resident(&self, i: usize) -> u64 {
        let s = &self.exec.steps[i];
        s.ranges
            .iter()
            .map(|r| {
                residency::resident_bytes(self.exec.file(s.model, r.file).bytes(), r.range.clone())
                    .unwrap_or(0)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_budget_is_two_blocks_capped_never_below_one() {
        const MIB: u64 = 1 << 20;
        assert_eq!(
            default_budget(28 * MIB),
            56 * MIB,
            "int8 Swin-L: two blocks"
        );
        assert_eq!(
            default_budget(113 * MIB),
            DEFAULT_BUDGET_CAP,
            "f32 Swin-L: the cap"
        );
        assert_eq!(
            default_budget(200 * MIB),
            200 * MIB,
            "a block over the cap still fits"
        );
    }

    #[test]
    fn a_refused_read_ahead_is_reported_once_per_executor() {
        // madvise refuses an address that is not on a page boundary (EINVAL): the one refusal a test can
        // cause at will, since POPULATE_READ on a mapped file range succeeds. It reads and changes nothing.
        let page = residency::page_size();
        let buf = vec![0u8; 3 * page];
        let w = read_ahead(&buf[1..], 0..2 * page, Path::new("w.safetensors")).unwrap_err();
        assert!(
            matches!(&w, Warning::ReadAheadRefused { path, error }
                if path == Path::new("w.safetensors") && error.raw_os_error() == Some(libc::EINVAL)),
            "{w:?}"
        );
        assert!(
            w.to_string().starts_with(
                "w.safetensors: the kernel refused to read weights ahead (madvise POPULATE_READ): Invalid argument"
            ),
            "{w}"
        );

        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vit_tiny");
        let models = [Model::load(dir).unwrap()];
        let exec = Executor::new(&models, ExecOptions::default()).unwrap();
        let mut seen = Vec::new();
        let mut observe = |e: Event| {
            if let Event::Warning(w) = e {
                seen.push(w.to_string());
            }
        };
        exec.warn(&w, &mut observe);
        exec.warn(&w, &mut observe);
        assert_eq!(seen, [w.to_string()], "reported once");
    }
}
