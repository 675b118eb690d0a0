//! Mosquitto's ACL file: who may publish, subscribe to and receive which topics.
//!
//! ```text
//! # lines before the first `user` apply to anonymous clients
//! topic read public/#
//!
//! user alice
//! topic readwrite alice/#
//! topic read #
//! topic deny secret/#
//!
//! # patterns apply to every client; %c is the client id, %u the user name
//! pattern write devices/%c/#
//! pattern read users/%u/inbox/#
//! ```
//!
//! `topic [read|write|readwrite|deny] FILTER` (access defaults to
//! `readwrite`). Everything not granted is denied; a matching `deny` wins
//! over any grant. A subscription is allowed when its filter lies within a
//! readable filter (`topic read a/#` allows `a/+/b`, not `#`) and not wholly
//! within a denied one; each message is then checked again on delivery, so a
//! subscriber never receives a topic it may not read.

use std::collections::HashMap;
use std::path::Path;

use midge_codec::topic;

use super::{Authorizer, Check, ClientInfo};

/// Why an ACL file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AclFileError {
    /// The file could not be read.
    #[error("cannot read ACL file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A line is not one of `user`, `topic`, `pattern`.
    #[error("ACL file line {line}: {why}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn allows(self, write: bool) -> bool {
        match self {
            Access::ReadWrite => true,
            Access::Read => !write,
            Access::Write => write,
            Access::Deny => false,
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    access: Access,
    filter: String,
}

/// Rules from a Mosquitto-format ACL file.
#[derive(Debug, Clone, Default)]
pub struct AclFile {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl AclFile {
    /// Reads and checks the whole file; a bad line is an error naming it.
    pub fn load(path: &Path) -> Result<AclFile, AclFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| AclFileError::Io { path: path.display().to_string(), source })?;
        AclFile::parse(&text)
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<AclFile, AclFileError> {
        let mut acl = AclFile::default();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let err = |why: String| AclFileError::Line { line: i + 1, why };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` needs a user name".into()));
                    }
                    user = Some(rest.to_owned());
                    acl.users.entry(rest.to_owned()).or_default();
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest).map_err(err)?;
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else if let Some(user) = &user {
                        acl.users.entry(user.clone()).or_default().push(rule);
                    } else {
                        acl.anonymous.push(rule);
                    }
                }
                other => return Err(err(format!("unknown keyword {other:?} (expected user, topic or pattern)"))),
            }
        }
        Ok(acl)
    }

    /// Number of users with rules of their own.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// The rules for `client`, with patterns substituted. A pattern whose
    /// substitution would bring a wildcard or level separator in from a
    /// client id or user name does not apply.
    fn rules<'a>(&'a self, client: &'a ClientInfo) -> impl Iterator<Item = (Access, std::borrow::Cow<'a, str>)> + 'a {
        let own = match &client.username {
            Some(name) => self.users.get(name).map(Vec::as_slice).unwrap_or_default(),
            None => &self.anonymous,
        };
        let own = own.iter().map(|r| (r.access, std::borrow::Cow::Borrowed(r.filter.as_str())));
        let patterns = self.patterns.iter().filter_map(move |r| {
            let filter = substitute(&r.filter, client)?;
            Some((r.access, filter))
        });
        own.chain(patterns)
    }

    /// May `client` publish to (`write`) or receive (`!write`) `topic`?
    pub fn allows_topic(&self, client: &ClientInfo, topic: &str, write: bool) -> bool {
        let mut granted = false;
        for (access, filter) in self.rules(client) {
            if topic::matches(&filter, topic) {
                if access == Access::Deny {
                    return false;
                }
                granted |= access.allows(write);
            }
        }
        granted
    }

    /// May `client` subscribe to `filter`?
    pub fn allows_subscribe(&self, client: &ClientInfo, filter: &str) -> bool {
        let filter = match topic::parse_shared(filter) {
            Ok(Some((_, inner))) => inner,
            _ => filter,
        };
        let mut granted = false;
        for (access, rule) in self.rules(client) {
            if within(filter, &rule) {
                if access == Access::Deny {
                    return false;
                }
                granted |= access.allows(false);
            }
        }
        granted
    }
}

fn parse_rule(rest: &str) -> Result<Rule, String> {
    let (first, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let (access, filter) = match first {
        "read" => (Access::Read, after.trim()),
        "write" => (Access::Write, after.trim()),
        "readwrite" => (Access::ReadWrite, after.trim()),
        "deny" => (Access::Deny, after.trim()),
        _ => (Access::ReadWrite, rest),
    };
    if filter.is_empty() {
        return Err("a rule needs a topic filter".into());
    }
    topic::validate_topic_filter(filter).map_err(|e| format!("invalid topic filter {filter:?}: {e}"))?;
    Ok(Rule { access, filter: filter.to_owned() })
}

fn substitute<'a>(filter: &'a str, client: &ClientInfo) -> Option<std::borrow::Cow<'a, str>> {
    if !filter.contains('%') {
        return Some(std::borrow::Cow::Borrowed(filter));
    }
    let safe = |s: &str| !s.is_empty() && !s.contains(['/', '+', '#']);
    let mut out = filter.to_owned();
    if out.contains("%c") {
        if !safe(&client.client_id) {
            return None;
        }
        out = out.replace("%c", &client.client_id);
    }
    if out.contains("%u") {
        let name = client.username.as_deref().filter(|u| safe(u))?;
        out = out.replace("%u", name);
    }
    Some(std::borrow::Cow::Owned(out))
}

/// True if every topic `sub` matches is also matched by `rule`.
fn within(sub: &str, rule: &str) -> bool {
    // A leading wildcard in the rule does not reach `$` topics [MQTT-4.7.2-1].
    if sub.starts_with('$') && (rule.starts_with('+') || rule.starts_with('#')) {
        return false;
    }
    let mut sub_levels = sub.split('/');
    let mut rule_levels = rule.split('/');
    loop {
        match (sub_levels.next(), rule_levels.next()) {
            (_, Some("#")) => return true,
            (None, None) => return true,
            // `a/#` also matches `a`, so `a` is within `a/#` (handled above).
            (None, Some(_)) | (Some(_), None) => return false,
            (Some("#"), Some(_)) => return false,
            (Some("+"), Some(r)) => {
                if r != "+" {
                    return false;
                }
            }
            (Some(s), Some(r)) => {
                if r != "+" && r != s {
                    return false;
                }
            }
        }
    }
}

