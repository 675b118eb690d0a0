//! Topic index microbenchmarks: matching a topic against 100,000
//! subscriptions (exact filters, `+` and `#` wildcards mixed, as a fleet of
//! devices and a few dashboards would have), and subscribing.
//! `cargo bench -p midge-broker`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use midge_broker::router::{Grant, TopicIndex};

/// 100,000 subscribers: 90,000 device filters (`site/S/device/D/cmd`),
/// 9,000 `site/S/device/+/status`, 900 `site/S/#` and 100 `+/+/device/+/#`.
fn index() -> TopicIndex<u32> {
    let mut index = TopicIndex::default();
    let mut key = 0;
    let mut add = |index: &mut TopicIndex<u32>, filter: String| {
        index.insert(&filter, key, Grant::default());
        key += 1;
    };
    for n in 0..90_000 {
        add(&mut index, format!("site/{}/device/{}/cmd", n % 100, n));
    }
    for n in 0..9_000 {
        add(&mut index, format!("site/{}/device/+/status", n % 100));
    }
    for n in 0..900 {
        add(&mut index, format!("site/{}/#", n % 100));
    }
    for _ in 0..100 {
        add(&mut index, "+/+/device/+/#".to_owned());
    }
    index
}

fn topic_index(c: &mut Criterion) {
    let index = index();
    let mut group = c.benchmark_group("match 100k subscriptions");
    group.throughput(Throughput::Elements(1));
    for topic in ["site/42/device/4242/cmd", "site/42/device/4242/status", "elsewhere/x/y", "$SYS/broker/uptime"] {
        group.bench_function(topic, |b| {
            b.iter(|| {
                let mut matched = 0u32;
                index.for_each_match(black_box(topic), |_, _| matched += 1);
                black_box(matched)
            })
        });
    }
    group.finish();

    let mut index = index;
    c.bench_function("subscribe and unsubscribe in 100k", |b| {
        b.iter(|| {
            index.insert("site/7/device/new/cmd", u32::MAX, Grant::default());
            black_box(index.remove("site/7/device/new/cmd", &u32::MAX))
        })
    });
}

criterion_group!(benches, topic_index);
criterion_main!(benches);
