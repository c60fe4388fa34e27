//! The Nano strategies over IPv6, in a network namespace each test creates (root needed): a /63
//! routed to lo inside it and `net.ipv6.ip_nonlocal_bind=1` — the host setup Lavalink operators
//! use for their blocks. The test thread joins its namespace before it starts anything, so the
//! media server, the node (a child of this thread) and the test's own HTTP client all live in it,
//! and the host's network is never touched.

use caldera_tests::audio::sine_wav;
use caldera_tests::http_server::{Route, TestServer};
use caldera_tests::{Node, NodeOptions};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

const BLOCK0: &str = "2001:db8:ca1d::/64";
const BLOCK1: &str = "2001:db8:ca1d:1::/64";

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    /// Creates the namespace with lo up, the /63 local on lo and non-local binds allowed, then
    /// moves the calling thread into it. Fails loudly when that is not possible.
    fn enter(tag: &str, nonlocal_bind: bool) -> Self {
        let name = format!("caldera-rp-{}-{tag}", std::process::id());
        let ns = Netns(name.clone());
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &name],
            vec!["-n", &name, "link", "set", "lo", "up"],
            vec!["-n", &name, "-6", "route", "add", "local", "2001:db8:ca1d::/63", "dev", "lo"],
        ];
        for args in steps {
            let out = Command::new("ip").args(&args).output().unwrap_or_else(|e| {
                panic!("cannot run `ip` ({e}): this test needs iproute2 and root to build a network namespace")
            });
            assert!(
                out.status.success(),
                "`ip {}` failed: {}; this test needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) to build a network namespace",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if nonlocal_bind {
            // /proc/sys/net is the namespace's own: the host keeps its setting.
            let out = Command::new("ip")
                .args(["netns", "exec", &name, "sh", "-c", "echo 1 > /proc/sys/net/ipv6/ip_nonlocal_bind"])
                .output()
                .unwrap();
            assert!(out.status.success(), "setting ip_nonlocal_bind in the namespace failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let handle = std::fs::File::open(format!("/run/netns/{name}")).expect("namespace handle");
        nix::sched::setns(handle, nix::sched::CloneFlags::CLONE_NEWNET).expect("join the network namespace");
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn in_block(addr: &IpAddr, block: &str) -> bool {
    block.parse::<ipnet::IpNet>().unwrap().contains(addr)
}

fn node(ratelimit: &str) -> Node {
    Node::start_with(NodeOptions {
        yaml: format!("lavalink:\n  server:\n    ratelimit:\n{ratelimit}"),
        workers: 1,
        ..Default::default()
    })
}

fn media() -> TestServer {
    let media = TestServer::start_on("[::1]:0");
    media.route("/t.wav", Route::file(sine_wav(440.0, 0.5, 48_000, 2, 0.5), "audio/wav"));
    media
}

fn status(node: &Node) -> serde_json::Value {
    node.get("/v4/routeplanner/status").json().unwrap()
}

#[test]
fn nano_switch_sends_each_request_from_a_new_address_of_the_64() {
    let _ns = Netns::enter("nano", true);
    let media = media();
    let node = node(&format!("      ipBlocks: [\"{BLOCK0}\"]\n      strategy: NanoSwitch\n"));
    for _ in 0..20 {
        assert_eq!(node.load(&media.url("/t.wav"))["loadType"], "track");
    }
    let seen = media.peers("/t.wav");
    assert!(seen.len() >= 20);
    assert!(seen.iter().all(|p| in_block(p, BLOCK0)), "{seen:?}");
    let distinct: BTreeSet<_> = seen.iter().collect();
    assert!(distinct.len() >= 20, "requests should leave from varying addresses: {seen:?}");
    let s = status(&node);
    assert_eq!(s["class"], "NanoIpRoutePlanner");
    assert_eq!(s["details"]["ipBlock"], serde_json::json!({"type": "Inet6Address", "size": "18446744073709551616"}));
    // A host without an IPv6 address is fetched unbalanced, as Lavaplayer does.
    let v4_media = TestServer::start_on("127.0.0.1:0");
    v4_media.route("/t.wav", Route::file(sine_wav(440.0, 0.5, 48_000, 2, 0.5), "audio/wav"));
    assert_eq!(node.load(&v4_media.url("/t.wav"))["loadType"], "track");
    assert_eq!(v4_media.peers("/t.wav")[0], "127.0.0.1".parse::<IpAddr>().unwrap());
    assert!(node.logs.wait_for("no address of the route planner's family", Duration::from_secs(2)).is_some());
    let index = |s: &serde_json::Value| s["details"]["currentAddressIndex"].as_str().unwrap().parse::<u64>().unwrap();
    let first = index(&s);
    std::thread::sleep(Duration::from_millis(5));
    assert!(index(&status(&node)) > first, "the index follows the clock");
}

#[test]
fn rotating_nano_switch_moves_to_the_next_64_when_rate_limited() {
    let _ns = Netns::enter("rotating", true);
    let media = media();
    media.rate_limit(|p| in_block(&p, BLOCK0));
    let node = node("      ipBlocks: [\"2001:db8:ca1d::/63\"]\n      strategy: RotatingNanoSwitch\n");
    assert_eq!(node.load(&media.url("/t.wav"))["loadType"], "track");
    let seen = media.peers("/t.wav");
    assert!(in_block(&seen[0], BLOCK0), "{seen:?}");
    assert!(seen[1..].iter().all(|p| in_block(p, BLOCK1)), "{seen:?}");
    let s = status(&node);
    assert_eq!(s["class"], "RotatingNanoIpRoutePlanner");
    assert_eq!(s["details"]["blockIndex"], "1");
    assert_eq!(s["details"]["ipBlock"]["size"], "36893488147419103232");
    let IpAddr::V6(banned) = seen[0] else { unreachable!() };
    let java = format!("/{}", banned.segments().iter().map(|g| format!("{g:x}")).collect::<Vec<_>>().join(":"));
    assert_eq!(s["details"]["failingAddresses"][0]["failingAddress"], java.as_str());
    // Later requests stay in the second /64, each from another address.
    for _ in 0..5 {
        assert_eq!(node.load(&media.url("/t.wav"))["loadType"], "track");
    }
    let later = media.peers("/t.wav")[seen.len()..].to_vec();
    assert!(later.iter().all(|p| in_block(p, BLOCK1)), "{later:?}");
    assert_eq!(later.iter().collect::<BTreeSet<_>>().len(), later.len(), "{later:?}");
}

#[test]
fn without_nonlocal_bind_the_node_says_how_to_set_up_the_host() {
    let _ns = Netns::enter("nobind", false);
    let media = media();
    let node = node(&format!("      ipBlocks: [\"{BLOCK0}\"]\n      strategy: NanoSwitch\n      retryLimit: 2\n"));
    assert!(node.logs.wait_for("ip_nonlocal_bind is 0", Duration::from_secs(5)).is_some());
    // Every address fails to bind: each is marked failing and the request is refused, clearly.
    let result = node.load(&media.url("/t.wav"));
    assert_eq!(result["loadType"], "error", "{result}");
    assert_eq!(result["data"]["message"], "Retry aborted, too many retries on ratelimit.");
    assert!(result["data"]["cause"].as_str().unwrap().contains("could not bind"), "{result}");
    assert!(media.hits("/t.wav").is_empty());
    assert_eq!(status(&node)["details"]["failingAddresses"].as_array().unwrap().len(), 3);
}
