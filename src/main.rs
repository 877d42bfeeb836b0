//! The coreloop binary. The event loops arrive with the epoll-server issue;
//! until then it prints what it is and exits.

fn main() {
    eprintln!(
        "coreloop {}: the HTTP engine is built; the server loop is not yet",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
