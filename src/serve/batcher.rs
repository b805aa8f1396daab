//! The batcher: one OS thread that owns the model runs. It takes the first queued request, gathers more
//! for at most the batch window (or up to the batch limit), drops those whose client has gone, and runs the
//! rest as one layer-major batch, so each block's weights are paged in once for all of them. The compute
//! itself runs on rayon's pool inside the pipeline; tokio only does the I/O.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::exec::BlockRecord;
use crate::pipeline::{round_ms, Answer, Item};

use super::metrics::Metrics;

/// One queued classify request.
pub(crate) struct Job {
    pub item: Item,
    pub queued: Instant,
    pub reply: oneshot::Sender<Outcome>,
}

/// An answered request: the pipeline's answer, how long it queued and the size of its batch.
pub(crate) struct Done {
    pub answer: Answer,
    pub queue_ms: f64,
    pub batch_size: usize,
}

/// Why a request got no answer.
#[derive(Debug, PartialEq)]
pub(crate) enum Failure {
    /// The input itself is bad (400).
    Input(String),
    /// The run failed (a weights file changed, a panic): 500.
    Run(String),
}

pub(crate) type Outcome = Result<Done, Failure>;

/// What a batch of inputs gives: per input its answer or its own error, or an error of the whole run;
/// and the executor's block records. [`crate::pipeline::Pipeline::run_batch`]'s shape.
pub(crate) type BatchResult = crate::Result<(Vec<crate::Result<Answer>>, Vec<BlockRecord>)>;

pub(crate) struct Limits {
    pub max_batch: usize,
    pub window: Duration,
    /// Requests received and being decoded, not queued yet (the handlers count them).
    pub decoding: Arc<AtomicUsize>,
}

/// How long past its window a batch still waits for requests being decoded. Clients answered by one batch
/// send their next requests together, and decoding them takes longer than a few milliseconds' window: without
/// this the next batch would start with the first of them and leave the rest for the batch after.
const DECODE_WAIT: Duration = Duration::from_millis(200);

