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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::column::reader::{ColumnReaderImpl, get_typed_column_reader};
use parquet::data_type::Int32Type;
use parquet::file::reader::{FileReader, SerializedFileReader};

use crate::ReportError;
use crate::metrics::Dist;

/// Values below this many µs are counted in a dense array (1 s: ITLs are tens of ms).
pub const DENSE: u32 = 1 << 16;

/// An exact distribution of whole-µs values.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Counts of the values below [`DENSE`], as u32 while no count can overflow one (half
    /// the cache footprint of u64: the table stays in a core's L2 while a window fills).
    dense: Vec<u32>,
    /// The same as u64, once the total could pass `u32::MAX` (then `dense` is empty).
    wide: Vec<u64>,
    sparse: BTreeMap<u32, u64>,
    count: u64,
    sum: u128,
    min: u32,
    max: u32,
}

impl Counts {
    /// Adds one value.
    pub fn add(&mut self, v: u32) {
        self.add_all(&[v]);
    }

    /// Moves the dense counts to u64 (allocating them if there were none).
    fn widen(&mut self) {
        if self.wide.is_empty() {
            self.wide = if self.dense.is_empty() {
                vec![0; DENSE as usize]
            } else {
                self.dense.iter().map(|&n| n as u64).collect()
            };
            self.dense = Vec::new();
        }
    }

