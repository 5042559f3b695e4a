//! Inter-token latency (ITL) distributions in one pass over the result files, in bounded
//! memory and exactly.
//!
//! A run of ten million requests holds about a billion content-event gaps: exploding them
//! into one column would take gigabytes. Gaps are recorded in whole microseconds, so an
//! exact distribution is a count per distinct value: [`Counts`] keeps a dense array for
//! values below [`DENSE`] µs (where nearly all gaps fall) and a sorted map above it, and
//! its percentiles are the same linear interpolation between order statistics that
//! [`crate::metrics`] uses (numpy's default), computed from cumulative counts.
//!
//! [`pass`] reads only the columns it needs (`phase`, `sent`, `status`, `error_kind`,
//! `itl_us`) batch by batch and adds each measured successful request's gaps, as one run, to
//! the counts of its (window, phase) and of any event range holding its `sent`. When all of
//! a window's successful requests have been seen (the count comes from the window
//! aggregation) its counts are added to their phases, turned into the window's [`Dist`] and
//! freed, so each gap is counted once and memory follows the windows in flight rather than
//! the run's length.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt32Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::ReportError;
use crate::metrics::Dist;

/// Values below this many µs are counted in a dense array (1 s: ITLs are tens of ms).
pub const DENSE: u32 = 1 << 16;

/// An exact distribution of whole-µs values.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    dense: Vec<u64>,
    sparse: BTreeMap<u32, u64>,
    count: u64,
    sum: u128,
    min: u32,
    max: u32,
}

impl Counts {
    /// Adds one value.
    #[inline]
    pub fn add(&mut self, v: u32) {
        if v < DENSE {
            if self.dense.is_empty() {
                self.dense = vec![0; DENSE as usize];
            }
            self.dense[v as usize] += 1;
        } else {
            *self.sparse.entry(v).or_insert(0) += 1;
        }
        if self.count == 0 {
            self.min = v;
            self.max = v;
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.count += 1;
        self.sum += v as u128;
    }

    /// Adds a run of values (one request's gaps): the bounds and sum per run, the counts
    /// per value.
    #[inline]
    pub fn add_all(&mut self, vs: &[u32]) {
        if vs.is_empty() {
            return;
        }
        if self.dense.is_empty() {
            self.dense = vec![0; DENSE as usize];
        }
        let (mut lo, mut hi, mut sum) = (u32::MAX, 0u32, 0u64);
        for &v in vs {
            if v < DENSE {
                self.dense[v as usize] += 1;
            } else {
                *self.sparse.entry(v).or_insert(0) += 1;
            }
            lo = lo.min(v);
            hi = hi.max(v);
            sum += v as u64;
        }
        if self.count == 0 {
            (self.min, self.max) = (lo, hi);
        } else {
            self.min = self.min.min(lo);
            self.max = self.max.max(hi);
        }
        self.count += vs.len() as u64;
        self.sum += sum as u128;
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Counts) {
        if other.count == 0 {
            return;
        }
        if !other.dense.is_empty() {
            if self.dense.is_empty() {
                self.dense = other.dense.clone();
            } else {
                for (a, b) in self.dense.iter_mut().zip(&other.dense) {
                    *a += b;
                }
            }
        }
        for (&v, &n) in &other.sparse {
            *self.sparse.entry(v).or_insert(0) += n;
        }
        if self.count == 0 {
            (self.min, self.max) = (other.min, other.max);
        } else {
            self.min = self.min.min(other.min);
            self.max = self.max.max(other.max);
        }
        self.count += other.count;
        self.sum += other.sum;
    }

    /// How many values.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The values in ascending order with their counts.
    fn ascending(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.dense
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(v, &n)| (v as u32, n))
            .chain(self.sparse.iter().map(|(&v, &n)| (v, n)))
    }

    /// The values at 0-based ranks `ranks` (ascending), in one walk.
    fn at_ranks(&self, ranks: &[u64]) -> Vec<u32> {
        let mut out = Vec::with_capacity(ranks.len());
        let mut seen = 0u64;
        let mut it = ranks.iter().peekable();
        for (v, n) in self.ascending() {
            seen += n;
            while let Some(&&r) = it.peek() {
                if r < seen {
                    out.push(v);
                    it.next();
                } else {
                    break;
                }
            }
            if it.peek().is_none() {
                break;
            }
        }
        while out.len() < ranks.len() {
            out.push(self.max);
        }
        out
    }

    /// The values (ms) at probabilities `probs` (0-1), by linear interpolation between
    /// order statistics (numpy's default); NaN when empty.
    pub fn quantiles(&self, probs: &[f64]) -> Vec<f64> {
        let n = self.count;
        if n == 0 {
            return vec![f64::NAN; probs.len()];
        }
        let pos: Vec<f64> = probs
            .iter()
            .map(|q| q.clamp(0.0, 1.0) * (n - 1) as f64)
            .collect();
        let mut ranks: Vec<u64> = pos
            .iter()
            .flat_map(|p| [p.floor() as u64, (p.ceil() as u64).min(n - 1)])
            .collect();
        ranks.sort_unstable();
        ranks.dedup();
        let values = self.at_ranks(&ranks);
        let value_at = |r: u64| values[ranks.partition_point(|&x| x < r)] as f64;
        pos.iter()
            .map(|p| {
                let (lo, hi) = (
                    value_at(p.floor() as u64),
                    value_at((p.ceil() as u64).min(n - 1)),
                );
                (lo + (hi - lo) * (p - p.floor())) / 1000.0
            })
            .collect()
    }

