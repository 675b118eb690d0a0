//! The topic-filter index: a trie over topic levels.
//!
//! Public so that its cost can be benchmarked (`cargo bench -p
//! midge-broker`) and reused by embedders; the broker routes with it.
//!
//! A publish walks only the branches its topic can reach (its literal level,
//! `+`, and `#` at each depth), so matching costs grow with the topic's depth
//! and the number of matches, not with the number of subscriptions.
//!
//! The depth of the trie is the depth of the filters that peers subscribe
//! with, so nothing here recurses over it: insert, match, remove, pruning and
//! `Drop` all loop, with an explicit stack where a walk branches. A
//! 100,000-level filter costs heap, never stack.

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
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.plus.is_none() && self.hash.is_empty() && self.exact.is_empty()
    }

    /// The child reached by one level of a filter, if any.
    fn child(&self, level: &str) -> Option<&Node<T>> {
        if level == "+" { self.plus.as_deref() } else { self.children.get(level) }
    }

    /// Whether this node holds nothing but the one child a path goes on to:
    /// removing that child's subtree would leave it empty.
    fn holds_only_the_path(&self) -> bool {
        self.hash.is_empty() && self.exact.is_empty() && self.children.len() + usize::from(self.plus.is_some()) == 1
    }
}

/// Dropping the trie the derived way would recurse once per level (each
/// node's map drops its children, which drop theirs), and a deep filter's
/// chain would overflow the stack. Children are moved onto a heap stack
/// instead, so every node is dropped with no children left.
impl<T> Drop for Node<T> {
    fn drop(&mut self) {
        if self.children.is_empty() && self.plus.is_none() {
            return;
        }
        let mut stack: Vec<Node<T>> = Vec::new();
        let take = |node: &mut Node<T>, stack: &mut Vec<Node<T>>| {
            stack.extend(node.children.drain().map(|(_, child)| child));
            if let Some(plus) = node.plus.take() {
                stack.push(*plus);
            }
        };
        take(self, &mut stack);
        while let Some(mut node) = stack.pop() {
            take(&mut node, &mut stack);
            // `node` drops here, childless: its own `drop` returns at once.
        }
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

/// The levels of a filter that lead to the node holding its subscribers,
/// and whether it ends in `#` (whose subscribers sit in that node's `hash`).
/// `sport/#` leads to `sport`; `#` alone to the root.
fn path(filter: &str) -> (impl Iterator<Item = &str> + Clone, bool) {
    let (parent, multi) = match filter.strip_suffix("/#") {
        _ if filter == "#" => (None, true),
        Some(parent) => (Some(parent), true),
        None => (Some(filter), false),
    };
    (parent.map(|parent| parent.split('/')).into_iter().flatten(), multi)
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
        let (levels, multi) = path(filter);
        let mut node = &mut self.root;
        for level in levels {
            node = if level == "+" {
                node.plus.get_or_insert_with(Default::default)
            } else {
                node.children.entry(level.into()).or_default()
            };
        }
        let list = if multi { &mut node.hash } else { &mut node.exact };
        if upsert(list, key, options) {
            self.len += 1;
        }
    }

    /// Removes `key`'s subscription to `filter`; true if it existed. Nodes
    /// left holding nothing are pruned, so an unsubscribed filter costs no
    /// memory.
    pub fn remove(&mut self, filter: &str, key: &T) -> bool {
        let (levels, multi) = path(filter);
        // First pass, read-only: find the node, and the shallowest node of
        // the path below which nothing but this path's chain would remain,
        // the place to cut once the entry is gone.
        let mut node = &self.root;
        // (depth of the node to cut from, the level of the child to cut)
        let mut cut: Option<(usize, &str)> = None;
        for (depth, level) in levels.clone().enumerate() {
            let Some(child) = node.child(level) else { return false };
            // The root is never cut away.
            if depth == 0 || !node.holds_only_the_path() {
                cut = Some((depth, level));
            }
            node = child;
        }
        let list = if multi { &node.hash } else { &node.exact };
        if !list.iter().any(|(k, _)| k == key) {
            return false;
        }
        let leaf_empties = list.len() == 1 && {
            let other = if multi { &node.exact } else { &node.hash };
            other.is_empty() && node.children.is_empty() && node.plus.is_none()
        };

        // Second pass, mutable: remove the entry, or cut the whole chain that
        // held only it.
        self.len -= 1;
        let mut node = &mut self.root;
        for (depth, level) in levels.enumerate() {
            if leaf_empties
                && let Some((at, cut_level)) = cut
                && at == depth
            {
                if cut_level == "+" {
                    node.plus = None;
                } else {
                    node.children.remove(cut_level);
                }
                return true;
            }
            let next = if level == "+" { node.plus.as_deref_mut() } else { node.children.get_mut(level) };
            // The first pass walked this path.
            let Some(next) = next else { return true };
            node = next;
        }
        take(if multi { &mut node.hash } else { &mut node.exact }, key);
        true
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
            report(&root.hash, &mut filters, &mut f);
        }
        let mut rest = Levels(Some(topic));
        let first = rest.next().unwrap_or("");
        // The `+` branches not yet walked, each with the levels left after
        // it. A walk follows the literal chain in a loop and leaves every `+`
        // it passes here, so the stack holds one entry per `+` node on the
        // topic's path, on the heap past a few.
        let mut pending = Pending::default();
        if !dollar && let Some(plus) = root.plus.as_deref() {
            pending.push(plus, rest.clone());
        }
        let mut next = root.children.get(first).map(|child| (child, rest));
        while let Some((mut node, mut rest)) = next.take().or_else(|| pending.pop()) {
            // `node` has consumed one level; `rest` are the levels still to match.
            loop {
                report(&node.hash, &mut filters, &mut f);
                let Some(level) = rest.next() else {
                    report(&node.exact, &mut filters, &mut f);
                    break;
                };
                if let Some(plus) = node.plus.as_deref() {
                    pending.push(plus, rest.clone());
                }
                match node.children.get(level) {
                    Some(child) => node = child,
                    None => break,
                }
            }
        }
        filters
    }
}

