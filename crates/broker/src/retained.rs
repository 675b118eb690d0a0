//! Retained messages, indexed by topic level.
//!
//! A new subscription looks up the retained messages its filter matches. A
//! scan of every retained message per filter made that cost grow with the
//! number of retained messages: one SUBSCRIBE of 2,000 filters against
//! 100,000 retained messages kept a core busy for 55 s. The tree walks only
//! the branches a filter can reach, so a lookup costs what it finds (and,
//! for a `+` level, the children it looks through).
//!
//! Topic depth is a peer's choice, so nothing here recurses over it: every
//! walk uses an explicit stack, and `Drop` takes the tree apart in a loop.

use std::collections::HashMap;
use std::sync::Arc;

use crate::router::levels;
use crate::session::Message;

/// Seeded per map at random, as the topic index's levels are.
type Hasher = foldhash::quality::RandomState;

/// Retained messages by topic name.
#[derive(Debug, Default)]
pub(crate) struct RetainedTree {
    root: Node,
    len: usize,
}

#[derive(Debug, Default)]
struct Node {
    children: Children,
    message: Option<Arc<Message>>,
}

/// Most levels have one child or a few (`dev/42/status`): a map for each
/// would allocate a table of four slots per level, which made 100,000
/// retained messages cost 450 bytes more each than a flat map of topics
/// did. A few children sit in a list sized to fit; past [`FEW`], a map.
#[derive(Debug)]
enum Children {
    Few(Vec<(Box<str>, Node)>),
    Many(HashMap<Box<str>, Node, Hasher>),
}

/// Children kept in a list before they move to a map.
const FEW: usize = 8;

impl Default for Children {
    fn default() -> Self {
        Children::Few(Vec::new())
    }
}

impl Children {
    fn len(&self) -> usize {
        match self {
            Children::Few(list) => list.len(),
            Children::Many(map) => map.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, level: &str) -> Option<&Node> {
        match self {
            Children::Few(list) => list.iter().find(|(name, _)| &**name == level).map(|(_, node)| node),
            Children::Many(map) => map.get(level),
        }
    }

    fn get_mut(&mut self, level: &str) -> Option<&mut Node> {
        match self {
            Children::Few(list) => list.iter_mut().find(|(name, _)| &**name == level).map(|(_, node)| node),
            Children::Many(map) => map.get_mut(level),
        }
    }

    /// The child for `level`, made if missing.
    fn get_or_insert(&mut self, level: &str) -> &mut Node {
        if let Children::Few(list) = self
            && list.len() >= FEW
            && !list.iter().any(|(name, _)| &**name == level)
        {
            let map = std::mem::take(list).into_iter().collect();
            *self = Children::Many(map);
        }
        match self {
            Children::Few(list) => {
                let at = match list.iter().position(|(name, _)| &**name == level) {
                    Some(at) => at,
                    None => {
                        // Grown one at a time: most lists stay at one or two.
                        list.reserve_exact(1);
                        list.push((level.into(), Node::default()));
                        list.len() - 1
                    }
                };
                // `at` is an index of the list just searched or pushed to.
                #[allow(clippy::indexing_slicing)]
                &mut list[at].1
            }
            Children::Many(map) => map.entry(level.into()).or_default(),
        }
    }

    fn remove(&mut self, level: &str) {
        match self {
            Children::Few(list) => list.retain(|(name, _)| &**name != level),
            Children::Many(map) => {
                map.remove(level);
            }
        }
    }

    /// Each child with its level name.
    fn for_each<'a>(&'a self, mut f: impl FnMut(&'a str, &'a Node)) {
        match self {
            Children::Few(list) => list.iter().for_each(|(name, node)| f(name, node)),
            Children::Many(map) => map.iter().for_each(|(name, node)| f(name, node)),
        }
    }

    /// Moves every child into `out`.
    fn drain_into(&mut self, out: &mut Vec<Node>) {
        match self {
            Children::Few(list) => out.extend(list.drain(..).map(|(_, node)| node)),
            Children::Many(map) => out.extend(map.drain().map(|(_, node)| node)),
        }
    }
}