/// Runs batches until every sender of `rx` is gone. `depth` counts jobs waiting for their batch to start
/// (the handlers add, this takes away); `run` runs one batch.
pub(crate) fn run(
    rx: Receiver<Job>,
    limits: Limits,
    depth: &AtomicUsize,
    metrics: &Metrics,
    run: impl Fn(&[Item]) -> BatchResult,
) {
    let take = |job: Job, batch: &mut Vec<Job>| batch.push(job);
    while let Ok(first) = rx.recv() {
        // Requests that queued while the previous batch ran are taken at once (their window is over);
        // a lone request waits at most the window for company.
        let deadline = first.queued + limits.window;
        let mut batch = Vec::with_capacity(limits.max_batch);
        take(first, &mut batch);
        while batch.len() < limits.max_batch {
            match rx.try_recv() {
                Ok(job) => take(job, &mut batch),
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let now = Instant::now();
                    let until = if limits.decoding.load(Ordering::Acquire) > 0 {
                        deadline + DECODE_WAIT
                    } else {
                        deadline
                    };
                    if now >= until {
                        break;
                    }
                    // Past the window, look again every millisecond: a decode may end without a job.
                    let wait = if now < deadline {
                        deadline - now
                    } else {
                        (until - now).min(Duration::from_millis(1))
                    };
                    match rx.recv_timeout(wait) {
                        Ok(job) => take(job, &mut batch),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            }
        }
        // Gathered requests stay queued (and count against the queue's bound) until their batch starts.
        depth.fetch_sub(batch.len(), Ordering::Relaxed);
        let before = batch.len();
        batch.retain(|job| !job.reply.is_closed());
        metrics.dropped(before - batch.len());
        if batch.is_empty() {
            continue;
        }
        let start = Instant::now();
        metrics.batch(
            &batch
                .iter()
                .map(|j| start.duration_since(j.queued))
                .collect::<Vec<_>>(),
        );
        let (items, replies): (Vec<Item>, Vec<_>) = batch
            .into_iter()
            .map(|j| (j.item, (j.reply, start.duration_since(j.queued))))
            .unzip();
        let outcomes = match guarded(&run, &items, metrics) {
            Ok(answers) => answers,
            // Run alone, each request fails only for what is its own (an input whose logits overflow
            // fails the whole run it is in).
            Err(_) if items.len() > 1 => items
                .chunks(1)
                .map(|one| match guarded(&run, one, metrics) {
                    Ok(mut a) => a.pop().expect("one answer for one input"),
                    Err(e) => Err(e),
                })
                .collect(),
            Err(e) => vec![Err(e)],
        };
        let batch_size = items.len();
        drop(items);
        for (outcome, (reply, waited)) in outcomes.into_iter().zip(replies) {
            let _ = reply.send(outcome.map(|answer| Done {
                answer,
                queue_ms: round_ms(waited.as_secs_f64() * 1e3),
                batch_size,
            }));
        }
    }
}

/// One run with its panics caught: the answers (or per-input failures), or why the run failed as a whole.
/// Its block records go to `metrics`.
fn guarded(
    run: &impl Fn(&[Item]) -> BatchResult,
    items: &[Item],
    metrics: &Metrics,
) -> Result<Vec<Result<Answer, Failure>>, Failure> {
    match catch_unwind(AssertUnwindSafe(|| run(items))) {
        Ok(Ok((answers, records))) => {
            metrics.blocks(&records);
            Ok(answers
                .into_iter()
                .map(|a| a.map_err(|e| Failure::Input(e.to_string())))
                .collect())
        }
        Ok(Err(e)) => Err(Failure::Run(e.to_string())),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown cause".into());
            Err(Failure::Run(format!(
                "the batch failed (internal error: {what}); the server goes on"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{EnsembleAnswer, Source};
    use std::sync::mpsc::channel;

    fn item(name: &str) -> Item {
        Item {
            name: name.into(),
            source: Source::Tensor {
                chw: vec![0.0; 3],
                shape: [3, 1, 1],
            },
        }
    }

    fn answer(name: &str) -> Answer {
        Answer {
            input: name.into(),
            elapsed_ms: 0.0,
            models: vec![],
            ensemble: EnsembleAnswer { top: vec![] },
        }
    }

    /// Queues `names` at once, runs the batcher over them with `run`, returns each reply.
    fn serve(names: &[&str], run: impl Fn(&[Item]) -> BatchResult) -> Vec<Outcome> {
        let (tx, rx) = channel();
        let depth = AtomicUsize::new(names.len());
        let replies: Vec<_> = names
            .iter()
            .map(|n| {
                let (reply, answer) = oneshot::channel();
                let job = Job {
                    item: item(n),
                    queued: Instant::now(),
                    reply,
                };
                tx.send(job).unwrap();
                answer
            })
            .collect();
        drop(tx);
        let limits = Limits {
            max_batch: 8,
            window: Duration::ZERO,
            decoding: Default::default(),
        };
        run_batches(rx, limits, &depth, &Metrics::default(), run);
        assert_eq!(depth.load(Ordering::Relaxed), 0);
        replies
            .into_iter()
            .map(|r| r.blocking_recv().unwrap())
            .collect()
    }

    use super::run as run_batches;

    #[test]
    fn a_panic_fails_its_batch_and_the_batcher_goes_on() {
        let outcomes = serve(&["a", "boom"], |items| {
            if items.iter().any(|i| i.name == "boom") {
                panic!("kernel bug");
            }
            Ok((items.iter().map(|i| Ok(answer(&i.name))).collect(), vec![]))
        });
        // Run alone after the batch failed, "a" gets its answer; only "boom" fails, with the cause.
        let done = outcomes[0].as_ref().unwrap();
        assert_eq!((done.answer.input.as_str(), done.batch_size), ("a", 2));
        match &outcomes[1] {
            Err(Failure::Run(msg)) => assert!(msg.contains("kernel bug"), "{msg}"),
            _ => panic!("the panicking request should fail"),
        }
    }

    #[test]
    fn a_bad_input_fails_alone_and_the_others_batch() {
        let outcomes = serve(&["a", "bad", "c"], |items| {
            let answers = items
                .iter()
                .map(|i| {
                    if i.name == "bad" {
                        Err(crate::Error::Options("bad input".into()))
                    } else {
                        Ok(answer(&i.name))
                    }
                })
                .collect();
            Ok((answers, vec![]))
        });
        assert_eq!(outcomes[0].as_ref().unwrap().batch_size, 3);
        assert_eq!(
            outcomes[1].as_ref().err(),
            Some(&Failure::Input("bad input".into()))
        );
        assert_eq!(outcomes[2].as_ref().unwrap().answer.input, "c");
    }

    #[test]
    fn requests_whose_client_left_are_not_run() {
        let (tx, rx) = channel();
        let (reply, answer) = oneshot::channel();
        drop(answer);
        tx.send(Job {
            item: item("gone"),
            queued: Instant::now(),
            reply,
        })
        .unwrap();
        drop(tx);
        let metrics = Metrics::default();
        let limits = Limits {
            max_batch: 8,
            window: Duration::ZERO,
            decoding: Default::default(),
        };
        run_batches(rx, limits, &AtomicUsize::new(1), &metrics, |_| {
            panic!("nothing should run")
        });
        let text = metrics.render(&[], 0, true);
        assert!(
            text.contains("wstream_requests_dropped_total 1\n"),
            "{text}"
        );
        assert!(text.contains("wstream_batches_total 0\n"), "{text}");
    }

    /// A request still being decoded when the window closes joins the batch (within DECODE_WAIT).
    #[test]
    fn a_batch_waits_for_requests_being_decoded() {
        let (tx, rx) = channel();
        let decoding = Arc::new(AtomicUsize::new(1));
        let job = |name: &str| {
            let (reply, answer) = oneshot::channel();
            let job = Job {
                item: item(name),
                queued: Instant::now(),
                reply,
            };
            (job, answer)
        };
        let (first, a1) = job("first");
        tx.send(first).unwrap();
        let late = {
            let decoding = decoding.clone();
            let (second, a2) = job("decoded late");
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                tx.send(second).unwrap();
                decoding.fetch_sub(1, Ordering::AcqRel);
            });
            a2
        };
        let limits = Limits {
            max_batch: 8,
            window: Duration::ZERO,
            decoding,
        };
        let sizes = std::sync::Mutex::new(Vec::new());
        run_batches(
            rx,
            limits,
            &AtomicUsize::new(2),
            &Metrics::default(),
            |items| {
                sizes.lock().unwrap().push(items.len());
                Ok((items.iter().map(|i| Ok(answer(&i.name))).collect(), vec![]))
            },
        );
        assert_eq!(*sizes.lock().unwrap(), [2]);
        drop((a1, late));
    }
}