/// The subscribers of one filter: each at most once (see `upsert`).
fn report<'a, T>(subscribers: &'a [(T, Grant)], filters: &mut usize, f: &mut impl FnMut(&'a T, Grant)) {
    if subscribers.is_empty() {
        return;
    }
    *filters += 1;
    for (k, o) in subscribers {
        f(k, *o);
    }
}

/// How many `+` branches a match keeps without allocating: a publish that
/// meets more `+` nodes along its topic than this spills to the heap.
const INLINE_PENDING: usize = 8;

/// The `+` branches a match has still to walk: a stack, inline for the
/// usual few, on the heap beyond.
struct Pending<'n, 't, T> {
    inline: [Option<(&'n Node<T>, Levels<'t>)>; INLINE_PENDING],
    len: usize,
    spill: Vec<(&'n Node<T>, Levels<'t>)>,
}

impl<T> Default for Pending<'_, '_, T> {
    fn default() -> Self {
        Pending { inline: Default::default(), len: 0, spill: Vec::new() }
    }
}

impl<'n, 't, T> Pending<'n, 't, T> {
    fn push(&mut self, node: &'n Node<T>, rest: Levels<'t>) {
        match self.inline.get_mut(self.len) {
            Some(slot) => {
                *slot = Some((node, rest));
                self.len += 1;
            }
            None => self.spill.push((node, rest)),
        }
    }

    fn pop(&mut self) -> Option<(&'n Node<T>, Levels<'t>)> {
        if let Some(entry) = self.spill.pop() {
            return Some(entry);
        }
        self.len = self.len.checked_sub(1)?;
        self.inline.get_mut(self.len).and_then(Option::take)
    }
}

/// The levels of a topic name: `str::split('/')`, which goes through a
/// general character searcher that cost more than the hashing of the levels
/// on short topics.
#[derive(Clone)]
struct Levels<'a>(Option<&'a str>);

/// The levels of a topic name or filter, empty ones included, as
/// `str::split('/')` gives them, only cheaper (see [`Levels`]); for the
/// other trees over topic levels.
pub(crate) fn levels(topic: &str) -> impl Iterator<Item = &str> + Clone {
    Levels(Some(topic))
}

