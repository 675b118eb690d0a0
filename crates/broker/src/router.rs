//! The topic-filter index: a trie over topic levels.
//!
//! Public so that its cost can be benchmarked (`cargo bench -p
//! midge-broker`) and reused by embedders; the broker routes with it.
//!
//! A publish walks only the branches its topic can reach (its literal level,
//! `+`, and `#` at each depth), so matching costs grow with the topic's depth
//! and the number of matches, not with the number of subscriptions.

// TEMP (lints branch): the string slices in Levels::next are the router
// rewrite's to fix; this allowance is to be dropped at merge.
#![allow(clippy::string_slice)]

use std::collections::HashMap;

use midge_codec::SubscriptionOptions;

/// The hasher of the trie's levels. A publish hashes each of its topic's
/// levels; with the standard SipHash that was 5% of the broker's
/// instructions per message. foldhash is several times cheaper on short
/// keys and still seeded per map at random, so filters cannot be chosen to
/// collide ahead of time.
type Hasher = foldhash::quality::RandomState;

/// What a subscription asked for: its options and, in v5, its
/// Subscription Identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Grant {
    /// QoS, No Local, Retain As Published, Retain Handling.
    pub options: SubscriptionOptions,
    /// The v5 Subscription Identifier, if any.
    pub identifier: Option<u32>,
}

/// Subscriptions of type `T` (a subscriber handle) indexed by topic filter.
#[derive(Debug)]
pub struct TopicIndex<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug)]
struct Node<T> {
    /// Children by literal level.
    children: HashMap<Box<str>, Node<T>, Hasher>,
    /// The `+` child.
    plus: Option<Box<Node<T>>>,
    /// Filters ending here with `/#` (or `#` at the root): match this level
    /// and everything below it [MQTT-4.7.1-2].
    hash: Vec<(T, Grant)>,
    /// Filters ending exactly here.
    exact: Vec<(T, Grant)>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node { children: HashMap::default(), plus: None, hash: Vec::new(), exact: Vec::new() }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.plus.is_none() && self.hash.is_empty() && self.exact.is_empty()
    }
}

impl<T: PartialEq> Default for TopicIndex<T> {
    fn default() -> Self {
        TopicIndex { root: Node::default(), len: 0 }
    }
}

fn upsert<T: PartialEq>(list: &mut Vec<(T, Grant)>, key: T, options: Grant) -> bool {
    if let Some(entry) = list.iter_mut().find(|(k, _)| *k == key) {
        entry.1 = options;
        false
    } else {
        list.push((key, options));
        true
    }
}

