//! A 1 GiB file to a reader that stalls, then reads it all: the server's
//! memory stays flat and its only core keeps serving others. Alone in its
//! own test binary, one backend after the other, because it measures this
//! process's RSS: other tests running beside it would move that figure.

mod common;

use std::fs;
use std::io::Read;
use std::time::Duration;

use common::net::{config, TestServer};
use coreloop::handler::{site, FilesConfig, SiteConfig};
use coreloop::Backend;

#[test]
fn slow_reader_of_a_huge_file_on_each_backend() {
    slow_reader_of_a_huge_file_does_not_block_the_core(Backend::Epoll);
    if common::net::uring_available() {
        slow_reader_of_a_huge_file_does_not_block_the_core(Backend::Uring);
    }
}

fn slow_reader_of_a_huge_file_does_not_block_the_core(backend: Backend) {
    let root = std::env::temp_dir().join(format!("coreloop-huge-{}-{backend}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("hello.txt"), b"hello, file\n").unwrap();
    let huge = fs::File::create(root.join("huge.bin")).unwrap();
    huge.set_len(1 << 30).unwrap(); // sparse: 1 GiB of zeros, no disk
    drop(huge);
    let one_core = coreloop::Config {
        workers: Some(1),
        ..config(backend)
    };
    let site_config = SiteConfig {
        files: Some(FilesConfig {
            root: root.clone(),
            ..FilesConfig::default()
        }),
        ..SiteConfig::default()
    };
    let server = TestServer::start_with(one_core, move |_core, info| {
        site(&site_config, info.stats.clone(), info.backend)
    });
    let rss_before = rss_kib();
    let mut slow = server.connect();
    slow.send(b"GET /huge.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    std::thread::sleep(Duration::from_millis(300));
    // The only core is mid-body to a reader that reads nothing: others
    // are still served.
    let mut other = server.connect();
    for _ in 0..20 {
        assert_eq!(other.get("/plaintext").status, 200);
    }
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 32 * 1024,
        "RSS grew {grown} KiB with a stalled 1 GiB body"
    );
    // Now read it all, checking the head and counting the body.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        slow.stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.contains("Content-Length: 1073741824"), "{head}");
    let mut total = 0u64;
    let mut chunk = vec![0u8; 1 << 20];
    while total < 1 << 30 {
        let n = slow.stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {total} bytes");
        assert!(chunk[..n].iter().all(|&b| b == 0));
        total += n as u64;
    }
    assert_eq!(total, 1 << 30);
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 32 * 1024, "RSS grew {grown} KiB serving 1 GiB");
    assert_eq!(slow.get("/hello.txt").body, b"hello, file\n");
    drop(server);
    let _ = fs::remove_dir_all(&root);
}

/// This process's resident set, from /proc.
fn rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