    /// The distribution in ms, percentiles by linear interpolation (numpy's default).
    pub fn dist(&self) -> Dist {
        let q = self.quantiles(&[0.5, 0.9, 0.95, 0.99, 0.999]);
        if self.count == 0 {
            return Dist {
                count: 0,
                mean: f64::NAN,
                min: f64::NAN,
                p50: f64::NAN,
                p90: f64::NAN,
                p95: f64::NAN,
                p99: f64::NAN,
                p999: f64::NAN,
                max: f64::NAN,
            };
        }
        Dist {
            count: self.count,
            mean: self.sum as f64 / self.count as f64 / 1000.0,
            min: self.min as f64 / 1000.0,
            p50: q[0],
            p90: q[1],
            p95: q[2],
            p99: q[3],
            p999: q[4],
            max: self.max as f64 / 1000.0,
        }
    }
}

/// What [`pass`] needs to know about the run.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The windows' origin (first scheduled request), ns.
    pub t0: i64,
    /// Window length, ns.
    pub window_ns: i64,
    /// Successful measured requests per window (frees a window's counts once all are seen).
    pub ok_per_window: HashMap<i64, u64>,
    /// Ranges of `sent` (ns, half-open) whose gaps are wanted apart (events).
    pub ranges: Vec<(i64, i64)>,
}

/// The ITL distributions of a run.
#[derive(Debug, Clone, Default)]
pub struct Gaps {
    /// All measured successful requests.
    pub overall: Dist,
    /// By phase.
    pub phases: HashMap<String, Dist>,
    /// By window index.
    pub windows: HashMap<i64, Dist>,
    /// By range of [`Plan::ranges`], in order.
    pub ranges: Vec<Dist>,
    /// The overall CDF: (percentile, ms) at [`crate::metrics::CDF_PROBS`].
    pub cdf: Vec<(f64, f64)>,
}

fn cast(
    file: &Path,
    batch: &RecordBatch,
    name: &str,
    to: &DataType,
) -> Result<arrow_array::ArrayRef, ReportError> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| ReportError::Input(format!("{}: no column {name}", file.display())))?;
    arrow_cast::cast(col, to)
        .map_err(|e| ReportError::Input(format!("{}: column {name}: {e}", file.display())))
}

/// A window in flight: its counts split by phase (a window may straddle two steps), and
/// how many of its successful requests have been seen.
#[derive(Default)]
struct WindowCounts {
    by_phase: Vec<(usize, Counts)>,
    seen: u64,
}

impl WindowCounts {
    fn phase(&mut self, p: usize) -> &mut Counts {
        let i = match self.by_phase.iter().position(|(q, _)| *q == p) {
            Some(i) => i,
            None => {
                self.by_phase.push((p, Counts::default()));
                self.by_phase.len() - 1
            }
        };
        &mut self.by_phase[i].1
    }

    /// Adds the window's counts to their phases and returns the window's distribution.
    fn close(self, phases: &mut [Counts]) -> Dist {
        let mut all = Counts::default();
        for (p, c) in &self.by_phase {
            phases[*p].merge(c);
            all.merge(c);
        }
        all.dist()
    }
}