impl<T: PartialEq> TopicIndex<T> {
    /// Number of (filter, subscriber) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if nothing is subscribed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `key`'s subscription to a *valid* `filter`, or replaces its
    /// options if it already has one [MQTT-3.8.4-3].
    pub fn insert(&mut self, filter: &str, key: T, options: Grant) {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" {
                if upsert(&mut node.hash, key, options) {
                    self.len += 1;
                }
                return;
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Default::default)
            } else {
                node.children.entry(level.into()).or_default()
            };
            if levels.peek().is_none() {
                if upsert(&mut node.exact, key, options) {
                    self.len += 1;
                }
                return;
            }
        }
    }

    /// Removes `key`'s subscription to `filter`; true if it existed.
    pub fn remove(&mut self, filter: &str, key: &T) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = Self::remove_at(&mut self.root, &levels, key);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node<T>, levels: &[&str], key: &T) -> bool {
        let Some((&level, rest)) = levels.split_first() else {
            return take(&mut node.exact, key);
        };
        if level == "#" {
            return take(&mut node.hash, key);
        }
        if level == "+" {
            let Some(child) = node.plus.as_deref_mut() else { return false };
            let removed = Self::remove_at(child, rest, key);
            if child.is_empty() {
                node.plus = None;
            }
            removed
        } else {
            let Some(child) = node.children.get_mut(level) else { return false };
            let removed = Self::remove_at(child, rest, key);
            if child.is_empty() {
                node.children.remove(level);
            }
            removed
        }
    }

    /// Calls `f` for every subscription matching the topic name `topic`.
    /// A subscriber with overlapping filters is reported once per filter;
    /// the caller merges them. Returns how many filters matched: when at
    /// most one did, no subscriber was reported twice and there is nothing
    /// to merge.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(&'a T, Grant)) -> usize {
        // Topics starting with '$' are not matched by a leading '+' or '#' [MQTT-4.7.2-1].
        let dollar = topic.starts_with('$');
        let root = &self.root;
        let mut filters = 0;
        if !dollar {
            Self::report(&root.hash, &mut filters, &mut f);
        }
        let mut rest = Levels(Some(topic));
        let first = rest.next().unwrap_or("");
        if let Some(child) = root.children.get(first) {
            Self::walk(child, rest.clone(), &mut filters, &mut f);
        }
        if !dollar && let Some(plus) = root.plus.as_deref() {
            Self::walk(plus, rest, &mut filters, &mut f);
        }
        filters
    }

    /// `node` has consumed one level; `rest` are the levels still to match.
    fn walk<'a>(node: &'a Node<T>, mut rest: Levels<'_>, filters: &mut usize, f: &mut impl FnMut(&'a T, Grant)) {
        Self::report(&node.hash, filters, f);
        let Some(level) = rest.next() else {
            Self::report(&node.exact, filters, f);
            return;
        };
        if let Some(child) = node.children.get(level) {
            Self::walk(child, rest.clone(), filters, f);
        }
        if let Some(plus) = node.plus.as_deref() {
            Self::walk(plus, rest, filters, f);
        }
    }

    /// The subscribers of one filter: each at most once (see `upsert`).
    fn report<'a>(subscribers: &'a [(T, Grant)], filters: &mut usize, f: &mut impl FnMut(&'a T, Grant)) {
        if subscribers.is_empty() {
            return;
        }
        *filters += 1;
        for (k, o) in subscribers {
            f(k, *o);
        }
    }
}

/// The levels of a topic name: `str::split('/')`, which goes through a
/// general character searcher that cost more than the hashing of the levels
/// on short topics.
#[derive(Clone)]
struct Levels<'a>(Option<&'a str>);

impl<'a> Iterator for Levels<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let topic = self.0?;
        match topic.bytes().position(|b| b == b'/') {
            Some(i) => {
                self.0 = Some(&topic[i + 1..]);
                Some(&topic[..i])
            }
            None => {
                self.0 = None;
                Some(topic)
            }
        }
    }
}

