//! Shared helpers of the end-to-end tests: where the rig is, and how to wait for a condition.
//!
//! Every test here talks to the real servers `devstack/up` starts. When one is not there, the
//! test fails (never skips) with one line saying how to start the rig.

/// Removing what a passed test made on the rig's engine and Kafka.
pub mod cleanup;
/// The operator installed with its chart, pipelines whose workers run as pods, and the checks
/// every cluster scenario ends with.
pub mod cluster;
/// A Service reached through the API server's port-forward, where this machine is not the node.
pub mod forward;
/// Clients that hang up mid-request, and their retries with the same key.
pub mod hangup;
/// Creating topics and reading them back whole, without a consumer group.
pub mod kafka;
/// A process's peak resident memory (`VmHWM`) and CPU time, for the benchmarks.
pub mod memory;
/// A CA the rig does not trust, for certificate-verification failures.
pub mod pki;
/// A process's `/metrics` samples and histogram quantiles, for the benchmarks.
pub mod prometheus;
/// A TCP proxy a test can cut, to make a server unreachable for one client only.
pub mod proxy;
/// Finding the rig's endpoints and failing clearly when it is down.
pub mod rig;
/// Per message, its version and deletion as MongoDB, the index and a stream of events have it.
pub mod state;
/// Steady writes through the API, and what was acknowledged.
pub mod traffic;
/// Waiting on a condition with a deadline instead of sleeping and hoping.
pub mod wait;

/// A loopback port free at the time of asking, for a process under test to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A name no other test run uses: `<prefix>-<8 hex digits>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}
