//! Requests whose answers can be shared: an identical request still waiting for its batch is
//! joined instead of queued again.
//!
//! Under a burst, every prompt of an organization reads that organization's newest events: the
//! same read, many times. Queued separately, they took one place each at the key's gate (so a
//! burst of 200 went out 32 at a time, batch after batch). Joined, they take one.
//!
//! A request only joins one whose batch has not been handed to the batch function yet, so its
//! answer is never older than the request: a read joined is a read that starts after the joiner
//! arrived (the batch function is called when its batch is formed, before anything runs).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared, WeakShared};

use super::{BatchError, BatchLimits, Batcher};

/// The one request behind every caller of it.
type Asked<A> = BoxFuture<'static, Result<A, BatchError>>;
type Answer<A> = Shared<Asked<A>>;

/// The requests not yet in a batch, each with its one answer; an entry is dropped when its
/// batch forms, when it ends, or when every caller waiting for it has gone.
struct Waiting<W, A> {
    next: u64,
    entries: HashMap<W, (u64, WeakShared<Asked<A>>)>,
}

/// A [`Batcher`] whose identical waiting requests share one place and one answer.
pub struct JoiningBatcher<W, A> {
    batcher: Batcher<W, A>,
    waiting: Arc<Mutex<Waiting<W, A>>>,
}

impl<W, A> Clone for JoiningBatcher<W, A> {
    fn clone(&self) -> Self {
        Self { batcher: self.batcher.clone(), waiting: self.waiting.clone() }
    }
}

