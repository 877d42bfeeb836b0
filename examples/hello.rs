//! Embedding coreloop: your own routes, one handler instance per core.
//!
//!     cargo run --release --example hello
//!     curl localhost:8080/hello/world
//!
//! Each core builds its own `Router` (and here its own counter), so handlers
//! need no locks: the counter below counts the requests of one core.

use coreloop::{Body, Config, Request, Response, Router, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bound = Server::new(Config::default()).bind()?;
    println!("listening on http://{}", bound.local_addr());
    let report = bound.serve(|core| {
        let mut served = 0u64;
        Router::builtins()
            .prefix(Some("GET"), "/hello/", move |req: &Request<'_>| {
                served += 1;
                let name = &req.path()["/hello/".len()..];
                let text = format!("hello, {name} (core {core}, request {served} here)\n");
                Response::new(200)
                    .with_content_type("text/plain; charset=utf-8")
                    .with_body(Body::Bytes(text.into_bytes()))
            })
            .post("/echo", |req: &Request<'_>| {
                Response::new(200)
                    .with_content_type("application/octet-stream")
                    .with_body(Body::Bytes(req.body().to_vec()))
            })
    })?;
    for core in report.cores {
        println!(
            "core {}: drained {}, forced {}",
            core.id, core.drained, core.forced
        );
    }
    Ok(())
}
