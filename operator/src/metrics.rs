//! The operator's Prometheus metrics (prefix `kvoperator_`), on their own registry.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

/// The operator's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `kvoperator_reconciles_total`: reconciles started.
    pub reconciles: IntCounter,
    /// `kvoperator_reconcile_errors_total{error}`: reconciles that failed, by kind of error.
    pub errors: IntCounterVec,
    /// `kvoperator_reconcile_duration_seconds`: how long reconciles take.
    pub duration: Histogram,
    /// `kvoperator_config_pushes_total`: cluster configs pushed to nodes.
    pub pushes: IntCounter,
}

impl Metrics {
    /// Fresh metrics on a new registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounter::new("kvoperator_reconciles_total", "Reconciles started.")?;
        let errors = IntCounterVec::new(
            Opts::new(
                "kvoperator_reconcile_errors_total",
                "Reconciles that failed, by kind of error.",
            ),
            &["error"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "kvoperator_reconcile_duration_seconds",
                "Duration of reconciles.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        let pushes = IntCounter::new(
            "kvoperator_config_pushes_total",
            "Cluster configs pushed to nodes.",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(pushes.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            errors,
            duration,
            pushes,
        })
    }

    /// Records one finished reconcile.
    pub fn observe(&self, took: Duration, error: Option<&crate::Error>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(e) = error {
            self.errors.with_label_values(&[e.metric_label()]).inc();
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_names() -> Result<(), prometheus::Error> {
        let m = Metrics::new()?;
        m.observe(Duration::from_millis(20), None);
        m.observe(
            Duration::from_millis(20),
            Some(&crate::Error::MissingField("uid")),
        );
        let text = m.render();
        assert!(text.contains("kvoperator_reconciles_total 2"), "{text}");
        assert!(
            text.contains(r#"kvoperator_reconcile_errors_total{error="missing_field"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("kvoperator_reconcile_duration_seconds_count 2"),
            "{text}"
        );
        Ok(())
    }
}