impl Authorizer for AclFile {
    fn authorize_publish<'a>(&'a self, client: &'a ClientInfo, topic: &'a str) -> Check<'a> {
        Check::Ready(self.allows_topic(client, topic, true))
    }

    fn authorize_subscribe<'a>(&'a self, client: &'a ClientInfo, filter: &'a str) -> Check<'a> {
        Check::Ready(self.allows_subscribe(client, filter))
    }

    fn authorize_read(&self, client: &ClientInfo, topic: &str) -> bool {
        self.allows_topic(client, topic, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, username: Option<&str>) -> ClientInfo {
        ClientInfo {
            client_id: id.into(),
            username: username.map(str::to_owned),
            peer: "127.0.0.1:1".parse().unwrap(),
            protocol_version: midge_codec::ProtocolVersion::V5,
        }
    }

    const FILE: &str = "\
# anonymous
topic read public/#

user alice
topic readwrite alice/#
topic read #
topic deny secret/#
topic read $SYS/broker/uptime

user bob
topic write bob/out

pattern write devices/%c/#
pattern read users/%u/inbox/#
";

    #[test]
    fn topics_follow_user_patterns_and_deny() {
        let acl = AclFile::parse(FILE).unwrap();
        let alice = client("a1", Some("alice"));
        let bob = client("b1", Some("bob"));
        let anon = client("x", None);
        assert!(acl.allows_topic(&alice, "alice/x", true));
        assert!(acl.allows_topic(&alice, "weather/today", false));
        assert!(!acl.allows_topic(&alice, "weather/today", true));
        assert!(!acl.allows_topic(&alice, "secret/plans", false), "deny wins over read #");
        assert!(!acl.allows_topic(&alice, "$SYS/broker/load", false), "# does not reach $SYS");
        assert!(acl.allows_topic(&alice, "$SYS/broker/uptime", false));
        assert!(acl.allows_topic(&bob, "bob/out", true));
        assert!(!acl.allows_topic(&bob, "bob/out", false));
        assert!(acl.allows_topic(&anon, "public/news", false));
        assert!(!acl.allows_topic(&anon, "public/news", true));
        assert!(
            !acl.allows_topic(&client("c", Some("carol")), "public/news", false),
            "users do not get anonymous rules"
        );
        // Patterns.
        assert!(acl.allows_topic(&bob, "devices/b1/temp", true));
        assert!(!acl.allows_topic(&bob, "devices/a1/temp", true));
        assert!(acl.allows_topic(&bob, "users/bob/inbox/1", false));
        assert!(!acl.allows_topic(&anon, "users//inbox/1", false), "%u needs a user name");
        assert!(
            !acl.allows_topic(&client("evil/+", None), "devices/evil/x/y", true),
            "no wildcards smuggled in by ids"
        );
    }

    #[test]
    fn subscriptions_must_lie_within_a_readable_filter() {
        let acl = AclFile::parse(FILE).unwrap();
        let alice = client("a1", Some("alice"));
        let anon = client("x", None);
        assert!(acl.allows_subscribe(&alice, "#"), "read # allows #; secret/ is filtered on delivery");
        assert!(!acl.allows_subscribe(&alice, "secret/#"), "wholly denied");
        assert!(!acl.allows_subscribe(&alice, "secret/+/x"));
        assert!(acl.allows_subscribe(&anon, "public/+/x"));
        assert!(acl.allows_subscribe(&anon, "public"), "a/# covers a");
        assert!(!acl.allows_subscribe(&anon, "#"), "wider than public/#");
        assert!(!acl.allows_subscribe(&anon, "+/news"));
        assert!(acl.allows_subscribe(&anon, "$share/g/public/#"), "shared: the inner filter counts");
        assert!(!acl.allows_subscribe(&alice, "$SYS/#"));
        assert!(acl.allows_subscribe(&alice, "$SYS/broker/uptime"));
    }

    #[test]
    fn within_handles_wildcards() {
        assert!(within("a/b", "a/+"));
        assert!(within("a/+", "a/+"));
        assert!(!within("a/+", "a/b"));
        assert!(within("a/b/c", "a/#"));
        assert!(!within("a/#", "a/+"));
        assert!(within("a/#", "#"));
        assert!(!within("$SYS/x", "+/x"));
        assert!(!within("a", "a/b"));
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, line) in [
            ("user alice\nfoo bar", 2),
            ("topic read", 1),
            ("topic read a/#/b", 1),
            ("user", 1),
            ("\n\npattern deny", 3),
        ] {
            match AclFile::parse(text) {
                Err(AclFileError::Line { line: l, .. }) => assert_eq!(l, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        let acl = AclFile::parse("topic a/b").unwrap();
        assert!(acl.allows_topic(&client("x", None), "a/b", true), "access defaults to readwrite");
    }
}