fn take<T: PartialEq>(list: &mut Vec<(T, Grant)>, key: &T) -> bool {
    match list.iter().position(|(k, _)| k == key) {
        Some(i) => {
            list.swap_remove(i);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use midge_codec::QoS;

    fn opts(qos: QoS) -> Grant {
        Grant { options: SubscriptionOptions { qos, ..Default::default() }, identifier: None }
    }

    fn matches(index: &TopicIndex<u32>, topic: &str) -> Vec<u32> {
        let mut out = Vec::new();
        index.for_each_match(topic, |k, _| out.push(*k));
        out.sort();
        out
    }

    fn index(filters: &[&str]) -> TopicIndex<u32> {
        let mut index = TopicIndex::default();
        for (i, f) in filters.iter().enumerate() {
            index.insert(f, i as u32, opts(QoS::AtMostOnce));
        }
        index
    }

    /// Topic levels split as `str::split('/')` does, empty levels included
    /// (section 4.7.1.1: `/finance` has an empty first level).
    #[test]
    fn levels_split_like_str_split() {
        for topic in ["", "/", "a", "a/b", "/finance", "a//b", "a/", "//", "é/ü/€"] {
            assert_eq!(Levels(Some(topic)).collect::<Vec<_>>(), topic.split('/').collect::<Vec<_>>(), "{topic:?}");
        }
    }

    /// [MQTT-4.7.1-2] `sport/tennis/player1/#` matches the parent level too.
    #[test]
    fn multi_level_wildcard_matches_parent_and_children() {
        let idx = index(&["sport/tennis/player1/#"]);
        assert_eq!(matches(&idx, "sport/tennis/player1"), vec![0]);
        assert_eq!(matches(&idx, "sport/tennis/player1/ranking"), vec![0]);
        assert_eq!(matches(&idx, "sport/tennis/player1/score/wimbledon"), vec![0]);
        assert!(matches(&idx, "sport/tennis/player2").is_empty());
    }

    /// [MQTT-4.7.1-3] `+` matches exactly one level, including an empty one.
    #[test]
    fn single_level_wildcard_matches_one_level() {
        let idx = index(&["sport/tennis/+", "sport/+", "+/+", "/+"]);
        assert_eq!(matches(&idx, "sport/tennis/player1"), vec![0]);
        assert!(!matches(&idx, "sport/tennis/player1/ranking").contains(&0));
        assert_eq!(matches(&idx, "sport/"), vec![1, 2]);
        assert!(!matches(&idx, "sport").contains(&1));
        assert_eq!(matches(&idx, "/finance"), vec![2, 3]);
    }

    /// [MQTT-4.7.2-1] `$` topics are not matched by a leading wildcard.
    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        let idx = index(&["#", "+/monitor/Clients", "$SYS/#", "$SYS/monitor/+"]);
        assert_eq!(matches(&idx, "$SYS/monitor/Clients"), vec![2, 3]);
        assert_eq!(matches(&idx, "a/monitor/Clients"), vec![0, 1]);
    }

    #[test]
    fn hash_alone_matches_everything_not_dollar() {
        let idx = index(&["#"]);
        assert_eq!(matches(&idx, "a"), vec![0]);
        assert_eq!(matches(&idx, "/"), vec![0]);
        assert_eq!(matches(&idx, "a/b/c"), vec![0]);
    }

    #[test]
    fn resubscribing_replaces_options_and_remove_prunes() {
        let mut idx = TopicIndex::default();
        idx.insert("a/+/c", 7u32, opts(QoS::AtMostOnce));
        idx.insert("a/+/c", 7u32, opts(QoS::ExactlyOnce));
        assert_eq!(idx.len(), 1);
        let mut seen = Vec::new();
        idx.for_each_match("a/b/c", |k, o| seen.push((*k, o.options.qos)));
        assert_eq!(seen, vec![(7, QoS::ExactlyOnce)]);
        assert!(idx.remove("a/+/c", &7));
        assert!(!idx.remove("a/+/c", &7));
        assert_eq!(idx.len(), 0);
        assert!(idx.root.is_empty());
    }

    #[test]
    fn overlapping_filters_report_each_match() {
        let idx = {
            let mut i = TopicIndex::default();
            i.insert("a/b", 1u32, opts(QoS::AtMostOnce));
            i.insert("a/#", 1u32, opts(QoS::AtLeastOnce));
            i.insert("a/+", 2u32, opts(QoS::AtMostOnce));
            i
        };
        assert_eq!(matches(&idx, "a/b"), vec![1, 1, 2]);
    }

    /// The count of matched filters tells the router when subscribers may
    /// repeat: never within one filter, however many share it.
    #[test]
    fn the_matched_filters_are_counted_so_one_filter_needs_no_merge() {
        let mut idx = TopicIndex::default();
        for k in 0..100u32 {
            idx.insert("x/y", k, opts(QoS::AtMostOnce));
        }
        let mut seen = Vec::new();
        assert_eq!(idx.for_each_match("x/y", |k, _| seen.push(*k)), 1);
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 100, "no subscriber twice within one filter");
        idx.insert("x/#", 5, opts(QoS::AtMostOnce));
        idx.insert("+/y", 6, opts(QoS::AtMostOnce));
        assert_eq!(idx.for_each_match("x/y", |_, _| {}), 3);
        assert_eq!(idx.for_each_match("x/z", |_, _| {}), 1);
        assert_eq!(idx.for_each_match("q", |_, _| {}), 0);
    }
}
