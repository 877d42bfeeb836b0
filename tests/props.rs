//! Property tests: random and mutated input never panics, every response is
//! correctly framed, nothing is answered after a response that closes, and
//! the outcome does not depend on how the bytes were split.

mod common;

use common::{outcome, parse_responses, run_split, Harness};
use coreloop::http::Limits;
use proptest::prelude::*;

const CORPUS: &[&[u8]] = &[
    b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /json HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n",
    b"PUT /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    b"GET http://a/target?q=1 HTTP/1.1\r\nHost: a:80\r\n\r\n",
    b"GET /plaintext HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
];

const INTERESTING: &[u8] = b"\r\n \t\0:0a;,-+xX\x7f\xff9fF";

#[derive(Clone, Debug)]
enum Mutation {
    Replace(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![prop::sample::select(INTERESTING.to_vec()), any::<u8>()];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Mutation::Replace(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), 1..40usize).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn apply(mut raw: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if raw.is_empty() {
            break;
        }
        match *m {
            Mutation::Replace(i, b) => {
                let i = i % raw.len();
                raw[i] = b;
            }
            Mutation::Insert(i, b) => raw.insert(i % (raw.len() + 1), b),
            Mutation::Delete(i) => {
                raw.remove(i % raw.len());
            }
            Mutation::Duplicate(i, n) => {
                let i = i % raw.len();
                let part = raw[i..(i + n).min(raw.len())].to_vec();
                raw.splice(i..i, part);
            }
        }
    }
    raw
}

/// The invariants every run must keep, whatever the input.
fn check(raw: &[u8], h: &Harness) -> Result<(), TestCaseError> {
    let responses = parse_responses(&h.wire).map_err(|e| {
        TestCaseError::fail(format!("{e} for input {:?}", String::from_utf8_lossy(raw)))
    })?;
    for (i, r) in responses.iter().enumerate() {
        let rejection = matches!(r.status, 400 | 408 | 413 | 414 | 417 | 431 | 505);
        prop_assert!(
            !rejection || r.closes(),
            "rejection {} without close",
            r.status
        );
        prop_assert!(
            !r.closes() || i + 1 == responses.len(),
            "response after a close"
        );
    }
    if responses.last().is_some_and(|r| r.closes()) {
        prop_assert!(h.conn.is_closing());
    }
    Ok(())
}

fn cuts_from(seed: &[usize], len: usize) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut left = len;
    for s in seed.iter().cycle().take(len) {
        if left == 0 {
            break;
        }
        let n = 1 + s % left;
        cuts.push(n);
        left -= n;
    }
    cuts
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(raw in prop::collection::vec(any::<u8>(), 0..600), seed in prop::collection::vec(1..64usize, 1..8)) {
        let limits = Limits::default();
        let whole = run_split(&raw, &[], &limits);
        check(&raw, &whole)?;
        let split = run_split(&raw, &cuts_from(&seed, raw.len()), &limits);
        check(&raw, &split)?;
        prop_assert_eq!(outcome(&split), outcome(&whole));
    }

    #[test]
    fn mutated_requests(
        picks in prop::collection::vec(0..CORPUS.len(), 1..5),
        mutations in prop::collection::vec(mutation(), 1..6),
        seed in prop::collection::vec(1..64usize, 1..8),
    ) {
        let valid: Vec<u8> = picks.iter().flat_map(|i| CORPUS[*i].iter().copied()).collect();
        let raw = apply(valid, &mutations);
        let limits = Limits { max_body: 64, max_head: 512, max_request_line: 128, ..Limits::default() };
        let whole = run_split(&raw, &[], &limits);
        check(&raw, &whole)?;
        let bytewise = run_split(&raw, &vec![1; raw.len()], &limits);
        prop_assert_eq!(outcome(&bytewise), outcome(&whole));
        let split = run_split(&raw, &cuts_from(&seed, raw.len()), &limits);
        prop_assert_eq!(outcome(&split), outcome(&whole));
    }

    #[test]
    fn valid_pipelines_are_answered_in_full(picks in prop::collection::vec(0..CORPUS.len(), 1..12)) {
        let raw: Vec<u8> = picks.iter().flat_map(|i| CORPUS[*i].iter().copied()).collect();
        let h = run_split(&raw, &[], &Limits::default());
        check(&raw, &h)?;
        let responses = h.responses();
        // The corpus's HTTP/1.0 keep-alive and every other entry stay open.
        prop_assert_eq!(responses.len(), picks.len());
    }
}
