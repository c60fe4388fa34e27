//! IPC messages. Both enums are append-only: never rename, reorder or remove a variant (postcard
//! encodes the variant index); a retired variant stays as `Reserved*`. Incompatible changes bump
//! [`crate::build::PROTOCOL_VERSION`].

use serde::{Deserialize, Serialize};

/// First frame from a worker. `token` is the one-time secret the gateway handed this spawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerHello {
    pub protocol_version: u32,
    pub build_id: String,
    pub worker_id: u32,
    pub pid: u32,
    pub token: String,
}

/// The gateway's answer once it accepted a worker's hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayHello {
    pub protocol_version: u32,
    pub build_id: String,
    pub worker_id: u32,
    pub pid: u32,
}

/// Process figures a worker reports about itself, read from `/proc/self`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceReport {
    pub rss_bytes: u64,
    /// CPU time (user + system) used since the worker started, in milliseconds.
    pub cpu_time_ms: u64,
    pub threads: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Severity {
    Warn,
    Error,
}

/// Gateway → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    Hello(GatewayHello),
    /// Health check; answered with [`ToGateway::Pong`] carrying the same `seq`.
    Ping { seq: u64 },
    /// Stop cleanly and exit.
    Shutdown { reason: String },
}

/// Worker → gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToGateway {
    Hello(WorkerHello),
    Pong { seq: u64 },
    Resources(ResourceReport),
    /// Something the operator should see in the gateway's log.
    Log { severity: Severity, message: String },
}
