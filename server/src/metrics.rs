//! Counters, gauges and histograms, rendered in Prometheus' text format at
//! `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// A latency histogram.
#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in BUCKETS.iter().zip(self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// The server's figures, shared by the HTTP handlers and the engine thread.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    queue_depth: AtomicUsize,
    engine_waiting: AtomicUsize,
    running: AtomicUsize,
    ttft: Mutex<Histogram>,
    itl: Mutex<Histogram>,
}

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, endpoint: &str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((endpoint.to_string(), status)).or_default() += 1;
    }

    /// Adds a finished request's token counts.
    pub fn tokens(&self, prompt: usize, generated: usize) {
        self.prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.generated_tokens
            .fetch_add(generated as u64, Ordering::Relaxed);
    }

    /// One more request waits in the submit queue.
    pub fn queued(&self) {
        self.queue_depth.fetch_add(1, Ordering::Relaxed);
    }

    /// One request left the submit queue.
    pub fn dequeued(&self) {
        let _ = self
            .queue_depth
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1));
    }

    /// Requests waiting for a row: in the submit queue, or admitted to the
    /// engine but not decoding yet.
    pub fn queue_depth(&self) -> usize {
        self.queue_depth.load(Ordering::Relaxed) + self.engine_waiting.load(Ordering::Relaxed)
    }

    /// Sets the number of requests inside the engine that are not decoding yet.
    pub fn set_engine_waiting(&self, n: usize) {
        self.engine_waiting.store(n, Ordering::Relaxed);
    }

    /// Sets the number of requests decoding now.
    pub fn set_running(&self, n: usize) {
        self.running.store(n, Ordering::Relaxed);
    }

    /// Records a time to first token.
    pub fn ttft(&self, d: Duration) {
        self.ttft
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(d.as_secs_f64());
    }

    /// Records the time between two tokens of one request.
    pub fn inter_token(&self, d: Duration) {
        self.itl
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(d.as_secs_f64());
    }

    /// Everything, in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP mlx_infer_requests_total HTTP requests answered, by endpoint and status.\n# TYPE mlx_infer_requests_total counter\n");
        for ((endpoint, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "mlx_infer_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        let counters = [
            (
                "mlx_infer_prompt_tokens_total",
                "Prompt tokens of finished requests.",
                self.prompt_tokens.load(Ordering::Relaxed),
            ),
            (
                "mlx_infer_generated_tokens_total",
                "Tokens generated for finished requests.",
                self.generated_tokens.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let gauges = [
            (
                "mlx_infer_queue_depth",
                "Requests waiting for a row (submit queue and engine).",
                self.queue_depth(),
            ),
            (
                "mlx_infer_running_requests",
                "Requests decoding now (the batch size).",
                self.running.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        self.ttft.lock().unwrap_or_else(|e| e.into_inner()).render(
            &mut out,
            "mlx_infer_time_to_first_token_seconds",
            "Time from a request's arrival to its first token.",
        );
        self.itl.lock().unwrap_or_else(|e| e.into_inner()).render(
            &mut out,
            "mlx_infer_inter_token_latency_seconds",
            "Time between consecutive tokens of one request.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let m = Metrics::default();
        m.request("/v1/completions", 200);
        m.request("/v1/completions", 200);
        m.request("/v1/completions", 400);
        m.tokens(5, 7);
        m.queued();
        m.set_running(3);
        m.ttft(Duration::from_millis(30));
        let text = m.render();
        assert!(text
            .contains("mlx_infer_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 2"));
        assert!(text.contains("mlx_infer_generated_tokens_total 7"));
        assert!(text.contains("mlx_infer_queue_depth 1"));
        assert!(text.contains("mlx_infer_running_requests 3"));
        assert!(text.contains("mlx_infer_time_to_first_token_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("mlx_infer_time_to_first_token_seconds_bucket{le=\"0.025\"} 0"));
        assert!(text.contains("mlx_infer_inter_token_latency_seconds_count 0"));
    }
}
