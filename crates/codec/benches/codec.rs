//! Codec microbenchmarks: the per-message work of a broker (decoding a
//! PUBLISH, encoding one for each subscriber) and the rarer CONNECT, in
//! MQTT 3.1.1 and 5. `cargo bench -p midge-codec`; compare runs with
//! criterion's saved baselines (`--save-baseline` / `--baseline`).

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use midge_codec::{
    Connect, MqttStr, Packet, PacketId, ProtocolVersion, Publish, PublishProperties, QoS, decode, encode,
    encode_publish,
};

fn publish(qos: QoS, payload: usize) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: MqttStr::from("house/floor1/room2/temperature"),
        packet_id: (qos != QoS::AtMostOnce).then(|| PacketId::new(7).expect("not 0")),
        properties: PublishProperties::default(),
        payload: Bytes::from(vec![0x5A; payload]),
    }
}

fn encoded(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).expect("encodes");
    buf
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    group.throughput(Throughput::Elements(1));
    for (version, name) in [(ProtocolVersion::V3_1_1, "3.1.1"), (ProtocolVersion::V5, "5")] {
        for (qos, payload) in [(QoS::AtMostOnce, 64), (QoS::AtLeastOnce, 64), (QoS::AtLeastOnce, 4096)] {
            let packet = publish(qos, payload);
            let label = format!("{name} qos{} {payload}B", qos as u8);
            let wire = encoded(&Packet::Publish(packet.clone()), version);
            group.bench_function(format!("decode {label}"), |b| {
                b.iter_batched(
                    || wire.clone(),
                    |mut buf| black_box(decode(&mut buf, version, 1 << 20).expect("decodes")),
                    BatchSize::SmallInput,
                )
            });
            let mut out = BytesMut::with_capacity(8192);
            group.bench_function(format!("encode {label}"), |b| {
                b.iter(|| {
                    out.clear();
                    encode_publish(black_box(&packet), version, &mut out).expect("encodes");
                })
            });
        }
    }
    group.finish();

    let connect = Packet::Connect(Box::new(Connect {
        client_id: "sensor-000042".into(),
        clean_start: true,
        keep_alive: 60,
        username: Some("device".into()),
        password: Some(Bytes::from_static(b"secret")),
        ..Connect::default()
    }));
    let mut group = c.benchmark_group("connect");
    for (version, name) in [(ProtocolVersion::V3_1_1, "3.1.1"), (ProtocolVersion::V5, "5")] {
        let mut packet = connect.clone();
        if let Packet::Connect(c) = &mut packet {
            c.protocol_version = version;
        }
        let wire = encoded(&packet, version);
        group.bench_function(format!("decode {name}"), |b| {
            b.iter_batched(
                || wire.clone(),
                |mut buf| black_box(decode(&mut buf, ProtocolVersion::V3_1_1, 1 << 20).expect("decodes")),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
