//! Metric names and the functions that record them, for every layer above. Recording goes
//! through the `metrics` facade: without an installed recorder (Prometheus off) it costs next to
//! nothing. Gauges that mirror live state are set by [`crate::prometheus`] on each scrape.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, histogram};
use std::time::Duration;

/// Records one REST request.
pub fn record_request(route: &str, status: u16, elapsed: Duration) {
    counter!("caldera_http_requests_total", "route" => route.to_string(), "status" => status.to_string()).increment(1);
    histogram!("caldera_http_request_duration_seconds", "route" => route.to_string()).record(elapsed.as_secs_f64());
}

/// Records WebSocket traffic and lifecycle.
pub fn record_ws_message(sent: bool, bytes: usize) {
    let dir = if sent { "sent" } else { "received" };
    counter!("caldera_websocket_messages_total", "direction" => dir).increment(1);
    counter!("caldera_websocket_bytes_total", "direction" => dir).increment(bytes as u64);
}

/// Records a route planner lease: handed out, or none free.
pub fn record_route_lease(granted: bool) {
    counter!("caldera_routeplanner_leases_total", "result" => if granted { "granted" } else { "exhausted" }).increment(1);
}

/// Records a source request rate limited (429) or unable to bind its leased address.
pub fn record_route_failure() {
    counter!("caldera_routeplanner_failures_total").increment(1);
}

pub fn record_ws_opened() {
    counter!("caldera_websocket_connections_total").increment(1);
}

/// Records a closed client WebSocket. Clients choose close codes: only the ones Lavalink clients
/// and the node use get their own series, the rest count as `other` (a bounded label set).
pub fn record_ws_closed(code: u16) {
    const KNOWN: [u16; 9] = [1000, 1001, 1002, 1003, 1005, 1006, 1008, 1009, 1011];
    let label = if KNOWN.contains(&code) { code.to_string() } else { "other".into() };
    counter!("caldera_websocket_closes_total", "code" => label).increment(1);
}

/// Records a worker the supervisor killed, and why (`missed_pings`, `flooding`, `queue_full`, ...).
pub fn record_worker_killed(reason: &'static str) {
    counter!("caldera_worker_kills_total", "reason" => reason).increment(1);
}

/// Records an HTTP connection closed on arrival because too many were open.
pub fn record_http_connection_refused() {
    counter!("caldera_http_connections_refused_total").increment(1);
}

/// Records a client WebSocket dropped because it did not read what the node sent it.
pub fn record_ws_slow_consumer() {
    counter!("caldera_websocket_slow_consumers_total").increment(1);
}

/// Describes every metric (once, when the Prometheus recorder is installed).
pub fn describe() {
    describe_gauge!("lavalink_players_total", "Total number of players connected");
    describe_gauge!("lavalink_playing_players_total", "Number of players currently playing audio");
    describe_gauge!("lavalink_uptime_milliseconds", "Uptime of the node in milliseconds");
    describe_gauge!("lavalink_memory_free_bytes", "Memory statistics in bytes (Free)");
    describe_gauge!("lavalink_memory_used_bytes", "Memory statistics in bytes (Used)");
    describe_gauge!("lavalink_memory_allocated_bytes", "Memory statistics in bytes (Allocated)");
    describe_gauge!("lavalink_memory_reservable_bytes", "Memory statistics in bytes (Reservable)");
    describe_gauge!("lavalink_cpu_cores", "CPU statistics (Cores)");
    describe_gauge!("lavalink_cpu_system_load_percentage", "CPU statistics (System Load)");
    describe_gauge!("lavalink_cpu_lavalink_load_percentage", "CPU statistics (LL Load)");
    describe_gauge!("caldera_worker_players", "Players hosted by a worker process");
    describe_gauge!("caldera_worker_playing_players", "Players of a worker playing a track, not paused");
    describe_gauge!("caldera_worker_frames_sent", "Audio frames sent in the last minute, summed over a worker's players");
    describe_gauge!("caldera_worker_frames_nulled", "Audio frames with nothing to send in the last minute, summed over a worker's players");
    describe_gauge!("caldera_worker_rss_bytes", "Resident memory of a worker process");
    describe_gauge!("caldera_worker_cpu_seconds", "CPU time used by a worker process since it started");
    describe_gauge!("caldera_worker_threads", "Threads of a worker process");
    describe_gauge!("caldera_worker_restarts", "Times this worker slot's process exited or was killed");
    describe_gauge!("caldera_worker_ping_rtt_seconds", "Round trip of the last health ping");
    describe_gauge!("caldera_worker_missed_pings", "Health pings sent and not answered yet");
    describe_gauge!("caldera_worker_ipc_messages_received", "IPC messages received from a worker process");
    describe_gauge!("caldera_worker_ipc_bytes_received", "IPC bytes received from a worker process");
    describe_gauge!("caldera_worker_ipc_messages_sent", "IPC messages sent to a worker process");
    describe_gauge!("caldera_worker_ipc_bytes_sent", "IPC bytes sent to a worker process");
    describe_gauge!("caldera_workers_ready", "Worker processes connected and healthy");
    describe_gauge!("caldera_routeplanner_failing_addresses", "Addresses the route planner skips as failing");
    describe_counter!("caldera_routeplanner_leases_total", "Local addresses handed out for source requests (result: granted, exhausted)");
    describe_counter!("caldera_routeplanner_failures_total", "Source requests rate limited (429) or unable to bind their address");
    describe_gauge!("caldera_workers_configured", "Worker processes the node should run");
    describe_gauge!("caldera_websocket_connections_active", "Open client WebSocket connections");
    describe_gauge!("caldera_websocket_connections_peak", "Most client WebSocket connections open at once");
    describe_gauge!("caldera_websocket_sessions_resumable", "Sessions waiting for a resume");
    describe_gauge!("caldera_resume_queue_depth", "Messages queued for sessions waiting for a resume");
    describe_counter!("caldera_http_requests_total", "REST requests by route and status");
    describe_histogram!("caldera_http_request_duration_seconds", "REST request latency by route");
    describe_counter!("caldera_websocket_connections_total", "Client WebSocket connections opened");
    describe_counter!("caldera_websocket_messages_total", "Client WebSocket messages by direction");
    describe_counter!("caldera_websocket_bytes_total", "Client WebSocket bytes by direction");
    describe_counter!("caldera_websocket_closes_total", "Client WebSocket connections closed, by close code (unusual codes as `other`)");
    describe_counter!("caldera_worker_kills_total", "Worker processes the gateway killed, by reason");
    describe_counter!("caldera_websocket_slow_consumers_total", "Client WebSockets dropped for not reading what was sent to them");
    describe_counter!("caldera_http_connections_refused_total", "HTTP connections closed on arrival because too many were open");
}
