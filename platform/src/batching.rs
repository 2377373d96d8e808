//! Many callers' small statements as one: a caller's request goes out at once while a slot is
//! free, and the requests that arrive while every slot is busy wait together and go out as one
//! batch. Nothing is added when the service is quiet, and a burst needs a few statements (each
//! waiting for one pooled connection) instead of one per caller.
//!
//! Written here rather than taken from a dataloader crate: those gather a batch by waiting (a
//! fixed delay or a number of yields) before every load, which adds to the quiet case, and some
//! run the load inside the first caller's future, so a caller that goes away cancels everyone's.
//! Here a task owns each batch: a caller that gives up takes no one else's answer with it.
//!
//! The queue is shared, so each request names whose it is (a user, an aggregate): at most
//! `per_key` of one key's requests are in the queue or a batch at once, and the rest wait at
//! their key's gate, holding nothing shared. One caller's flood fills its own gate, not the
//! queue every other caller needs, and is refused (503) when its wait runs out.
//!
//! Requests whose answer is the same for everyone who asks it (reads) can share a place:
//! [`JoiningBatcher`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::problem::Problem;

mod joining;
pub use joining::JoiningBatcher;

/// How much a batcher may hold and run.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Batches running at once (each usually holds one pooled connection).
    pub in_flight: usize,
    /// Requests in one batch at most.
    pub max_batch: usize,
    /// Requests waiting for a batch at most.
    pub queue: usize,
    /// Requests of one key in the queue or a batch at once. At `queue` or more, no key is
    /// gated and the batcher keeps no gates: for a batcher that serves one tenant only, whose
    /// own queue is its bound (a gate cache costs tens of KB, too much to keep per tenant).
    pub per_key: usize,
    /// How long a request waits for its key's turn and room in the queue before it is refused.
    pub queue_wait: Duration,
}

/// Keys whose gates are kept (the least recently used go first; an idle one after a minute).
const GATES: u64 = 100_000;

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum BatchError {
    #[error("too many requests are waiting for the database")]
    Busy,
    #[error("the batching task stopped")]
    Stopped,
}

/// Sends requests `W` to a batch function and hands each caller its answer `A`.
pub struct Batcher<W, A> {
    queue: mpsc::Sender<(W, oneshot::Sender<A>)>,
    gates: Option<moka::future::Cache<String, Arc<Semaphore>>>,
    limits: BatchLimits,
}

impl<W, A> Clone for Batcher<W, A> {
    fn clone(&self) -> Self {
        Self { queue: self.queue.clone(), gates: self.gates.clone(), limits: self.limits }
    }
}