impl<'a> Iterator for Levels<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let topic = self.0?;
        // A `/` is one byte, so both sides of it are character boundaries.
        match topic.bytes().position(|b| b == b'/').and_then(|i| Some((topic.get(..i)?, topic.get(i + 1..)?))) {
            Some((level, rest)) => {
                self.0 = Some(rest);
                Some(level)
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
    use crate::testing::{on_a_small_stack, xorshift};
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
    #[test]
    fn a_100000_level_filter_is_inserted_matched_removed_and_dropped_without_recursion() {
        on_a_small_stack(|| {
            let levels = 100_000;
            let deep_filter = vec!["+"; levels].join("/") + "/#";
            let deep_topic = vec!["a"; levels + 3].join("/");
            let literal = vec!["a"; levels].join("/");
            let mut idx = TopicIndex::default();
            idx.insert(&deep_filter, 1u32, opts(QoS::AtMostOnce));
            idx.insert(&literal, 2u32, opts(QoS::AtMostOnce));
            idx.insert(&(literal.clone() + "/#"), 3u32, opts(QoS::AtMostOnce));
            assert_eq!(matches(&idx, &deep_topic), vec![1, 3]);
            // `#` matches its parent level too [MQTT-4.7.1-2].
            assert_eq!(matches(&idx, &literal), vec![1, 2, 3]);
            assert!(idx.remove(&deep_filter, &1));
            assert!(idx.root.plus.is_none(), "the removed chain is pruned");
            assert_eq!(matches(&idx, &deep_topic), vec![3]);
            // Dropped with a deep literal chain still in it.
        });
    }

    #[test]
    fn removing_a_filter_prunes_only_what_held_nothing_else() {
        let mut idx = TopicIndex::default();
        idx.insert("a/b/c/d", 1u32, opts(QoS::AtMostOnce));
        idx.insert("a/b", 2u32, opts(QoS::AtMostOnce));
        idx.insert("a/b/x", 3u32, opts(QoS::AtMostOnce));
        idx.insert("a/+/c/#", 4u32, opts(QoS::AtMostOnce));
        assert!(idx.remove("a/b/c/d", &1));
        assert!(!idx.remove("a/b/c/d", &1));
        assert!(!idx.remove("a/b/c", &1), "a filter nobody subscribed to is not removed");
        assert_eq!(matches(&idx, "a/b"), vec![2]);
        assert_eq!(matches(&idx, "a/b/x"), vec![3]);
        assert_eq!(matches(&idx, "a/z/c/q"), vec![4]);
        let b = idx.root.children.get("a").and_then(|a| a.children.get("b")).unwrap();
        assert!(!b.children.contains_key("c"), "c held only d's chain");
        assert!(idx.remove("a/+/c/#", &4));
        assert!(idx.remove("a/b", &2));
        assert!(idx.remove("a/b/x", &3));
        assert!(idx.root.is_empty());
        assert_eq!(idx.len(), 0);
    }

    /// The index agrees with the codec's one-filter `matches` on random
    /// filters and topics over a small alphabet, and removing every filter
    /// leaves an empty root: matching and pruning by a second, independent
    /// definition.
    #[test]
    fn the_index_matches_what_topic_matching_says_and_prunes_to_nothing() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
        let words = ["a", "b", "", "$x"];
        for _round in 0..200 {
            let mut idx = TopicIndex::default();
            let mut filters = Vec::new();
            for key in 0..12u32 {
                let depth = 1 + next(5) as usize;
                let mut levels: Vec<&str> = (0..depth).map(|_| ["a", "b", "", "+", "$x"][next(5) as usize]).collect();
                if next(3) == 0 {
                    levels.push("#");
                }
                let filter = levels.join("/");
                idx.insert(&filter, key, opts(QoS::AtMostOnce));
                filters.push(filter);
            }
            for _ in 0..20 {
                let depth = 1 + next(6) as usize;
                let topic = (0..depth).map(|_| words[next(4) as usize]).collect::<Vec<_>>().join("/");
                let mut expected: Vec<u32> =
                    (0..12u32).filter(|&k| midge_codec::topic::matches(&filters[k as usize], &topic)).collect();
                expected.sort();
                assert_eq!(matches(&idx, &topic), expected, "topic {topic:?} filters {filters:?}");
            }
            for (key, filter) in filters.iter().enumerate() {
                assert!(idx.remove(filter, &(key as u32)), "{filter}");
            }
            assert!(idx.root.is_empty(), "{filters:?}");
            assert_eq!(idx.len(), 0);
        }
    }
}