/// Counts the gaps of the measured successful requests of `files` (a run's result parts).
pub fn pass(files: &[PathBuf], plan: &Plan) -> Result<Gaps, ReportError> {
    // Each gap is counted once, in its (window, phase) counts; a window's counts go to its
    // phases when it closes.
    let mut phase_index: HashMap<String, usize> = HashMap::new();
    let mut phases: Vec<Counts> = Vec::new();
    let mut open: HashMap<i64, WindowCounts> = HashMap::new();
    let mut windows: HashMap<i64, Dist> = HashMap::new();
    let mut ranges: Vec<Counts> = vec![Counts::default(); plan.ranges.len()];
    let list_u32 = DataType::List(std::sync::Arc::new(arrow_schema::Field::new(
        "item",
        DataType::UInt32,
        true,
    )));
    for file in files {
        let io = |e: parquet::errors::ParquetError| {
            ReportError::Input(format!("{}: {e}", file.display()))
        };
        let f = File::open(file).map_err(|source| ReportError::Io {
            path: file.clone(),
            source,
        })?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(f).map_err(io)?;
        let wanted = ["phase", "sent", "status", "error_kind", "itl_us"];
        let mut roots = Vec::with_capacity(wanted.len());
        for name in wanted {
            let i = builder
                .schema()
                .index_of(name)
                .map_err(|_| ReportError::Input(format!("{}: no column {name}", file.display())))?;
            roots.push(i);
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(64 * 1024)
            .build()
            .map_err(io)?;
        for batch in reader {
            let batch =
                batch.map_err(|e| ReportError::Input(format!("{}: {e}", file.display())))?;
            let phase = cast(file, &batch, "phase", &DataType::Utf8)?;
            let phase = phase.as_string::<i32>();
            let sent = cast(file, &batch, "sent", &DataType::Int64)?;
            let sent = sent.as_primitive::<Int64Type>();
            let status = cast(file, &batch, "status", &DataType::Int64)?;
            let status = status.as_primitive::<Int64Type>();
            let error_kind = batch.column_by_name("error_kind").expect("projected");
            let itl = cast(file, &batch, "itl_us", &list_u32)?;
            let itl = itl.as_list::<i32>();
            let values = itl.values().as_primitive::<UInt32Type>();
            let offsets = itl.value_offsets();
            for row in 0..batch.num_rows() {
                if phase.is_null(row) || phase.value(row) == "warmup" {
                    continue;
                }
                let ok = status.is_valid(row)
                    && (200..300).contains(&status.value(row))
                    && error_kind.is_null(row);
                if !ok || sent.is_null(row) {
                    continue;
                }
                let name = phase.value(row);
                let p = match phase_index.get(name) {
                    Some(&i) => i,
                    None => {
                        phase_index.insert(name.to_owned(), phases.len());
                        phases.push(Counts::default());
                        phases.len() - 1
                    }
                };
                let s = sent.value(row);
                let (a, b) = (offsets[row] as usize, offsets[row + 1] as usize);
                let gaps = if itl.is_null(row) {
                    &[][..]
                } else {
                    &values.values()[a..b]
                };
                let w = (s - plan.t0).div_euclid(plan.window_ns.max(1));
                let wc = open.entry(w).or_default();
                wc.phase(p).add_all(gaps);
                wc.seen += 1;
                if plan.ok_per_window.get(&w).is_some_and(|&n| wc.seen >= n) {
                    let done = open.remove(&w).expect("open");
                    windows.insert(w, done.close(&mut phases));
                }
                for (i, &(from, to)) in plan.ranges.iter().enumerate() {
                    if s >= from && s < to {
                        ranges[i].add_all(gaps);
                    }
                }
            }
        }
    }
    for (w, c) in open {
        windows.insert(w, c.close(&mut phases));
    }
    let mut overall = Counts::default();
    for c in &phases {
        overall.merge(c);
    }
    let cdf = crate::metrics::CDF_PROBS
        .iter()
        .map(|p| p * 100.0)
        .zip(overall.quantiles(&crate::metrics::CDF_PROBS))
        .collect();
    Ok(Gaps {
        cdf,
        overall: overall.dist(),
        phases: phase_index
            .into_iter()
            .map(|(k, i)| (k, phases[i].dist()))
            .collect(),
        windows,
        ranges: ranges.iter().map(Counts::dist).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn np(values: &[u32], q: f64) -> f64 {
        let mut v: Vec<f64> = values.iter().map(|&x| x as f64).collect();
        v.sort_by(f64::total_cmp);
        let pos = q * (v.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        (v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)) / 1000.0
    }

    #[test]
    fn counts_match_numpy_on_dense_and_sparse_values() {
        let mut values: Vec<u32> = (0..5000u32).map(|i| (i * 7919) % 90_000).collect();
        values.extend([DENSE - 1, DENSE, DENSE + 1, u32::MAX, 0, 0, 0]);
        let mut a = Counts::default();
        let mut b = Counts::default();
        for (i, &v) in values.iter().enumerate() {
            if i % 2 == 0 { a.add(v) } else { b.add(v) }
        }
        a.merge(&b);
        let d = a.dist();
        assert_eq!(d.count, values.len() as u64);
        for (q, got) in [
            (0.5, d.p50),
            (0.9, d.p90),
            (0.95, d.p95),
            (0.99, d.p99),
            (0.999, d.p999),
        ] {
            assert!(
                (got - np(&values, q)).abs() < 1e-9,
                "q{q}: {got} vs {}",
                np(&values, q)
            );
        }
        assert_eq!((d.min, d.max), (0.0, u32::MAX as f64 / 1000.0));
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64 / 1000.0;
        assert!((d.mean - mean).abs() < 1e-9);
    }

    #[test]
    fn runs_count_as_single_values() {
        let runs: [&[u32]; 4] = [&[5, 70_000, 3], &[], &[DENSE, 0], &[9]];
        let (mut one, mut all) = (Counts::default(), Counts::default());
        for r in runs {
            r.iter().for_each(|&v| one.add(v));
            all.add_all(r);
        }
        assert_eq!(one.dist(), all.dist());
        assert_eq!(
            one.quantiles(&[0.0, 0.3, 1.0]),
            all.quantiles(&[0.0, 0.3, 1.0])
        );
    }

    #[test]
    fn one_value_and_none() {
        let mut c = Counts::default();
        assert_eq!(c.dist().count, 0);
        assert!(c.dist().p50.is_nan());
        c.add(1500);
        let d = c.dist();
        assert_eq!(
            (d.count, d.p50, d.p999, d.min, d.max),
            (1, 1.5, 1.5, 1.5, 1.5)
        );
    }
}
