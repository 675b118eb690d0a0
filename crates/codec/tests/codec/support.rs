//! Helpers shared by the test modules.

use bytes::BytesMut;
use midge_codec::{DecodeError, Packet, PacketId, ProtocolVersion, decode, encode, encoded_len};

/// No limit on the packet size.
pub(crate) const NO_LIMIT: u32 = u32::MAX;

/// A packet id from a literal.
pub(crate) fn pid(id: u16) -> PacketId {
    PacketId::new(id).expect("non-zero packet id")
}

/// Encodes `packet` for `version`, checking `encoded_len` agrees.
pub(crate) fn encode_to_vec(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).expect("packet encodes");
    assert_eq!(buf.len(), encoded_len(packet, version), "encoded_len of {packet:?}");
    buf.to_vec()
}

/// Decodes exactly one packet from `bytes`, which must be consumed whole.
pub(crate) fn decode_one(bytes: &[u8], version: ProtocolVersion) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, version, NO_LIMIT)?.expect("a whole packet");
    assert!(buf.is_empty(), "{} bytes left after {packet:?}", buf.len());
    Ok(packet)
}

/// Encodes, decodes and compares.
pub(crate) fn assert_round_trip(packet: &Packet, version: ProtocolVersion) {
    let bytes = encode_to_vec(packet, version);
    let decoded = decode_one(&bytes, version)
        .unwrap_or_else(|e| panic!("{packet:?} as {version:?} fails to decode: {e} ({bytes:02x?})"));
    assert_eq!(&decoded, packet, "round trip through {version:?}");
}