impl Node {
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.message.is_none() && self.children.is_empty()
    }
}

/// Dropped in a loop: the derived drop recurses once per level.
impl Drop for Node {
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut stack = Vec::new();
        self.children.drain_into(&mut stack);
        while let Some(mut node) = stack.pop() {
            node.children.drain_into(&mut stack);
        }
    }
}

impl RetainedTree {
    /// How many topics hold a retained message.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Keeps `message` for `topic`, replacing what was there.
    pub(crate) fn insert(&mut self, topic: &str, message: Arc<Message>) {
        let mut node = &mut self.root;
        for level in levels(topic) {
            node = node.children.get_or_insert(level);
        }
        if node.message.replace(message).is_none() {
            self.len += 1;
        }
    }

    /// Clears `topic`; returns whether it held a message. Nodes left empty
    /// are pruned.
    pub(crate) fn remove(&mut self, topic: &str) -> bool {
        // First pass, read-only: the shallowest node below which only this
        // topic's chain would remain, where to cut.
        let mut node = &self.root;
        let mut cut: Option<(usize, &str)> = None;
        for (depth, level) in levels(topic).enumerate() {
            let Some(child) = node.children.get(level) else { return false };
            if depth == 0 || node.message.is_some() || node.children.len() > 1 {
                cut = Some((depth, level));
            }
            node = child;
        }
        if node.message.is_none() {
            return false;
        }
        self.len -= 1;
        let leaf_empties = node.children.is_empty();
        let mut node = &mut self.root;
        for (depth, level) in levels(topic).enumerate() {
            if leaf_empties
                && let Some((at, cut_level)) = cut
                && at == depth
            {
                node.children.remove(cut_level);
                return true;
            }
            // The first pass walked this path.
            let Some(next) = node.children.get_mut(level) else { return true };
            node = next;
        }
        node.message = None;
        true
    }

    /// The message retained for exactly `topic`.
    pub(crate) fn get(&self, topic: &str) -> Option<&Arc<Message>> {
        let mut node = &self.root;
        for level in levels(topic) {
            node = node.children.get(level)?;
        }
        node.message.as_ref()
    }

