//! The store's disk fails under the real broker: it fills up, or its file
//! system turns read-only. What the broker could not store it does not
//! acknowledge, it goes on serving what needs no store, it recovers by
//! itself once the disk takes writes again, and after a SIGKILL and a
//! restart every message it acknowledged is there.
//!
//! The data directory is a small tmpfs mounted for the test, so these tests
//! need root (CI runs as root); without it they say so and do nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use midge_test_support::{Broker, RawClient, TempDir, build, packet_type};

const WAIT: Duration = Duration::from_secs(30);

/// A tmpfs of a few MiB, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
    _parent: TempDir,
}

impl Tmpfs {
    /// `None` when mounting is not allowed here (not root).
    fn mount(name: &str, size: &str) -> Option<Tmpfs> {
        let parent = TempDir::new(name);
        let dir = parent.join("data");
        std::fs::create_dir(&dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Tmpfs { dir, _parent: parent })
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount").args(["-o", &format!("remount,{options}")]).arg(&self.dir).status();
        assert!(status.is_ok_and(|s| s.success()), "mount -o remount,{options} {}", self.dir.display());
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn tmpfs_or_skip(name: &str, size: &str) -> Option<Tmpfs> {
    let fs = Tmpfs::mount(name, size);
    if fs.is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI runs as root and must be able to mount a tmpfs for the store fault tests"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
    }
    fs
}

fn start(data: &Path) -> Broker {
    let dir = data.to_str().unwrap();
    Broker::start(env!("CARGO_BIN_EXE_midge"), &["--data-dir", dir, "--max-queued-messages", "100000"])
}

/// A persistent session subscribed to `filter` at QoS 1, gone offline: the
/// broker must store what it queues for it.
fn offline_subscriber(broker: &Broker, id: &str, filter: &str) {
    let (mut sub, _) = RawClient::handshake(broker.addr(), &build::Connect::new(id).clean_session(false));
    assert_eq!(sub.subscribe(1, &[(filter, 1)]), [1]);
    sub.disconnect();
}

/// Publishes QoS 1 messages `first..` (payload: the index, padded to `size`
/// bytes) until the broker stops acknowledging them or `limit` is reached;
/// returns the acknowledged indices and whether the connection was closed.
fn publish_until_refused(broker: &Broker, id: &str, first: u16, limit: u16, size: usize) -> (BTreeSet<u16>, bool) {
    let mut publisher = RawClient::connected(broker.addr(), id);
    let mut acked = BTreeSet::new();
    for i in first..first + limit {
        let mut payload = format!("{i:05}").into_bytes();
        payload.resize(size, b'.');
        let packet_id = i % 60_000 + 1;
        if publisher.try_send(&build::Publish::new("full/t", payload).qos(1, packet_id).build()).is_err() {
            return (acked, true);
        }
        match publisher.recv_packet(WAIT) {
            Ok(packet) => {
                assert_eq!(packet.packet_type(), packet_type::PUBACK, "{packet:?}");
                acked.insert(i);
            }
            Err(err) if err.is_closed() => return (acked, true),
            Err(err) => panic!("publisher {id}: {err}"),
        }
    }
    (acked, false)
}

/// A clean-session round trip at QoS 0, which needs no store.
fn serves_without_the_store(broker: &Broker) {
    let mut sub = RawClient::connected(broker.addr(), "qos0-sub");
    assert_eq!(sub.subscribe(1, &[("plain/t", 0)]), [0]);
    let mut publisher = RawClient::connected(broker.addr(), "qos0-pub");
    publisher.publish("plain/t", "still here");
    assert_eq!(sub.expect_publish().payload, b"still here");
}

/// Publishes one QoS 1 message at a time until one is acknowledged, for at
/// most `WAIT`: the broker retries its store every second.
fn acknowledged_again(broker: &Broker, index: u16) -> u16 {
    let deadline = Instant::now() + WAIT;
    let mut attempt = 0;
    loop {
        let (acked, _) = publish_until_refused(broker, &format!("retry-{attempt}"), index, 1, 100);
        if let Some(&i) = acked.first() {
            return i;
        }
        assert!(Instant::now() < deadline, "no PUBACK within {WAIT:?} after the disk took writes again");
        attempt += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every payload index the persistent session `id` is sent, acknowledging
/// each, until none comes for a second.
fn drain(broker: &Broker, id: &str) -> BTreeSet<u16> {
    let (mut sub, connack) = RawClient::handshake(broker.addr(), &build::Connect::new(id).clean_session(false));
    assert!(connack.session_present, "the session survived");
    let mut got = BTreeSet::new();
    while let Ok(packet) = sub.recv_packet(Duration::from_secs(2)) {
        assert_eq!(packet.packet_type(), packet_type::PUBLISH);
        let publish = sub_publish(packet);
        let index: u16 = std::str::from_utf8(&publish.payload[..5]).unwrap().parse().unwrap();
        got.insert(index);
        if let Some(id) = publish.packet_id {
            sub.send(&build::puback(id));
        }
    }
    got
}

fn sub_publish(packet: midge_test_support::RawPacket) -> midge_test_support::Publish {
    packet.publish().expect("a PUBLISH")
}

/// The disk fills up: QoS 1 messages for a stored session stop being
/// acknowledged (the publisher is disconnected instead), the log says why,
/// QoS 0 traffic goes on, and once there is room again the broker
/// acknowledges again without a restart. Killed and restarted, it delivers
/// every message it acknowledged, before and after the disk was full.
#[test]
fn a_full_disk_refuses_what_it_cannot_store_and_recovers_when_space_returns() {
    let Some(fs) = tmpfs_or_skip("store-full", "3m") else { return };
    let mut broker = start(fs.path());
    offline_subscriber(&broker, "keeper", "full/#");

    // 8 KiB messages into 3 MiB: the disk is full after a few hundred.
    let (mut acked, refused) = publish_until_refused(&broker, "filler", 0, 2000, 8 * 1024);
    assert!(refused, "3 MiB took 2000 messages of 8 KiB");
    assert!(!acked.is_empty(), "nothing was stored before the disk filled up");
    assert!(broker.wait_for_log("No space left on device", WAIT), "{}", broker.log());
    // Still full: refused again, at once.
    let (more, refused) = publish_until_refused(&broker, "filler-2", 5000, 50, 8 * 1024);
    assert!(refused && more.len() < 50, "a full disk took 50 more messages");
    acked.extend(more);
    serves_without_the_store(&broker);

    fs.remount("size=64m");
    acked.insert(acknowledged_again(&broker, 10_000));
    let (after, refused) = publish_until_refused(&broker, "after", 20_000, 100, 1024);
    assert!(!refused && after.len() == 100, "after recovery only {} of 100 were acknowledged", after.len());
    acked.extend(after);
    assert!(broker.log().contains("writes again"), "{}", broker.log());

    broker.kill();
    let broker = start(fs.path());
    let got = drain(&broker, "keeper");
    let lost: Vec<_> = acked.difference(&got).collect();
    assert!(lost.is_empty(), "{} acknowledged messages lost: {lost:?}", lost.len());
}

/// A data directory on a read-only file system stops start-up with an
/// error that names the store and the cause, without touching what is
/// stored; once writable again, the broker starts and delivers everything it
/// had acknowledged. (A file system cannot be remounted read-only while the
/// broker has its store open for writing, so this is tested at start-up.)
#[test]
fn a_read_only_data_directory_stops_start_up_with_a_clear_error_and_loses_nothing() {
    let Some(fs) = tmpfs_or_skip("store-ro", "16m") else { return };
    let mut broker = start(fs.path());
    offline_subscriber(&broker, "keeper", "full/#");
    let (acked, refused) = publish_until_refused(&broker, "before", 0, 50, 100);
    assert!(!refused && acked.len() == 50);
    broker.kill();

    fs.remount("ro");
    let mut command = Command::new(env!("CARGO_BIN_EXE_midge"));
    command.args(["serve", "--bind", "127.0.0.1", "--port", "0", "--data-dir"]).arg(fs.path());
    let mut process = midge_test_support::Process::spawn("midge serve", command);
    assert!(!process.wait_exit(WAIT).success(), "{}", process.transcript());
    let message = process.stderr();
    assert!(message.contains("Read-only file system") && message.contains("midge.redb"), "{message}");

    fs.remount("rw");
    let broker = start(fs.path());
    let got = drain(&broker, "keeper");
    let lost: Vec<_> = acked.difference(&got).collect();
    assert!(lost.is_empty(), "{} acknowledged messages lost: {lost:?}", lost.len());
}
