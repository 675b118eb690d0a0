//! Topic names, filters and matching: the examples of 3.1.1 section 4.7
//! and 5.0 sections 4.7 and 4.8.2.

use midge_codec::topic::*;

/// Section 4.7.1.2: the multi-level wildcard matches the parent and any children.
#[test]
fn multi_level_wildcard_matches_parent_and_descendants() {
    for topic in ["sport/tennis/player1", "sport/tennis/player1/ranking", "sport/tennis/player1/score/wimbledon"] {
        assert!(matches("sport/tennis/player1/#", topic), "{topic}");
    }
    assert!(matches("sport/#", "sport"));
    assert!(matches("#", "sport/tennis"));
    assert!(matches("#", "/"));
    assert!(!matches("sport/tennis/player1/#", "sport/tennis"));
    assert!(!matches("sport/tennis/player1/#", "sport/tennis/player2"));
}

/// Section 4.7.1.3: the single-level wildcard matches exactly one level.
#[test]
fn single_level_wildcard_matches_exactly_one_level() {
    assert!(matches("sport/tennis/+", "sport/tennis/player1"));
    assert!(matches("sport/tennis/+", "sport/tennis/player2"));
    assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
    assert!(!matches("sport/+", "sport"));
    assert!(matches("sport/+", "sport/"));
    assert!(matches("sport/+/player1", "sport/tennis/player1"));
    assert!(matches("+/tennis/#", "sport/tennis/player1/ranking"));
}

/// Section 4.7.1.3: "+/+" and "/+" match "/finance", "+" does not.
#[test]
fn single_level_wildcard_matches_empty_levels() {
    assert!(matches("+/+", "/finance"));
    assert!(matches("/+", "/finance"));
    assert!(!matches("+", "/finance"));
    assert!(matches("+", ""));
    assert!(matches("a/+/b", "a//b"));
}

/// [MQTT-4.7.2-1]: filters starting with a wildcard do not match topics starting with '$'.
#[test]
fn wildcard_filters_do_not_match_dollar_topics() {
    assert!(!matches("#", "$SYS/monitor/Clients"));
    assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
    assert!(!matches("+", "$SYS"));
    assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
    assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
    assert!(matches("$SYS/#", "$SYS"));
    // A '$' further in is an ordinary character.
    assert!(matches("+/$x", "a/$x"));
    assert!(matches("a/+", "a/$x"));
}

/// Section 4.7.3: topics are case-sensitive, may contain spaces, and a
/// leading '/' makes a distinct level.
#[test]
fn matching_is_exact_per_level() {
    assert!(!matches("ACCOUNTS", "Accounts"));
    assert!(matches("Accounts payable", "Accounts payable"));
    assert!(!matches("/finance", "finance"));
    assert!(!matches("finance", "/finance"));
    assert!(!matches("a/b", "a/b/c"));
    assert!(!matches("a/b/c", "a/b"));
    assert!(matches("a/b", "a/b"));
}

/// [MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.3-1]: filter syntax.
#[test]
fn topic_filters_follow_the_wildcard_placement_rules() {
    for ok in ["#", "+", "sport/tennis/#", "+/tennis/#", "sport/+/player1", "/", "//", "$SYS/#", "a/+/+"] {
        assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
    }
    assert_eq!(validate_topic_filter("sport/tennis#"), Err(TopicError::InvalidMultiLevelWildcard));
    assert_eq!(validate_topic_filter("sport/tennis/#/ranking"), Err(TopicError::InvalidMultiLevelWildcard));
    assert_eq!(validate_topic_filter("#/"), Err(TopicError::InvalidMultiLevelWildcard));
    assert_eq!(validate_topic_filter("sport+"), Err(TopicError::InvalidSingleLevelWildcard));
    assert_eq!(validate_topic_filter("+a/b"), Err(TopicError::InvalidSingleLevelWildcard));
    assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
    assert_eq!(validate_topic_filter("a\0"), Err(TopicError::NullCharacter));
}

/// [MQTT-3.3.2-2] [MQTT-4.7.3-1] [MQTT-4.7.3-2] [MQTT-4.7.3-3]: topic name syntax.
#[test]
fn topic_names_are_non_empty_without_wildcards_or_nulls() {
    for ok in ["a", "/", "sport/tennis/player1", "$SYS/broker", "Accounts payable", "\u{2A6D4}"] {
        assert_eq!(validate_topic_name(ok), Ok(()), "{ok}");
    }
    assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
    assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInTopicName));
    assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInTopicName));
    assert_eq!(validate_topic_name("a+b"), Err(TopicError::WildcardInTopicName));
    assert_eq!(validate_topic_name("a\0b"), Err(TopicError::NullCharacter));
    assert_eq!(validate_topic_name(&"x".repeat(65_535)), Ok(()));
    assert_eq!(validate_topic_name(&"x".repeat(65_536)), Err(TopicError::TooLong));
    assert_eq!(validate_topic_filter(&"x".repeat(65_536)), Err(TopicError::TooLong));
}

/// v5 section 4.8.2: `$share/{ShareName}/{filter}`.
#[test]
fn shared_subscriptions_split_into_group_and_filter() {
    assert_eq!(parse_shared("$share/consumers/sport/#"), Ok(Some(("consumers", "sport/#"))));
    assert_eq!(parse_shared("$share/g//finance"), Ok(Some(("g", "/finance"))));
    assert_eq!(parse_shared("$share/g/+"), Ok(Some(("g", "+"))));
    assert_eq!(SharedFilter::parse("$share/g/a/b"), Ok(Some(SharedFilter { group: "g", filter: "a/b" })));
    // Not shared.
    assert_eq!(parse_shared("sport/#"), Ok(None));
    assert_eq!(parse_shared("$share"), Ok(None));
    assert_eq!(parse_shared("$shared/g/a"), Ok(None));
    assert_eq!(parse_shared("$SYS/#"), Ok(None));
}

/// [MQTT-4.8.2-1] [MQTT-4.8.2-2]: the share name is non-empty, without
/// wildcards, and followed by a valid filter.
#[test]
fn invalid_shared_subscriptions_are_refused() {
    assert_eq!(parse_shared("$share//a"), Err(TopicError::InvalidShareName));
    assert_eq!(parse_shared("$share/"), Err(TopicError::InvalidShareName));
    assert_eq!(parse_shared("$share/g+/a"), Err(TopicError::InvalidShareName));
    assert_eq!(parse_shared("$share/#"), Err(TopicError::InvalidShareName));
    assert_eq!(parse_shared("$share/g"), Err(TopicError::MissingSharedFilter));
    assert_eq!(parse_shared("$share/g/"), Err(TopicError::MissingSharedFilter));
    assert_eq!(parse_shared("$share/g/a#"), Err(TopicError::InvalidMultiLevelWildcard));
}

#[test]
fn topic_error_messages_name_the_spec_rule() {
    assert!(TopicError::InvalidMultiLevelWildcard.to_string().contains("[MQTT-4.7.1-2]"));
    assert!(TopicError::Empty.to_string().contains("[MQTT-4.7.3-1]"));
}
