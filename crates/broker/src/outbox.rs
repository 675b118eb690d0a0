//! A run of messages a connection published on one topic in one read,
//! routed once and queued per target session together: one match, and one
//! lock and at most one wake per session, for the whole run.
//!
//! A publisher's read under load carries tens of messages, most often on one
//! topic. Matching each and taking each subscriber's lock once per message
//! was most of routing; once per run, the lock's cache line also stops
//! bouncing between the publisher's and the subscriber's CPUs when they run
//! on two (docs/PERFORMANCE.md, "Queuing a read's messages together").
//!
//! The run's messages go to the sessions the first one matched. Those
//! routed after it in the same read are "buffered for delivery" as it is:
//! a subscriber that unsubscribes meanwhile may still get them, as MQTT
//! allows for messages buffered when an UNSUBSCRIBE comes (v5 section
//! 3.10.4).
//!
//! Order is kept: each session gets the run's messages in the order they
//! were published [MQTT-4.6.0-6]. The connection flushes the outbox before
//! anything that must come after its messages: a message on another topic
//! or for a share group, a packet other than PUBLISH, writing
//! acknowledgements; and when the run reaches [`LIMIT`] messages.

use std::sync::Arc;

use midge_codec::QoS;

use crate::session::{Delivery, Message, RunCopies, Session};

/// Messages a run holds before it is flushed anyway, so one read's burst
/// reaches the subscribers before the read is done.
pub(crate) const LIMIT: usize = 256;

/// Room for targets and messages an outbox keeps between runs; more is let
/// go when flushed.
const KEPT: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// The messages of the run, in order; all on one topic.
    messages: Vec<Arc<Message>>,
    /// The sessions the run's topic matched, each once.
    targets: Vec<Recipient>,
    /// What routing the first message returned: sessions matched.
    matched: usize,
}

/// A session the run goes to, with what its subscriptions ask of the copies.
#[derive(Debug)]
pub(crate) struct Recipient {
    pub(crate) session: Arc<Session>,
    /// The highest QoS granted among its matching subscriptions.
    pub(crate) qos: QoS,
    pub(crate) retain_as_published: bool,
    /// v5 Subscription Identifiers of its matching subscriptions, sorted.
    pub(crate) subscription_ids: Vec<u32>,
}

impl Outbox {
    pub(crate) fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Adds `message` to the run if it has the run's topic and room, and
    /// returns the sessions matched, as routing it would have; else gives
    /// it back.
    pub(crate) fn join(&mut self, message: Arc<Message>) -> Result<usize, Arc<Message>> {
        match self.messages.first() {
            Some(first) if first.topic == message.topic && self.messages.len() < LIMIT => {
                self.messages.push(message);
                Ok(self.matched)
            }
            _ => Err(message),
        }
    }

    /// Starts a run with `message`, routed to `targets`. The outbox must be
    /// empty.
    pub(crate) fn start(&mut self, message: Arc<Message>, targets: impl Iterator<Item = Recipient>, matched: usize) {
        debug_assert!(self.is_empty());
        self.messages.push(message);
        // Sized once: a run to many sessions after one to few grows no list
        // step by step.
        self.targets.reserve_exact(targets.size_hint().0);
        self.targets.extend(targets);
        self.matched = matched;
    }

    /// Empties the outbox: `deliver` gets each target session with its copies
    /// of the run's messages, in order. A run of several messages to
    /// several sessions is shared: each session that takes them at QoS 0
    /// gets one reference to the whole run instead of one per message.
    pub(crate) fn flush(&mut self, mut deliver: impl FnMut(&Arc<Session>, Batch<'_>)) {
        let run: Option<Arc<[Arc<Message>]>> =
            (self.messages.len() > 1 && self.targets.len() > 1).then(|| self.messages.drain(..).collect());
        let messages = run.as_deref().unwrap_or(&self.messages);
        for target in self.targets.drain(..) {
            let batch = match &run {
                Some(run) if target.qos == QoS::AtMostOnce => Batch::Run(RunCopies {
                    messages: run.clone(),
                    retain_as_published: target.retain_as_published,
                    subscription_ids: target.subscription_ids,
                }),
                _ => Batch::Each(Copies { target: &target, messages: messages.iter() }),
            };
            deliver(&target.session, batch);
        }
        self.messages.clear();
        // Every connection that publishes keeps an outbox: what one run to
        // a topic with 100,000 subscribers needed is not kept for the next.
        if self.targets.capacity() > KEPT {
            self.targets = Vec::new();
        }
        if self.messages.capacity() > KEPT {
            self.messages = Vec::new();
        }
    }
}

/// One session's share of a run.
pub(crate) enum Batch<'a> {
    /// A delivery per message.
    Each(Copies<'a>),
    /// QoS 0 copies of all of them, as one queue entry.
    Run(RunCopies),
}

/// One session's copies of the run's messages.
pub(crate) struct Copies<'a> {
    target: &'a Recipient,
    messages: std::slice::Iter<'a, Arc<Message>>,
}

