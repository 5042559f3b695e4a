//! # reprise-live — live metrics in the Prometheus text format
//!
//! What a running replay (and the capture proxy's admin port) exposes on `/metrics` while it
//! runs, for Prometheus to scrape and Grafana to draw:
//!
//! - [`buckets`]: the one list of histogram bucket bounds, fixed and log-spaced (25 a decade,
//!   so no bucket is wider than 10% of its lower bound): latencies from 1 ms to 600 s, the
//!   schedule lag from 1 µs to 600 s. Fixed bounds make histograms from several workers add
//!   up bucket by bucket (`sum by (le)`), which summaries and running percentiles cannot.
//! - [`Histogram`], [`Counter`], [`Gauge`]: lock-free, updated from any thread with relaxed
//!   atomics (a histogram observation is a binary search and two atomic adds).
//! - [`Registry`]: families of series keyed by bounded label sets, rendered as Prometheus
//!   text (0.0.4) or, when the scraper asks for it, OpenMetrics 1.0 ([`Format`]).
//!
//! No I/O here: the binaries' servers call [`Registry::render`].

pub mod buckets;
mod registry;

pub use registry::{Counter, Format, Gauge, Histogram, Kind, Labels, Registry, delta, quantile};
