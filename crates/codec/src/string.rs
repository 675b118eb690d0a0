//! A UTF-8 string that shares its bytes with the buffer it was decoded from.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use bytestring::ByteString;

/// An immutable UTF-8 string backed by [`Bytes`], so a topic name decoded
/// from a packet is not copied when the message fans out.
///
/// Checked once, when made: a topic is read as `&str` many times on its way
/// (matching, authorization, encoding), and re-checking it each time cost
/// 15% of the broker's instructions per message. `bytestring` holds the
/// `unsafe` that skips the re-check, so this crate has none.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MqttStr(ByteString);

impl MqttStr {
    /// Wraps bytes that are valid UTF-8.
    pub fn from_utf8(bytes: Bytes) -> Result<MqttStr, std::str::Utf8Error> {
        ByteString::try_from(bytes).map(MqttStr)
    }

    /// A string known at compile time.
    pub const fn from_static(s: &'static str) -> MqttStr {
        MqttStr(ByteString::from_static(s))
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        self.0.as_bytes()
    }
}

impl Deref for MqttStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for MqttStr {
    fn from(s: &str) -> Self {
        MqttStr(ByteString::from(s))
    }
}

impl From<String> for MqttStr {
    fn from(s: String) -> Self {
        MqttStr(ByteString::from(s))
    }
}

impl fmt::Debug for MqttStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MqttStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