    /// Calls `f` for every retained message whose topic the valid,
    /// non-shared `filter` matches: `+` one level, `#` its parent and
    /// everything below [MQTT-4.7.1-2], and topics starting with `$` not by
    /// a leading wildcard [MQTT-4.7.2-1]. Returns how many nodes it
    /// visited: the work done, for the caller to pace itself by.
    pub(crate) fn for_each_match<'a>(&'a self, filter: &str, mut f: impl FnMut(&'a Arc<Message>)) -> usize {
        let levels: Vec<&str> = levels(filter).collect();
        let mut visited = 0;
        // (node, how many filter levels it has consumed)
        let mut stack: Vec<(&Node, usize)> = vec![(&self.root, 0)];
        while let Some((node, consumed)) = stack.pop() {
            visited += 1;
            let Some(&level) = levels.get(consumed) else {
                if let Some(message) = &node.message {
                    f(message);
                }
                continue;
            };
            let at_root = consumed == 0;
            // A leading wildcard does not reach `$` topics.
            let reachable = |name: &str| !(at_root && name.starts_with('$'));
            match level {
                "#" => {
                    // The parent level itself ("sport/#" matches "sport"),
                    // unless it is the root (`#` alone has no parent level).
                    if !at_root && let Some(message) = &node.message {
                        f(message);
                    }
                    let mut below: Vec<&Node> = Vec::new();
                    node.children.for_each(|name, child| {
                        if reachable(name) {
                            below.push(child);
                        }
                    });
                    while let Some(node) = below.pop() {
                        visited += 1;
                        if let Some(message) = &node.message {
                            f(message);
                        }
                        node.children.for_each(|_, child| below.push(child));
                    }
                }
                "+" => {
                    visited += node.children.len();
                    node.children.for_each(|name, child| {
                        if reachable(name) {
                            stack.push((child, consumed + 1));
                        }
                    });
                }
                literal => {
                    if let Some(child) = node.children.get(literal) {
                        stack.push((child, consumed + 1));
                    }
                }
            }
        }
        visited
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.root.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{on_a_small_stack, xorshift};
    use bytes::Bytes;
    use midge_codec::{MqttStr, PublishProperties, QoS};

    fn message(topic: &str) -> Arc<Message> {
        Arc::new(Message::new(
            MqttStr::from(topic),
            Bytes::from_static(b"r"),
            QoS::AtMostOnce,
            true,
            PublishProperties::default(),
        ))
    }

    fn tree(topics: &[&str]) -> RetainedTree {
        let mut tree = RetainedTree::default();
        for topic in topics {
            tree.insert(topic, message(topic));
        }
        tree
    }

    fn matching(tree: &RetainedTree, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        tree.for_each_match(filter, |m| out.push(m.topic.as_str().to_owned()));
        out.sort();
        out
    }

    /// Against the codec's one-filter `matches`, over random topics and
    /// filters of a small alphabet: an independent definition of matching.
    #[test]
    fn the_tree_finds_what_topic_matching_says_and_prunes_to_nothing() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
        for _round in 0..200 {
            let topics: Vec<String> = (0..15)
                .map(|_| (0..1 + next(4)).map(|_| ["a", "b", "", "$x"][next(4) as usize]).collect::<Vec<_>>().join("/"))
                .collect();
            let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
            let mut tree = tree(&refs);
            let mut distinct = topics.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(tree.len(), distinct.len());
            for _ in 0..20 {
                let mut levels: Vec<&str> =
                    (0..1 + next(4)).map(|_| ["a", "b", "", "+", "$x"][next(5) as usize]).collect();
                if next(3) == 0 {
                    levels.push("#");
                }
                let filter = levels.join("/");
                let expected: Vec<String> =
                    distinct.iter().filter(|t| midge_codec::topic::matches(&filter, t)).cloned().collect();
                assert_eq!(matching(&tree, &filter), expected, "filter {filter:?} topics {distinct:?}");
            }
            for topic in &distinct {
                assert!(tree.get(topic).is_some());
                assert!(tree.remove(topic), "{topic:?}");
                assert!(!tree.remove(topic));
            }
            assert!(tree.is_empty(), "{distinct:?}");
            assert_eq!(tree.len(), 0);
        }
    }

    #[test]
    fn dollar_topics_are_not_found_by_leading_wildcards() {
        let tree = tree(&["$SYS/a", "a", "a/b", "/x"]);
        assert_eq!(matching(&tree, "#"), ["/x", "a", "a/b"]);
        assert_eq!(matching(&tree, "+/a"), Vec::<String>::new());
        assert_eq!(matching(&tree, "$SYS/#"), ["$SYS/a"]);
        assert_eq!(matching(&tree, "a/#"), ["a", "a/b"]);
        assert_eq!(matching(&tree, "+"), ["a"]);
        assert_eq!(matching(&tree, "+/+"), ["/x", "a/b"]);
    }

    /// Deep topics cost heap, never stack: a 100,000-level topic inserted,
    /// found by `#` and deep `+` filters, removed and dropped on a 64 KiB
    /// thread stack.
    #[test]
    fn a_100000_level_topic_is_kept_found_removed_and_dropped_without_recursion() {
        on_a_small_stack(|| {
            let deep = vec!["a"; 100_000].join("/");
            let mut tree = tree(&[&deep, "a"]);
            assert_eq!(matching(&tree, "#").len(), 2);
            assert_eq!(matching(&tree, &(vec!["+"; 100_000].join("/"))), std::slice::from_ref(&deep));
            assert_eq!(matching(&tree, &(vec!["a"; 50_000].join("/") + "/#")), std::slice::from_ref(&deep));
            assert!(tree.remove(&deep));
            assert_eq!(matching(&tree, "#"), ["a"]);
            tree.insert(&deep, message("deep"));
            // Dropped with the deep chain in it.
        });
    }
}