    /// Adds a run of values (one request's gaps): the bounds and sum per run, the counts
    /// per value.
    #[inline]
    pub fn add_all(&mut self, vs: &[u32]) {
        if vs.is_empty() {
            return;
        }
        // Two copies of the loop, one per count width: the hot loop of the ITL pass (a
        // billion values in the 10M benchmark), where a generic helper measured ~1 s slower.
        let (mut lo, mut hi, mut sum) = (u32::MAX, 0u32, 0u64);
        if self.wide.is_empty() && self.count + vs.len() as u64 <= u32::MAX as u64 {
            if self.dense.is_empty() {
                self.dense = vec![0; DENSE as usize];
            }
            let dense = &mut self.dense[..DENSE as usize];
            for &v in vs {
                if v < DENSE {
                    dense[v as usize] += 1;
                } else {
                    *self.sparse.entry(v).or_insert(0) += 1;
                }
                lo = lo.min(v);
                hi = hi.max(v);
                sum += v as u64;
            }
        } else {
            self.widen();
            let wide = &mut self.wide[..DENSE as usize];
            for &v in vs {
                if v < DENSE {
                    wide[v as usize] += 1;
                } else {
                    *self.sparse.entry(v).or_insert(0) += 1;
                }
                lo = lo.min(v);
                hi = hi.max(v);
                sum += v as u64;
            }
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

    /// The nonzero dense counts in ascending order of value.
    fn dense_counts(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        let narrow = self.dense.iter().map(|&n| n as u64);
        let wide = self.wide.iter().copied();
        // At most one of the two holds counts.
        narrow
            .enumerate()
            .chain(wide.enumerate())
            .filter(|(_, n)| *n > 0)
            .map(|(v, n)| (v as u32, n))
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Counts) {
        if other.count == 0 {
            return;
        }
        let narrow = self.wide.is_empty()
            && other.wide.is_empty()
            && self.count + other.count <= u32::MAX as u64;
        if narrow {
            if !other.dense.is_empty() {
                if self.dense.is_empty() {
                    self.dense = other.dense.clone();
                } else {
                    for (a, b) in self.dense.iter_mut().zip(&other.dense) {
                        *a += b;
                    }
                }
            }
        } else {
            self.widen();
            for (v, n) in other.dense_counts() {
                self.wide[v as usize] += n;
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
        self.dense_counts()
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
        let (pos, ranks) = crate::metrics::rank_plan(n, probs);
        let at: Vec<f64> = self.at_ranks(&ranks).iter().map(|&v| v as f64).collect();
        crate::metrics::interpolate(n, &pos, &ranks, &at)
            .iter()
            .map(|v| v / 1000.0)
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

/// Windows held open before their counts are known (at most 512 KiB each per phase, so
/// about 256 MiB); past this, [`pass`] waits for them.
const MAX_OPEN_BLIND: usize = 512;

/// What [`pass`] needs to know about the run.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The windows' origin (first scheduled request), ns.
    pub t0: i64,
    /// Window length, ns.
    pub window_ns: i64,
    /// Successful measured requests per window, once known (frees a window's counts once
    /// all are seen). The pass may start before the window aggregation has given them: until
    /// then windows stay open.
    pub ok_per_window: Arc<OnceLock<HashMap<i64, u64>>>,
    /// Ranges of `sent` (ns, half-open) whose gaps are wanted apart (events).
    pub ranges: Vec<(i64, i64)>,
    /// Set when the rest of the analysis failed: the pass gives up at its next batch.
    pub stop: Arc<AtomicBool>,
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
    /// Whether the pass had to wait for the window counts (more than `MAX_OPEN_BLIND`
    /// windows were open without them).
    pub waited: bool,
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
    /// How many there are, once known.
    expected: Option<u64>,
}

/// A hasher for window indices (small integers looked up once per request): a multiply
/// instead of SipHash.
#[derive(Default)]
struct IndexHasher(u64);

impl std::hash::Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_i64(&mut self, v: i64) {
        self.0 = (v as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type ByWindow<V> = HashMap<i64, V, std::hash::BuildHasherDefault<IndexHasher>>;

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

/// The `itl_us` column of one result file, read record by record with parquet's column
/// reader: the values and levels are decoded straight into reused buffers, without building
/// arrow list arrays (about 1.6x faster on a billion gaps).
struct ItlColumn {
    file: PathBuf,
    reader: SerializedFileReader<File>,
    leaf: usize,
    max_def: i16,
    row_group: usize,
    column: Option<ColumnReaderImpl<Int32Type>>,
    def: Vec<i16>,
    rep: Vec<i16>,
    values: Vec<i32>,
    /// Per record read into the buffers: (first value, value count).
    records: Vec<(usize, usize)>,
}

impl ItlColumn {
    fn open(file: &Path) -> Result<ItlColumn, ReportError> {
        let f = File::open(file).map_err(|source| ReportError::Io {
            path: file.to_owned(),
            source,
        })?;
        let reader = SerializedFileReader::new(f)
            .map_err(|e| ReportError::Input(format!("{}: {e}", file.display())))?;
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let leaf = schema
            .columns()
            .iter()
            .position(|c| c.path().parts().first().is_some_and(|p| p == "itl_us"))
            .ok_or_else(|| ReportError::Input(format!("{}: no column itl_us", file.display())))?;
        let descr = schema.column(leaf);
        if descr.physical_type() != parquet::basic::Type::INT32 || descr.max_rep_level() != 1 {
            return Err(ReportError::Input(format!(
                "{}: column itl_us: expected a list of uint32, found {:?} values at repetition level {}",
                file.display(),
                descr.physical_type(),
                descr.max_rep_level()
            )));
        }
        Ok(ItlColumn {
            file: file.to_owned(),
            max_def: descr.max_def_level(),
            reader,
            leaf,
            row_group: 0,
            column: None,
            def: Vec::new(),
            rep: Vec::new(),
            values: Vec::new(),
            records: Vec::new(),
        })
    }

    fn error(&self, e: impl std::fmt::Display) -> ReportError {
        ReportError::Input(format!(
            "{}: column itl_us, row group {}: {e}",
            self.file.display(),
            self.row_group
        ))
    }

    /// Reads the next `n` records into the buffers (fewer only at the end of the file).
    fn read(&mut self, n: usize) -> Result<(), ReportError> {
        self.def.clear();
        self.rep.clear();
        self.values.clear();
        self.records.clear();
        let mut got = 0;
        while got < n {
            if self.column.is_none() {
                if self.row_group >= self.reader.num_row_groups() {
                    break;
                }
                let rg = self
                    .reader
                    .get_row_group(self.row_group)
                    .map_err(|e| self.error(e))?;
                let col = rg.get_column_reader(self.leaf).map_err(|e| self.error(e))?;
                self.column = Some(get_typed_column_reader::<Int32Type>(col));
            }
            let column = self.column.as_mut().expect("set above");
            let read = column.read_records(
                n - got,
                Some(&mut self.def),
                Some(&mut self.rep),
                &mut self.values,
            );
            let (records, _, _) = read.map_err(|e| self.error(e))?;
            if records == 0 {
                self.column = None;
                self.row_group += 1;
            }
            got += records;
        }
        // Record boundaries: a repetition level of 0 starts a record; a level at the
        // maximum definition level carries a value. Records are long (one level per gap),
        // so the starts are found a block at a time and each record's values counted in
        // one (vectorised) sweep of its levels.
        let mut value = 0usize;
        let starts = record_starts(&self.rep);
        for (i, &a) in starts.iter().enumerate() {
            let b = starts.get(i + 1).copied().unwrap_or(self.rep.len());
            let max_def = self.max_def;
            let n = self.def[a..b].iter().filter(|&&d| d == max_def).count();
            self.records.push((value, n));
            value += n;
        }
        if self.records.len() != got || value != self.values.len() {
            return Err(self.error(format!(
                "{} records and {} values decoded, {} records and {} values expected",
                self.records.len(),
                value,
                got,
                self.values.len()
            )));
        }
        Ok(())
    }

    /// The gaps of record `i` of the last [`ItlColumn::read`].
    fn gaps(&self, i: usize) -> &[u32] {
        let (first, n) = self.records[i];
        // INT32 is the physical type of the uint32 values: the same bits.
        bytemuck::cast_slice(&self.values[first..first + n])
    }
}

/// The positions of the zeros of `rep` (where records start), scanning 32 levels at a time.
fn record_starts(rep: &[i16]) -> Vec<usize> {
    let mut out = Vec::with_capacity(rep.len() / 64 + 1);
    let mut base = 0;
    for block in rep.chunks(32) {
        if block.iter().fold(false, |any, &r| any | (r == 0)) {
            out.extend(
                block
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| **r == 0)
                    .map(|(i, _)| base + i),
            );
        }
        base += block.len();
    }
    out
}

/// Counts the gaps of the measured successful requests of `files` (a run's result parts).
pub fn pass(files: &[PathBuf], plan: &Plan) -> Result<Gaps, ReportError> {
    // Each gap is counted once, in its (window, phase) counts; a window's counts go to its
    // phases when it closes.
    let mut phase_index: HashMap<String, usize> = HashMap::new();
    let mut phases: Vec<Counts> = Vec::new();
    let mut open: ByWindow<WindowCounts> = ByWindow::default();
    let mut windows: HashMap<i64, Dist> = HashMap::new();
    let mut ranges: Vec<Counts> = vec![Counts::default(); plan.ranges.len()];
    let mut counts_known = false;
    let mut waited = false;
    let mut last_phase: Option<(String, usize)> = None;
    for file in files {
        let io = |e: parquet::errors::ParquetError| {
            ReportError::Input(format!("{}: {e}", file.display()))
        };
        let f = File::open(file).map_err(|source| ReportError::Io {
            path: file.clone(),
            source,
        })?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(f).map_err(io)?;
        let wanted = ["phase", "sent", "status", "error_kind"];
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
            .with_batch_size(4 * 1024)
            .build()
            .map_err(io)?;
        let mut itl = ItlColumn::open(file)?;
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
            if plan.stop.load(Ordering::Relaxed) {
                return Ok(Gaps::default());
            }
            itl.read(batch.num_rows())?;
            if !counts_known && open.len() >= MAX_OPEN_BLIND {
                // Many windows and their counts still unknown (a long run, a short window):
                // wait for the window aggregation rather than hold them all.
                plan.ok_per_window.wait();
                waited = true;
                if plan.stop.load(Ordering::Relaxed) {
                    return Ok(Gaps::default());
                }
            }
            let ok_per_window = plan.ok_per_window.get();
            if !counts_known && let Some(expected) = ok_per_window {
                // The window counts have just arrived: close what is already complete.
                counts_known = true;
                for (w, c) in open.iter_mut() {
                    c.expected = expected.get(w).copied();
                }
                let done: Vec<i64> = open
                    .iter()
                    .filter(|(_, c)| c.expected.is_some_and(|n| c.seen >= n))
                    .map(|(w, _)| *w)
                    .collect();
                for w in done {
                    let c = open.remove(&w).expect("open");
                    windows.insert(w, c.close(&mut phases));
                }
            }
            for row in 0..batch.num_rows() {
                if phase.is_null(row) {
                    continue;
                }
                let name = phase.value(row);
                if name == "warmup" {
                    continue;
                }
                let ok = status.is_valid(row)
                    && (200..300).contains(&status.value(row))
                    && error_kind.is_null(row);
                if !ok || sent.is_null(row) {
                    continue;
                }
                let p = match &last_phase {
                    Some((n, i)) if n == name => *i,
                    _ => {
                        let i = match phase_index.get(name) {
                            Some(&i) => i,
                            None => {
                                phase_index.insert(name.to_owned(), phases.len());
                                phases.push(Counts::default());
                                phases.len() - 1
                            }
                        };
                        last_phase = Some((name.to_owned(), i));
                        i
                    }
                };
                let s = sent.value(row);
                let gaps = itl.gaps(row);
                let w = (s - plan.t0).div_euclid(plan.window_ns.max(1));
                let wc = open.entry(w).or_insert_with(|| WindowCounts {
                    expected: ok_per_window.and_then(|m| m.get(&w).copied()),
                    ..WindowCounts::default()
                });
                wc.phase(p).add_all(gaps);
                wc.seen += 1;
                if wc.expected.is_some_and(|n| wc.seen >= n) {
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
        waited,
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

    fn result(i: usize, sent_ns: i64, gaps: Vec<u32>) -> reprise_trace::ResultRecord {
        use reprise_trace::{ResultRecord, Timestamp, TraceRecord};
        ResultRecord {
            request: TraceRecord::new(format!("r{i}"), Timestamp(0)),
            run_id: "t".into(),
            target: "http://x".into(),
            phase: "measure".into(),
            step_value: None,
            shard: 0,
            scheduled: Timestamp(sent_ns),
            sent: Some(Timestamp(sent_ns)),
            first_chunk: None,
            first_token: None,
            done: Some(Timestamp(sent_ns + 1)),
            queue_us: None,
            ttft_us: None,
            e2e_us: None,
            ttft_sched_us: None,
            e2e_sched_us: None,
            tpot_us: None,
            itl_us: Some(gaps),
            n_in_usage: None,
            n_out_usage: None,
            n_cached_usage: None,
            n_out_counted: None,
            status: Some(200),
            error_kind: None,
            error: None,
        }
    }

    #[test]
    fn the_pass_waits_for_window_counts_past_its_open_limit_and_stops_when_told() {
        use reprise_trace::{DatasetWriter, Output, ResultRecord, WriterOptions};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("requests.parquet");
        let mut w = DatasetWriter::<ResultRecord>::create(
            Output::File(file.clone()),
            WriterOptions::default(),
        )
        .unwrap();
        // 16 requests per 1-s window: two batches read (4,096 rows each) open as many
        // windows as the limit, the third must wait.
        let windows = 3 * MAX_OPEN_BLIND as i64;
        for i in 0..windows * 16 {
            let (window, k) = (i / 16, i % 16);
            let sent = window * 1_000_000_000 + k * 1_000_000;
            w.write(&result(i as usize, sent, vec![1000 + window as u32, 5]))
                .unwrap();
        }
        w.close().unwrap();
        let plan = Plan {
            window_ns: 1_000_000_000,
            ..Plan::default()
        };
        let files = vec![file];
        std::thread::scope(|scope| {
            let pass = scope.spawn(|| pass(&files, &plan));
            std::thread::sleep(std::time::Duration::from_millis(300));
            assert!(!pass.is_finished(), "the pass should wait for the counts");
            plan.ok_per_window
                .set((0..windows).map(|w| (w, 16)).collect())
                .unwrap();
            let g = pass.join().unwrap().unwrap();
            assert!(g.waited);
            assert_eq!(g.windows.len(), windows as usize);
            assert_eq!(g.windows[&300].count, 32);
            assert_eq!(g.windows[&300].max, 1.3);
            assert_eq!(g.overall.count, 32 * windows as u64);
        });
        // Told to stop (the rest of the analysis failed): it gives up instead of waiting.
        let plan = Plan {
            window_ns: 1_000_000_000,
            ..Plan::default()
        };
        std::thread::scope(|scope| {
            let pass = scope.spawn(|| pass(&files, &plan));
            std::thread::sleep(std::time::Duration::from_millis(100));
            plan.stop.store(true, Ordering::Relaxed);
            let _ = plan.ok_per_window.set(HashMap::new());
            let g = pass.join().unwrap().unwrap();
            assert_eq!(g.overall.count, 0);
        });
    }

    #[test]
    fn counts_widen_before_a_u32_could_overflow() {
        let mut a = Counts::default();
        a.add_all(&[5, 5, 70_000]);
        let mut b = a.clone();
        // As if four billion values had been counted: the next run must not overflow.
        b.count = u32::MAX as u64 - 1;
        b.add_all(&[5, 6]);
        assert!(b.dense.is_empty() && b.wide[5] == 3 && b.wide[6] == 1);
        let mut c = Counts {
            count: u32::MAX as u64,
            dense: vec![0; DENSE as usize],
            ..Counts::default()
        };
        c.dense[7] = 2;
        let mut d = a.clone();
        d.merge(&c);
        assert!(d.dense.is_empty());
        assert_eq!((d.wide[5], d.wide[7]), (2, 2));
        assert_eq!(d.sparse[&70_000], 1);
        let narrow: Vec<(u32, u64)> = a.ascending().collect();
        assert_eq!(narrow, vec![(5, 2), (70_000, 1)]);
        let wide: Vec<(u32, u64)> = b.ascending().collect();
        assert_eq!(wide, vec![(5, 3), (6, 1), (70_000, 1)]);
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
