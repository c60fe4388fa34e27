//! Prometheus metrics (`metrics.prometheus.*`, off by default): Lavalink's ten `lavalink_*`
//! gauges with their names and help texts (lavalink-internals §4.7), so existing dashboards
//! work, and Caldera's own `caldera_*` series.
//!
//! Gauges are set from the live state on every scrape and expire when not set again, so the
//! series of a worker process that is gone (labelled with its pid) disappear with it. Counters
//! are recorded as things happen ([`crate::telemetry`]).

use crate::players::Players;
use crate::sessions::Sessions;
use crate::stats::Snapshot;
use crate::supervisor::{Supervisor, WorkerState};
use metrics::gauge;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub struct Prometheus {
    handle: PrometheusHandle,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot install the Prometheus recorder: {0}")]
pub struct MetricsError(String);

impl Prometheus {
    pub fn install() -> Result<Self, MetricsError> {
        let recorder = PrometheusBuilder::new()
            // Gauges are refreshed on each scrape; one not refreshed belongs to something gone.
            .idle_timeout(MetricKindMask::GAUGE, Some(Duration::from_millis(500)))
            .set_buckets(&[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
            .map_err(|e| MetricsError(e.to_string()))?
            .build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).map_err(|e| MetricsError(e.to_string()))?;
        crate::telemetry::describe();
        Ok(Self { handle })
    }

    /// Refreshes the gauges from the node's state and renders the text format.
    pub fn render(&self, stats: &Snapshot, supervisor: &Supervisor, players: &Players, sessions: &Sessions, configured_workers: usize) -> String {
        gauge!("lavalink_players_total").set(stats.players as f64);
        gauge!("lavalink_playing_players_total").set(stats.playing_players as f64);
        gauge!("lavalink_uptime_milliseconds").set(stats.uptime_ms as f64);
        gauge!("lavalink_memory_free_bytes").set(stats.memory_free as f64);
        gauge!("lavalink_memory_used_bytes").set(stats.memory_used as f64);
        gauge!("lavalink_memory_allocated_bytes").set(stats.memory_used as f64);
        gauge!("lavalink_memory_reservable_bytes").set(stats.memory_total as f64);
        gauge!("lavalink_cpu_cores").set(stats.cores as f64);
        gauge!("lavalink_cpu_system_load_percentage").set(stats.system_load);
        gauge!("lavalink_cpu_lavalink_load_percentage").set(stats.node_load);

        let per_worker = players.worker_figures();
        let workers = supervisor.workers();
        for w in &workers {
            let Some(pid) = w.pid.filter(|_| w.state == WorkerState::Ready) else { continue };
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
        let ready = workers.iter().filter(|w| w.state == WorkerState::Ready).count();
        gauge!("caldera_workers_ready").set(ready as f64);
        gauge!("caldera_workers_configured").set(configured_workers as f64);

        let (views, totals) = sessions.views();
        let active = views.iter().filter(|v| v.open).count();
        gauge!("caldera_websocket_connections_active").set(active as f64);
        gauge!("caldera_websocket_connections_peak").set(totals.peak as f64);
        gauge!("caldera_websocket_sessions_resumable").set((views.len() - active) as f64);
        gauge!("caldera_resume_queue_depth").set(views.iter().map(|v| v.queued).sum::<usize>() as f64);
        if let Some(planner) = supervisor.route_planner() {
            gauge!("caldera_routeplanner_failing_addresses").set(planner.failing_count() as f64);
        }
        self.handle.render()
    }
}