impl<W, A> JoiningBatcher<W, A>
where
    W: Clone + Eq + Hash + Send + Sync + 'static,
    A: Clone + Send + Sync + 'static,
{
    /// As [`Batcher::start`]; a batch never holds two identical requests.
    pub fn start<F, Fut>(limits: BatchLimits, run: F) -> Self
    where
        F: Fn(Vec<W>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Vec<A>> + Send + 'static,
    {
        let waiting = Arc::new(Mutex::new(Waiting { next: 0, entries: HashMap::new() }));
        let formed = waiting.clone();
        let batcher = Batcher::start(limits, move |wants: Vec<W>| {
            // From here on these reads may run: later requests must not join them.
            let mut waiting = formed.lock().expect("not poisoned");
            for want in &wants {
                waiting.entries.remove(want);
            }
            drop(waiting);
            run(wants)
        });
        Self { batcher, waiting }
    }

    /// `want`'s answer: the answer of an identical request still waiting for its batch, or of
    /// the next batch; `key` says whose it is (the gate of [`Batcher::ask`]).
    pub async fn ask(&self, key: &str, want: W) -> Result<A, BatchError> {
        let answer = {
            let mut waiting = self.waiting.lock().expect("not poisoned");
            let joined = waiting.entries.get(&want).and_then(|(_, weak)| weak.upgrade());
            match joined {
                Some(answer) => answer,
                None => {
                    waiting.next += 1;
                    let id = waiting.next;
                    let answer = self.asked(key.to_owned(), want.clone(), id);
                    let weak = answer.downgrade().expect("not yet polled");
                    waiting.entries.insert(want, (id, weak));
                    answer
                }
            }
        };
        answer.await
    }

    /// The one request behind every caller of `want`, unlisted however it ends.
    fn asked(&self, key: String, want: W, id: u64) -> Answer<A> {
        let batcher = self.batcher.clone();
        let unlist = Unlist { waiting: self.waiting.clone(), want: want.clone(), id };
        async move {
            let _unlist = unlist;
            batcher.ask(&key, want).await
        }
        .boxed()
        .shared()
    }
}

/// Drops a request's entry when the request ends or is given up (unless a newer one took it).
struct Unlist<W: Eq + Hash, A> {
    waiting: Arc<Mutex<Waiting<W, A>>>,
    want: W,
    id: u64,
}

impl<W: Eq + Hash, A> Drop for Unlist<W, A> {
    fn drop(&mut self) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if waiting.entries.get(&self.want).is_some_and(|(id, _)| *id == self.id) {
            waiting.entries.remove(&self.want);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::{Notify, Semaphore};
    use tokio::task::JoinHandle;

    use super::*;

    /// A batcher (one slot, a gate of two per key) whose batch function answers each request
    /// with its batch's number, lets a batch end only once released, and tells when one begins.
    struct Held {
        batcher: JoiningBatcher<&'static str, usize>,
        batches: Arc<Mutex<Vec<Vec<&'static str>>>>,
        release: Arc<Semaphore>,
        started: Arc<Notify>,
    }

    impl Held {
        fn new() -> Self {
            let limits = BatchLimits {
                in_flight: 1,
                max_batch: 100,
                queue: 1000,
                per_key: 2,
                queue_wait: Duration::from_secs(5),
            };
            let batches = Arc::new(Mutex::new(Vec::new()));
            let (release, started) = (Arc::new(Semaphore::new(0)), Arc::new(Notify::new()));
            let (seen, gate, begun) = (batches.clone(), release.clone(), started.clone());
            let batcher = JoiningBatcher::start(limits, move |wants: Vec<&'static str>| {
                let number = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(wants.clone());
                    seen.len()
                };
                let (gate, begun) = (gate.clone(), begun.clone());
                async move {
                    begun.notify_one();
                    gate.acquire().await.unwrap().forget();
                    vec![number; wants.len()]
                }
            });
            Self { batcher, batches, release, started }
        }

        /// Ask `want` on a task of its own, and wait until its batch has begun.
        async fn running(&self, want: &'static str) -> JoinHandle<Result<usize, BatchError>> {
            let batcher = self.batcher.clone();
            let asked = tokio::spawn(async move { batcher.ask("org", want).await });
            self.started.notified().await;
            asked
        }

        fn finish_all(&self) {
            self.release.add_permits(100);
        }

        fn batches(&self) -> Vec<Vec<&'static str>> {
            self.batches.lock().unwrap().clone()
        }
    }

    #[tokio::test]
    async fn identical_requests_waiting_together_take_one_place_and_share_the_answer() {
        let held = Held::new();
        // The first batch holds the one slot; fifty identical requests wait meanwhile.
        let first = held.running("other").await;
        let waiting = futures::future::join_all((0..50).map(|_| held.batcher.ask("org", "read")));
        held.finish_all();
        let (first, answers) = tokio::join!(first, waiting);
        assert_eq!(first.unwrap().unwrap(), 1);
        assert!(answers.iter().all(|a| matches!(a, Ok(2))), "{answers:?}");
        assert_eq!(held.batches(), [vec!["other"], vec!["read"]], "one place past a gate of two");
    }

    #[tokio::test]
    async fn a_request_never_joins_a_batch_that_has_begun() {
        let held = Held::new();
        let early = held.running("read").await;
        // The same request, asked after the first one's batch began: its answer must be newer.
        let late = held.batcher.ask("org", "read");
        held.finish_all();
        assert_eq!(early.await.unwrap().unwrap(), 1);
        assert_eq!(late.await.unwrap(), 2);
        assert_eq!(held.batches().len(), 2);
    }

    #[tokio::test]
    async fn a_request_whose_callers_all_left_is_not_joined() {
        let held = Held::new();
        let first = held.running("other").await;
        {
            let gone = held.batcher.ask("org", "read");
            tokio::pin!(gone);
            assert!(futures::poll!(gone.as_mut()).is_pending(), "asked");
        }
        assert!(held.batcher.waiting.lock().unwrap().entries.is_empty(), "unlisted when given up");
        let again = held.batcher.ask("org", "read");
        held.finish_all();
        let (first, again) = tokio::join!(first, again);
        assert_eq!((first.unwrap().unwrap(), again.unwrap()), (1, 2));
        assert_eq!(held.batches(), [vec!["other"], vec!["read"]]);
    }
}
