//! Prometheus metrics (`metrics.prometheus.*`, off by default): Lavalink's ten `lavalink_*`
//! gauges with their names and help texts (lavalink-internals §4.7), so existing dashboards
//! work, and Caldera's own `caldera_*` series.
//!
//! Gauges are set from the live state on every scrape and expire when not set again, so the
//! series of a worker process that is gone (labelled with its pid) disappear with it. Request
//! and WebSocket counters are recorded as they happen.

use crate::http::AppState;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub struct Metrics {
    handle: PrometheusHandle,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot install the Prometheus recorder: {0}")]
pub struct MetricsError(String);

impl Metrics {
    pub fn install() -> Result<Self, MetricsError> {
        let recorder = PrometheusBuilder::new()
            // Gauges are refreshed on each scrape; one not refreshed belongs to something gone.
            .idle_timeout(MetricKindMask::GAUGE, Some(Duration::from_millis(500)))
            .set_buckets(&[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
            .map_err(|e| MetricsError(e.to_string()))?
            .build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).map_err(|e| MetricsError(e.to_string()))?;
        describe();
        Ok(Self { handle })
    }

    /// Refreshes the gauges from the node's state and renders the text format.
    pub fn render(&self, state: &AppState) -> String {
        let stats = state.stats.json(&state.supervisor, &state.registry, None);
        let num = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
        gauge!("lavalink_players_total").set(num(&stats["players"]));
        gauge!("lavalink_playing_players_total").set(num(&stats["playingPlayers"]));
        gauge!("lavalink_uptime_milliseconds").set(num(&stats["uptime"]));
        gauge!("lavalink_memory_free_bytes").set(num(&stats["memory"]["free"]));
        gauge!("lavalink_memory_used_bytes").set(num(&stats["memory"]["used"]));
        gauge!("lavalink_memory_allocated_bytes").set(num(&stats["memory"]["allocated"]));
        gauge!("lavalink_memory_reservable_bytes").set(num(&stats["memory"]["reservable"]));
        gauge!("lavalink_cpu_cores").set(num(&stats["cpu"]["cores"]));
        gauge!("lavalink_cpu_system_load_percentage").set(num(&stats["cpu"]["systemLoad"]));
        gauge!("lavalink_cpu_lavalink_load_percentage").set(num(&stats["cpu"]["lavalinkLoad"]));

        let per_worker = state.registry.worker_figures();
        for w in state.supervisor.workers() {
            let Some(pid) = w.pid.filter(|_| w.state == crate::supervisor::WorkerState::Ready) else { continue };
            let labels = [("worker", w.worker_id.to_string()), ("pid", pid.to_string())];
            let figures = per_worker.get(&w.worker_id).copied().unwrap_or_default();
            let r = w.resources.unwrap_or_default();
            gauge!("caldera_worker_players", &labels).set(figures.players as f64);
            gauge!("caldera_worker_playing_players", &labels).set(figures.playing as f64);
            gauge!("caldera_worker_frames_sent", &labels).set(figures.frames_sent as f64);
            gauge!("caldera_worker_frames_nulled", &labels).set(figures.frames_nulled as f64);
            gauge!("caldera_worker_rss_bytes", &labels).set(r.rss_bytes as f64);
            gauge!("caldera_worker_cpu_seconds", &labels).set(r.cpu_time_ms as f64 / 1000.0);
            gauge!("caldera_worker_threads", &labels).set(r.threads as f64);
            gauge!("caldera_worker_restarts", &labels).set(w.restarts as f64);
            gauge!("caldera_worker_ping_rtt_seconds", &labels).set(w.last_ping_rtt.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN));
            gauge!("caldera_worker_missed_pings", &labels).set(w.missed_pings as f64);
            gauge!("caldera_worker_ipc_messages_received", &labels).set(w.ipc.messages_in.load(Ordering::Relaxed) as f64);
            gauge!("caldera_worker_ipc_bytes_received", &labels).set(w.ipc.bytes_in.load(Ordering::Relaxed) as f64);
            gauge!("caldera_worker_ipc_messages_sent", &labels).set(w.ipc.messages_out.load(Ordering::Relaxed) as f64);
            gauge!("caldera_worker_ipc_bytes_sent", &labels).set(w.ipc.bytes_out.load(Ordering::Relaxed) as f64);
        }
        let ready = state.supervisor.workers().iter().filter(|w| w.state == crate::supervisor::WorkerState::Ready).count();
        gauge!("caldera_workers_ready").set(ready as f64);
        gauge!("caldera_workers_configured").set(state.config.caldera.workers as f64);

        let c = state.registry.connection_figures();
        gauge!("caldera_websocket_connections_active").set(c.active as f64);
        gauge!("caldera_websocket_connections_peak").set(c.peak as f64);
        gauge!("caldera_websocket_sessions_resumable").set(c.resumable as f64);
        gauge!("caldera_resume_queue_depth").set(c.queued as f64);
        if let Some(planner) = state.supervisor.route_planner() {
            gauge!("caldera_routeplanner_failing_addresses").set(planner.failing_count() as f64);
        }
        self.handle.render()
    }
}

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

pub fn record_ws_closed(code: u16) {
    counter!("caldera_websocket_closes_total", "code" => code.to_string()).increment(1);
}

fn describe() {
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
    describe_counter!("caldera_websocket_closes_total", "Client WebSocket connections closed, by close code");
}
