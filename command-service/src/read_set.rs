//! What a command decided from: the aggregates, and the sequence of each, that it read from this
//! instance's caches without asking the event store.
//!
//! A command decides from the states this instance holds first (its aggregate, or a new one if
//! the instance holds none, and the organization and workspace its directory questions are
//! about), and its commit (`EventRepository::commit_if_current`) checks, in the same statement,
//! that no aggregate of the set gained an event since: the decision stands only if everything
//! it was made from was still current when the events were written, which is what reading
//! first guaranteed, without the read. A stale set commits nothing, and the statement returns
//! the events each aggregate missed, so the retry decides from current states without reading
//! them again.
//!
//! One thing a decision does before its commit: a prompt takes its rates and holds what its
//! reply may cost (`crate::spend`). That is not done on a state not yet proven current
//! (`CheckedLedger`): a hold taken on a stale state, for a prompt then refused on the current
//! one, would stay until the sweep and count against everyone under the budget.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cqrs_es::persist::SerializedEvent;

use crate::error::DomainError;
use crate::event_repository::EventRepository;
use crate::spend::{Admission, SpendLedger};

/// One aggregate as a decision knew it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    /// The last event applied to the state decided from.
    pub sequence: usize,
}

/// The aggregates one decision read (shared by the directory answering it).
#[derive(Debug, Clone, Default)]
pub struct ReadSet(Arc<Mutex<Vec<Known>>>);

impl ReadSet {
    /// Note that `aggregate_id` was read as of `sequence`. Read twice at different sequences
    /// (the cache moved on in between), the older counts: the check must cover both reads.
    pub fn note(&self, aggregate_type: &'static str, aggregate_id: &str, sequence: usize) {
        let mut known = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let same =
            |k: &&mut Known| k.aggregate_type == aggregate_type && k.aggregate_id == aggregate_id;
        match known.iter_mut().find(same) {
            Some(k) => k.sequence = k.sequence.min(sequence),
            None => known.push(Known {
                aggregate_type,
                aggregate_id: aggregate_id.to_owned(),
                sequence,
            }),
        }
    }

    /// Everything noted so far.
    pub fn known(&self) -> Vec<Known> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// The spend ledger of a decision made from cache: it admits only once the states noted so far
/// prove current, and otherwise keeps what they missed for the executor (`take_missed`), which
/// brings them up to date and decides again.
pub struct CheckedLedger {
    inner: Arc<dyn SpendLedger>,
    reads: ReadSet,
    events: Arc<EventRepository>,
    missed: Mutex<Option<Vec<SerializedEvent>>>,
}

impl CheckedLedger {
    pub fn new(inner: Arc<dyn SpendLedger>, reads: ReadSet, events: Arc<EventRepository>) -> Self {
        Self { inner, reads, events, missed: Mutex::new(None) }
    }

    /// What the check before an admission found the noted states missed, if it found any.
    pub fn take_missed(&self) -> Option<Vec<SerializedEvent>> {
        self.missed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}

#[async_trait]
impl SpendLedger for CheckedLedger {
    async fn admit(&self, admission: &Admission<'_>) -> Result<(), DomainError> {
        let missed = self.events.newer_than(&self.reads.known()).await;
        let missed = missed.map_err(|e| DomainError::Unavailable(e.to_string()))?;
        if missed.is_empty() {
            return self.inner.admit(admission).await;
        }
        *self.missed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(missed);
        // (never answered: the executor decides again on the current states)
        Err(DomainError::Unavailable("decided on a state that has changed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aggregate_read_twice_is_checked_from_its_older_state() {
        let reads = ReadSet::default();
        reads.note("organization", "org_1", 7);
        reads.note("workspace", "ws_1", 3);
        reads.note("organization", "org_1", 9);
        reads.note("organization", "org_1", 5);
        let known = reads.known();
        assert_eq!(known.len(), 2);
        assert_eq!(known[0].sequence, 5);
        assert_eq!(
            known[1],
            Known { aggregate_type: "workspace", aggregate_id: "ws_1".into(), sequence: 3 }
        );
    }
}
