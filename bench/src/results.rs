//! The results: per-run samples, their medians and ratios, the JSON file, the
//! printed table and the SVG chart.

use crate::stats::median;
use serde::{Deserialize, Serialize};
use std::{fmt::Write as _, path::Path};

/// Which server a figure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Ours,
    Floor,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Ours => "ours",
            Target::Floor => "floor",
        }
    }
}

/// Where and how the figures were taken.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub commit: String,
    pub server_bin: String,
    pub nproc: usize,
    pub cpu_model: String,
    pub command: String,
    pub runs: usize,
    pub seconds: f64,
    /// /proc/loadavg when the bench started and when it last wrote results:
    /// the machine is shared, and a load above its core count means noisy figures.
    pub loadavg_start: String,
    pub loadavg_end: String,
}

/// One measured quantity: its value in each run, for ours and the floor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metric {
    pub workload: String,
    pub scenario: String,
    pub name: String,
    pub unit: String,
    pub ours: Vec<f64>,
    pub floor: Vec<f64>,
    pub ours_median: Option<f64>,
    pub floor_median: Option<f64>,
    /// ours_median / floor_median.
    pub ratio: Option<f64>,
}

/// Everything one `bench` invocation measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Results {
    pub meta: Meta,
    pub metrics: Vec<Metric>,
    /// Workloads that did not run, with the reason.
    pub skipped: Vec<String>,
}

impl Results {
    pub fn new(meta: Meta) -> Self {
        Self {
            meta,
            metrics: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// Adds one run's value of a metric (creating the metric on first use).
    pub fn record(
        &mut self,
        workload: &str,
        scenario: &str,
        name: &str,
        unit: &str,
        target: Target,
        value: f64,
    ) {
        let idx = match self
            .metrics
            .iter()
            .position(|m| m.workload == workload && m.scenario == scenario && m.name == name)
        {
            Some(i) => i,
            None => {
                self.metrics.push(Metric {
                    workload: workload.into(),
                    scenario: scenario.into(),
                    name: name.into(),
                    unit: unit.into(),
                    ours: Vec::new(),
                    floor: Vec::new(),
                    ours_median: None,
                    floor_median: None,
                    ratio: None,
                });
                self.metrics.len() - 1
            }
        };
        let m = &mut self.metrics[idx];
        match target {
            Target::Ours => m.ours.push(value),
            Target::Floor => m.floor.push(value),
        }
        m.ours_median = median(&m.ours);
        m.floor_median = median(&m.floor);
        m.ratio = match (m.ours_median, m.floor_median) {
            (Some(o), Some(f)) if f != 0.0 => Some(o / f),
            _ => None,
        };
    }

    pub fn to_json(&self) -> String {
        // Serialising plain data with finite-or-null floats cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The results table (medians), one line per metric.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<4} {:<26} {:<34} {:>14} {:>14} {:>9}",
            "", "scenario", "metric", "ours", "floor", "ours/floor"
        );
        for m in &self.metrics {
            let _ = writeln!(
                out,
                "{:<4} {:<26} {:<34} {:>14} {:>14} {:>9}",
                m.workload,
                m.scenario,
                format!("{} ({})", m.name, m.unit),
                fmt_num(m.ours_median),
                fmt_num(m.floor_median),
                m.ratio.map_or("-".into(), |r| format!("{r:.2}")),
            );
        }
        for s in &self.skipped {
            let _ = writeln!(out, "skipped: {s}");
        }
        out
    }

    /// Writes a horizontal bar chart of every ours/floor ratio.
    pub fn write_svg(&self, path: &Path) -> Result<(), String> {
        crate::results_chart::draw(self, path)
    }
}

/// A number for the table: 3 significant-ish digits, `-` when missing.
pub fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            commit: "abc1234".into(),
            server_bin: "target/release/scaled-sockets".into(),
            nproc: 2,
            cpu_model: "AMD EPYC".into(),
            command: "scripts/bench".into(),
            runs: 3,
            seconds: 6.0,
            loadavg_start: "0.50 0.40 0.30 1/100 1".into(),
            loadavg_end: "0.50 0.40 0.30 1/100 2".into(),
        }
    }

    #[test]
    fn record_keeps_runs_and_medians_per_target() {
        let mut r = Results::new(meta());
        for (o, f) in [(10.0, 20.0), (30.0, 40.0), (20.0, 30.0)] {
            r.record("W1", "2 instances", "deliveries/s", "1/s", Target::Ours, o);
            r.record("W1", "2 instances", "deliveries/s", "1/s", Target::Floor, f);
        }
        r.record("W1", "1 instance", "deliveries/s", "1/s", Target::Ours, 5.0);
        assert_eq!(r.metrics.len(), 2);
        let m = &r.metrics[0];
        assert_eq!(m.ours, vec![10.0, 30.0, 20.0]);
        assert_eq!(m.ours_median, Some(20.0));
        assert_eq!(m.floor_median, Some(30.0));
        assert_eq!(m.ratio, Some(20.0 / 30.0));
        assert_eq!(r.metrics[1].ratio, None, "no floor figure, no ratio");
    }

    #[test]
    fn json_round_trips_and_has_the_documented_fields() {
        let mut r = Results::new(meta());
        r.record(
            "W3",
            "10000 conns",
            "RSS per connection",
            "bytes",
            Target::Ours,
            4000.0,
        );
        r.record(
            "W3",
            "10000 conns",
            "RSS per connection",
            "bytes",
            Target::Floor,
            2000.0,
        );
        r.skipped.push("W4: demo binary missing".into());
        let text = r.to_json();
        let back: Results = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["meta"]["commit"], "abc1234");
        assert_eq!(v["metrics"][0]["ratio"], 2.0);
        assert_eq!(v["metrics"][0]["floor"][0], 2000.0);
    }

    #[test]
    fn table_shows_medians_ratio_and_skips() {
        let mut r = Results::new(meta());
        r.record(
            "W1",
            "1 instance",
            "deliveries/s",
            "1/s",
            Target::Ours,
            123456.0,
        );
        r.skipped.push("W4: no demo".into());
        let t = r.table();
        assert!(t.contains("123456"), "{t}");
        assert!(t.contains("skipped: W4: no demo"), "{t}");
        assert_eq!(fmt_num(None), "-");
        assert_eq!(fmt_num(Some(0.5)), "0.500");
    }
}
