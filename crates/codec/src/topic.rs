//! Topic names, topic filters, matching and shared subscriptions
//! (MQTT 3.1.1 section 4.7, MQTT 5.0 sections 4.7 and 4.8.2).
//!
//! The decoder leaves topic filters unvalidated (a bad filter is answered
//! with a SUBACK failure code, not a closed connection); the broker checks
//! them with [`validate_topic_filter`] and [`parse_shared`].

/// Why a string is not a valid topic name or topic filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Topic names and filters are at least one character long [MQTT-4.7.3-1].
    #[error("empty topic name or filter [MQTT-4.7.3-1]")]
    Empty,
    /// Longer than 65,535 bytes [MQTT-4.7.3-3].
    #[error("topic longer than 65535 bytes [MQTT-4.7.3-3]")]
    TooLong,
    /// Contains U+0000 [MQTT-4.7.3-2].
    #[error("topic contains U+0000 [MQTT-4.7.3-2]")]
    NullCharacter,
    /// A topic name contains `+` or `#` [MQTT-3.3.2-2].
    #[error("wildcard in a topic name [MQTT-3.3.2-2]")]
    WildcardInTopicName,
    /// `#` is not alone in the last level of the filter [MQTT-4.7.1-2].
    #[error("'#' must be the whole last level of a topic filter [MQTT-4.7.1-2]")]
    InvalidMultiLevelWildcard,
    /// `+` does not occupy a whole level of the filter [MQTT-4.7.1-3].
    #[error("'+' must occupy a whole level of a topic filter [MQTT-4.7.1-3]")]
    InvalidSingleLevelWildcard,
    /// `$share/` without a share name, or one containing `+` or `#`
    /// [MQTT-4.8.2-1] [MQTT-4.8.2-2].
    #[error("invalid share name [MQTT-4.8.2-1] [MQTT-4.8.2-2]")]
    InvalidShareName,
    /// `$share/{group}` not followed by `/` and a topic filter
    /// (MQTT 5.0 section 4.8.2).
    #[error("shared subscription without a topic filter (MQTT 5.0 section 4.8.2)")]
    MissingSharedFilter,
}

/// Checks a topic name (PUBLISH, will topic): non-empty, no wildcard, no
/// U+0000, at most 65,535 bytes.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    common_checks(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInTopicName);
    }
    Ok(())
}

/// Checks a topic filter: non-empty, `#` only as the whole last level,
/// `+` only as a whole level, no U+0000, at most 65,535 bytes.
///
/// A shared subscription (`$share/...`) is a valid filter here; use
/// [`parse_shared`] to split and check it.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    common_checks(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::InvalidMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::InvalidSingleLevelWildcard);
        }
    }
    Ok(())
}

fn common_checks(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > usize::from(u16::MAX) {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// Whether `topic` (a valid topic name) matches `filter` (a valid,
/// non-shared topic filter).
///
/// `#` matches its parent level and any number of child levels
/// (`sport/#` matches `sport`), `+` matches exactly one level which may be
/// empty, and topics starting with `$` are not matched by filters starting
/// with a wildcard [MQTT-4.7.2-1].
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some(f), Some(t)) => {
                if f != "+" && f != t {
                    return false;
                }
            }
            (None, None) => return true,
            (Some(_), None) | (None, Some(_)) => return false,
        }
    }
}

/// A shared subscription `$share/{group}/{filter}` (MQTT 5.0 section 4.8.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SharedFilter<'a> {
    /// The share name: non-empty, without `/`, `+` or `#`.
    pub group: &'a str,
    /// The topic filter messages are matched against.
    pub filter: &'a str,
}

impl<'a> SharedFilter<'a> {
    /// `Ok(None)` for a filter that is not shared (does not start with
    /// `$share/`); the parts of a valid shared filter; or why it is invalid.
    pub fn parse(filter: &'a str) -> Result<Option<SharedFilter<'a>>, TopicError> {
        let Some(rest) = filter.strip_prefix("$share/") else {
            return Ok(None);
        };
        let Some((group, filter)) = rest.split_once('/') else {
            if rest.is_empty() || rest.contains(['+', '#']) {
                return Err(TopicError::InvalidShareName);
            }
            return Err(TopicError::MissingSharedFilter);
        };
        if group.is_empty() || group.contains(['+', '#']) {
            return Err(TopicError::InvalidShareName);
        }
        if filter.is_empty() {
            return Err(TopicError::MissingSharedFilter);
        }
        validate_topic_filter(filter)?;
        Ok(Some(SharedFilter { group, filter }))
    }
}

/// [`SharedFilter::parse`] as a `(group, filter)` pair.
pub fn parse_shared(filter: &str) -> Result<Option<(&str, &str)>, TopicError> {
    Ok(SharedFilter::parse(filter)?.map(|s| (s.group, s.filter)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_matches_itself_when_it_has_no_wildcards() {
        for t in ["a", "a/b", "/", "a//b", "$SYS/x"] {
            assert!(matches(t, t), "{t}");
        }
    }

    #[test]
    fn hash_alone_matches_every_non_dollar_topic() {
        for t in ["a", "/", "a/b/c", "+"] {
            assert!(matches("#", t), "{t}");
        }
        assert!(!matches("#", "$a"));
    }

    #[test]
    fn shared_filter_keeps_slices_of_the_input() {
        let input = String::from("$share/g/a/b");
        let shared = SharedFilter::parse(&input).unwrap().unwrap();
        assert_eq!(shared.filter.as_ptr(), input[9..].as_ptr());
    }
}