impl Iterator for Copies<'_> {
    type Item = Delivery;

    fn next(&mut self) -> Option<Delivery> {
        let message = self.messages.next()?;
        let target = self.target;
        Some(Delivery::routed(message.clone(), target.qos, target.retain_as_published, target.subscription_ids.clone()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.messages.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use midge_codec::{MqttStr, ProtocolVersion, PublishProperties};

    fn session(id: &str) -> Arc<Session> {
        Arc::new(Session::new(id.into(), 0, 0, ProtocolVersion::V3_1_1))
    }

    fn message(topic: &str, n: u8, qos: QoS, retain: bool) -> Arc<Message> {
        let payload = Bytes::from(vec![n]);
        Arc::new(Message::new(MqttStr::from(topic), payload, qos, retain, PublishProperties::default()))
    }

    fn target(session: &Arc<Session>, qos: QoS, retain_as_published: bool, ids: Vec<u32>) -> Recipient {
        Recipient { session: session.clone(), qos, retain_as_published, subscription_ids: ids }
    }

    /// (client id, [(payload byte, QoS, RETAIN, subscription ids)]) per session.
    type Flushed = Vec<(String, Vec<(u8, QoS, bool, Vec<u32>)>)>;

    fn flushed(outbox: &mut Outbox) -> Flushed {
        flushed_with_runs(outbox).0
    }

    /// What [`flushed`] gives, and the sessions that got theirs as one run.
    fn flushed_with_runs(outbox: &mut Outbox) -> (Flushed, Vec<String>) {
        let (mut out, mut runs) = (Vec::new(), Vec::new());
        outbox.flush(|session, batch| {
            let got = match batch {
                Batch::Each(copies) => {
                    copies.map(|d| (d.message.payload[0], d.qos, d.retain, d.subscription_ids)).collect()
                }
                Batch::Run(run) => {
                    runs.push(session.client_id.to_string());
                    let copy =
                        |m: &Arc<Message>| (m.payload[0], QoS::AtMostOnce, run.retain(m), run.subscription_ids.clone());
                    run.messages().iter().map(copy).collect()
                }
            };
            out.push((session.client_id.to_string(), got));
        });
        (out, runs)
    }

    #[test]
    fn a_run_gives_each_target_its_copies_in_order_with_its_terms() {
        let (a, b) = (session("a"), session("b"));
        let mut outbox = Outbox::default();
        assert!(outbox.join(message("t", 0, QoS::AtMostOnce, false)).is_err(), "no run to join");
        let first = message("t", 1, QoS::AtLeastOnce, true);
        outbox.start(
            first.clone(),
            [target(&a, QoS::ExactlyOnce, false, vec![]), target(&b, QoS::AtMostOnce, true, vec![3, 9])].into_iter(),
            2,
        );
        assert_eq!(outbox.join(message("t", 2, QoS::ExactlyOnce, false)).ok(), Some(2));
        assert!(outbox.join(message("u", 3, QoS::AtMostOnce, false)).is_err(), "another topic");
        assert_eq!(Arc::strong_count(&first), 2);
        // [MQTT-4.6.0-6] order; [MQTT-3.8.4-6] QoS; [MQTT-3.3.1-9] and
        // [MQTT-3.3.1-13] RETAIN.
        let (got, runs) = flushed_with_runs(&mut outbox);
        assert_eq!(
            got,
            [
                ("a".into(), vec![(1, QoS::AtLeastOnce, false, vec![]), (2, QoS::ExactlyOnce, false, vec![])]),
                ("b".into(), vec![(1, QoS::AtMostOnce, true, vec![3, 9]), (2, QoS::AtMostOnce, false, vec![3, 9])]),
            ]
        );
        assert_eq!(runs, ["b"], "QoS 0 copies of several messages to several sessions go as one run");
        assert!(outbox.is_empty());
        assert_eq!(Arc::strong_count(&first), 1, "the outbox keeps nothing once flushed");
        // A new run after a flush knows nothing of the last one's targets.
        outbox.start(
            message("u", 4, QoS::AtMostOnce, false),
            [target(&b, QoS::AtMostOnce, false, vec![])].into_iter(),
            1,
        );
        assert_eq!(flushed(&mut outbox), [("b".into(), vec![(4, QoS::AtMostOnce, false, vec![])])]);
    }

    #[test]
    fn a_run_is_shared_only_when_several_messages_go_to_several_sessions() {
        let (a, b) = (session("a"), session("b"));
        let qos0 = |s: &Arc<Session>| target(s, QoS::AtMostOnce, false, vec![]);
        let mut outbox = Outbox::default();
        // One message to two sessions: a reference per copy costs the same.
        outbox.start(message("t", 1, QoS::AtMostOnce, false), [qos0(&a), qos0(&b)].into_iter(), 2);
        assert!(flushed_with_runs(&mut outbox).1.is_empty());
        // Two messages to one session: nobody to share the run with.
        outbox.start(message("t", 1, QoS::AtMostOnce, false), [qos0(&a)].into_iter(), 1);
        outbox.join(message("t", 2, QoS::AtMostOnce, false)).expect("joins");
        assert!(flushed_with_runs(&mut outbox).1.is_empty());
        // Two to two.
        let first = message("t", 1, QoS::AtMostOnce, false);
        outbox.start(first.clone(), [qos0(&a), qos0(&b)].into_iter(), 2);
        outbox.join(message("t", 2, QoS::AtMostOnce, false)).expect("joins");
        let mut held = Vec::new();
        outbox.flush(|_, batch| {
            if let Batch::Run(run) = batch {
                held.push(run);
            }
        });
        assert_eq!(held.len(), 2);
        assert_eq!(Arc::strong_count(&first), 2, "the run holds each message once, however many sessions get it");
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_run_to_many_sessions_leaves_no_large_lists_behind() {
        let sessions: Vec<Arc<Session>> = (0..KEPT + 1).map(|i| session(&i.to_string())).collect();
        let mut outbox = Outbox::default();
        let targets = sessions.iter().map(|s| target(s, QoS::AtMostOnce, false, vec![]));
        outbox.start(message("t", 0, QoS::AtMostOnce, false), targets, KEPT + 1);
        for _ in 0..KEPT {
            outbox.join(message("t", 0, QoS::AtMostOnce, false)).expect("joins");
        }
        assert_eq!(flushed(&mut outbox).len(), KEPT + 1);
        assert_eq!((outbox.targets.capacity(), outbox.messages.capacity()), (0, 0));
        // Small ones are kept for the next run.
        outbox.start(
            message("t", 0, QoS::AtMostOnce, false),
            std::iter::once(target(&sessions[0], QoS::AtMostOnce, false, vec![])),
            1,
        );
        flushed(&mut outbox);
        assert!(outbox.targets.capacity() >= 1 && outbox.messages.capacity() >= 1);
    }

    #[test]
    fn a_run_takes_at_most_its_limit() {
        let mut outbox = Outbox::default();
        outbox.start(message("t", 0, QoS::AtMostOnce, false), std::iter::empty(), 0);
        for _ in 1..LIMIT {
            assert_eq!(outbox.join(message("t", 0, QoS::AtMostOnce, false)).ok(), Some(0));
        }
        assert!(outbox.join(message("t", 0, QoS::AtMostOnce, false)).is_err());
        assert!(flushed(&mut outbox).is_empty());
        assert!(outbox.is_empty());
    }
}