impl<W: Send + 'static, A: Send + 'static> Batcher<W, A> {
    /// Start the batching task. `run` gets a batch of requests and must answer each, in the
    /// same order. The task ends when the last handle is dropped.
    pub fn start<F, Fut>(limits: BatchLimits, run: F) -> Self
    where
        F: Fn(Vec<W>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<A>> + Send + 'static,
    {
        let (queue, requests) = mpsc::channel(limits.queue.max(1));
        tokio::spawn(gather(limits, requests, run));
        let gates = (limits.per_key < limits.queue).then(|| {
            moka::future::Cache::builder()
                .max_capacity(GATES)
                .time_to_idle(Duration::from_secs(60))
                .build()
        });
        Self { queue, gates, limits }
    }

    /// `want`'s answer, from the next batch; `key` says whose it is (see the module doc).
    pub async fn ask(&self, key: &str, want: W) -> Result<A, BatchError> {
        let per_key = self.limits.per_key.max(1);
        let (reply, answer) = oneshot::channel();
        let queued = async {
            let turn = match &self.gates {
                Some(gates) => {
                    let gate =
                        gates.get_with_by_ref(key, async { Arc::new(Semaphore::new(per_key)) });
                    Some(gate.await.acquire_owned().await.map_err(|_| BatchError::Stopped)?)
                }
                None => None,
            };
            self.queue.send((want, reply)).await.map_err(|_| BatchError::Stopped)?;
            Ok(turn)
        };
        let _turn = match tokio::time::timeout(self.limits.queue_wait, queued).await {
            Ok(turn) => turn?,
            Err(_) => return Err(BatchError::Busy),
        };
        answer.await.map_err(|_| BatchError::Stopped)
    }
}

/// Runs one statement for a batch of requests that lock rows or keys, and answers each in the
/// order given. `run` gets the requests sorted by `key` (a stable sort: one key's in the order
/// asked), so batches running at once, on any instance, take their keys' locks in one order and
/// cannot deadlock; it must answer each sorted request, in that order.
pub async fn in_key_order<'w, W, T, Fut>(
    wants: &'w [W],
    key: impl Fn(&W) -> &str,
    run: impl FnOnce(Vec<&'w W>) -> Fut,
) -> Vec<Result<T, Problem>>
where
    Fut: Future<Output = Result<Vec<T>, Problem>>,
{
    let mut order: Vec<usize> = (0..wants.len()).collect();
    order.sort_by(|a, b| key(&wants[*a]).cmp(key(&wants[*b])));
    match run(order.iter().map(|i| &wants[*i]).collect()).await {
        Ok(answers) if answers.len() == wants.len() => {
            let mut placed: Vec<Option<T>> = wants.iter().map(|_| None).collect();
            for (answer, i) in answers.into_iter().zip(order) {
                placed[i] = Some(answer);
            }
            placed.into_iter().map(|a| a.ok_or_else(unanswered)).collect()
        }
        Ok(_) => wants.iter().map(|_| Err(unanswered())).collect(),
        Err(e) => wants.iter().map(|_| Err(e.clone())).collect(),
    }
}

fn unanswered() -> Problem {
    Problem::internal(&"a batched request went unanswered")
}

/// Take the requests that came, one batch at a time per free slot. The slot is taken before the
/// batch is gathered, so while all are busy the queue fills into the next batch.
async fn gather<W, A, F, Fut>(
    limits: BatchLimits,
    mut requests: mpsc::Receiver<(W, oneshot::Sender<A>)>,
    run: F,
) where
    W: Send + 'static,
    A: Send + 'static,
    F: Fn(Vec<W>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<A>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.in_flight.max(1)));
    while let Some(first) = requests.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < limits.max_batch
            && let Ok(request) = requests.try_recv()
        {
            batch.push(request);
        }
        // Callers that went away while waiting are not asked for.
        batch.retain(|(_, reply)| !reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (wants, replies): (Vec<W>, Vec<oneshot::Sender<A>>) = batch.into_iter().unzip();
        let answers = run(wants);
        tokio::spawn(async move {
            for (reply, answer) in replies.into_iter().zip(answers.await) {
                // A caller that went away meanwhile needs no answer.
                let _ = reply.send(answer);
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(in_flight: usize) -> BatchLimits {
        BatchLimits {
            in_flight,
            max_batch: 100,
            queue: 1000,
            per_key: 1000,
            queue_wait: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn every_caller_gets_its_own_answer_and_waiting_callers_share_batches() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        // One slot: the callers who come while a batch runs wait together for the next.
        let batcher = Batcher::start(limits(1), move |wants: Vec<u32>| {
            seen.lock().unwrap().push(wants.len());
            async move { wants.into_iter().map(|w| w * 10).collect::<Vec<_>>() }
        });
        let answers = futures::future::join_all((0..50).map(|i| batcher.ask("k", i))).await;
        let answers: Vec<u32> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, (0..50).map(|i| i * 10).collect::<Vec<_>>());
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 50);
        assert!(sizes.len() < 50, "callers waiting for the slot were batched: {sizes:?}");
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_takes_no_one_elses_answer() {
        let batcher = Batcher::start(limits(1), |wants: Vec<u32>| async move {
            tokio::task::yield_now().await;
            wants
        });
        {
            let first = batcher.ask("k", 1);
            tokio::pin!(first);
            assert!(futures::poll!(first.as_mut()).is_pending(), "asked");
            // and gone before its answer
        }
        let (a, b) = tokio::join!(batcher.ask("k", 2), batcher.ask("k", 3));
        assert_eq!((a.unwrap(), b.unwrap()), (2, 3));
    }

    #[tokio::test]
    async fn one_keys_flood_waits_at_its_gate_not_in_front_of_another_key() {
        let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = batches.clone();
        let limits = BatchLimits { per_key: 2, ..limits(1) };
        let batcher = Batcher::start(limits, move |wants: Vec<&'static str>| {
            seen.lock().unwrap().push(wants.clone());
            async move { wants }
        });
        let flood = futures::future::join_all((0..50).map(|_| batcher.ask("flood", "flood")));
        let (flood, other) = tokio::join!(flood, batcher.ask("other", "other"));
        assert!(flood.iter().all(|a| matches!(a, Ok("flood"))));
        assert_eq!(other.unwrap(), "other");
        let batches = batches.lock().unwrap();
        let first = &batches[0];
        assert!(first.contains(&"other"), "the other key rode in the first batch: {first:?}");
        assert!(first.iter().filter(|w| **w == "flood").count() <= 2, "{first:?}");
    }

    #[tokio::test]
    async fn a_batcher_for_one_tenant_keeps_no_gates_and_answers_alike() {
        let one_tenant = BatchLimits { per_key: usize::MAX, ..limits(1) };
        let batcher = Batcher::start(one_tenant, |wants: Vec<u32>| async move { wants });
        assert!(batcher.gates.is_none(), "no gate cache to keep per tenant");
        let answers = futures::future::join_all((0..20).map(|i| batcher.ask("k", i))).await;
        let answers: Vec<u32> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, (0..20).collect::<Vec<_>>());
        let gated = BatchLimits { per_key: 2, ..limits(1) };
        assert!(Batcher::start(gated, |w: Vec<u32>| async move { w }).gates.is_some());
    }

    #[tokio::test]
    async fn a_batch_runs_in_key_order_and_answers_in_the_order_asked() {
        let wants = [("b", 1), ("a", 2), ("b", 3), ("a", 4)];
        let answers = in_key_order(
            &wants,
            |w| w.0,
            |sorted| async move {
                let seen: Vec<i32> = sorted.iter().map(|w| w.1).collect();
                assert_eq!(seen, [2, 4, 1, 3], "by key, each key's in the order asked");
                Ok(sorted.iter().map(|w| w.1 * 10).collect())
            },
        )
        .await;
        let answers: Vec<i32> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, [10, 20, 30, 40]);

        let short = in_key_order(&wants, |w| w.0, |_| async { Ok(vec![1]) }).await;
        assert!(short.iter().all(Result::is_err), "a missing answer fails every request");
        let failed = in_key_order::<_, i32, _>(
            &wants,
            |w| w.0,
            |_| async { Err(Problem::unavailable("down")) },
        )
        .await;
        assert!(failed.iter().all(Result::is_err), "a failed statement fails every request");
    }
}
