//! Handlers that call an upstream: requests under /api/ are checked here
//! and forwarded to an application server; /size asks the upstream itself
//! and answers with what it learned; the rest is answered locally.
//!
//!     python3 -m http.server 3000 &        # any HTTP/1.1 server will do
//!     cargo run --release --example gateway -- 127.0.0.1:3000
//!     curl -H 'Authorization: x' localhost:8080/api/
//!     curl localhost:8080/size
//!
//! `Response::forward(group)` is a response that completes later: the core
//! sends the request on one of its own pooled upstream connections, goes on
//! serving other connections, and streams the reply back when it arrives.
//! `Fetch::...then(closure)` sends a request of the handler's own and runs
//! the closure with the whole reply, on the same core, to build the
//! response. Handlers stay synchronous and per core (the counter needs no
//! lock); requests pipelined behind a pending one wait their turn.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

use coreloop::config::UpstreamGroup;
use coreloop::http::fetch::Fetch;
use coreloop::{Body, Config, Request, Response, Router, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let upstream: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into())
        .parse()?;
    let mut config = Config::default();
    config.upstreams.push(UpstreamGroup {
        servers: vec![upstream],
        host: None,
    });
    const APP: usize = 0; // the index of the group above
    let bound = Server::new(config).bind()?;
    println!(
        "listening on http://{}, /api/ goes to {upstream}",
        bound.local_addr()
    );
    bound.serve(|core| {
        // Per-core state shared by two routes of this core: Rc, not Arc.
        let forwarded = Rc::new(Cell::new(0u64));
        let count = forwarded.clone();
        Router::builtins()
            .prefix(None, "/api/", move |req: &Request<'_>| {
                if req.header("authorization").is_none() {
                    return Response::text(401, "missing Authorization")
                        .with_header("WWW-Authenticate", "Bearer");
                }
                count.set(count.get() + 1);
                Response::forward(APP)
            })
            .get("/size", |_req: &Request<'_>| {
                Fetch::get(APP, "/").then(|reply| match reply {
                    Ok(r) => Response::text(
                        200,
                        format!("the upstream's / is {} bytes ({})", r.body.len(), r.status),
                    ),
                    Err(e) => Response::text(e.status, e.message),
                })
            })
            .get("/where", move |_req: &Request<'_>| {
                let text = format!("core {core}, {} forwarded here\n", forwarded.get());
                Response::new(200).with_body(Body::Bytes(text.into_bytes()))
            })
    })?;
    Ok(())
}
