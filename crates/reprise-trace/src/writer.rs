//! The streaming dataset writer: batches rows, writes zstd Parquet with reprise metadata,
//! rotates part files by rows and by age, and renames each file from `*.tmp` only once it
//! is complete, so readers never see a half-written file.

use std::fs::{self, File};
use std::io::BufWriter;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::error::{Result, TraceError};
use crate::record::Row;

/// Metadata key naming the format, e.g. `trace/1`.
pub const META_FORMAT: &str = "reprise.format";
/// Metadata key naming the reprise version that wrote the file.
pub const META_VERSION: &str = "reprise.version";
/// Metadata key: prompt tokens per `prefix_hashes` block.
pub const META_BLOCK_TOKENS: &str = "reprise.block_tokens";
/// Metadata key: where the data came from (`azure`, `mooncake`, `capture`, ...).
pub const META_SOURCE: &str = "reprise.source";
/// Metadata key: tokenizer that counted `input_tokens`, when one did.
pub const META_TOKENIZER: &str = "reprise.tokenizer";

/// How a writer lays out its output and when it rotates part files.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Rows per Parquet row group (default 65,536).
    pub row_group_rows: usize,
    /// Rows buffered before they are encoded (default 8,192).
    pub batch_rows: usize,
    /// Start a new part file after this many rows (directory output only).
    pub part_max_rows: Option<u64>,
    /// Start a new part file when the open one is this old (directory output only).
    pub part_max_age: Option<Duration>,
    /// Extra key-value metadata (`reprise.format` and `reprise.version` are always set).
    pub metadata: Vec<(String, String)>,
    /// zstd level (default 3).
    pub zstd_level: i32,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            row_group_rows: 65_536,
            batch_rows: 8_192,
            part_max_rows: None,
            part_max_age: None,
            metadata: Vec::new(),
            zstd_level: 3,
        }
    }
}

impl WriterOptions {
    /// Adds a metadata entry.
    pub fn with_meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }
}

/// Where output goes: one file (`*.parquet`) or a directory of part files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A single Parquet file; no rotation.
    File(PathBuf),
    /// A directory of `part-NNNNNN.parquet` files.
    Dir(PathBuf),
}

impl Output {
    /// A path ending in `.parquet` is a file, anything else a directory.
    pub fn from_path(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        if path.extension().is_some_and(|e| e == "parquet") {
            Output::File(path)
        } else {
            Output::Dir(path)
        }
    }

    fn path(&self) -> &Path {
        match self {
            Output::File(p) | Output::Dir(p) => p,
        }
    }
}

/// What a closed writer produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Rows written.
    pub rows: u64,
    /// Finished files, in order.
    pub files: Vec<PathBuf>,
}

struct OpenPart {
    tmp: PathBuf,
    path: PathBuf,
    writer: ArrowWriter<BufWriter<File>>,
    rows: u64,
    opened: Instant,
}

/// Writes records of one format to a file or a directory of part files.
///
/// `close()` flushes and finishes the open file. Dropping the writer without `close()`
/// also finishes the open part (best effort, errors logged); every part that was finished
/// before is complete and valid in any case.
pub struct DatasetWriter<R: Row> {
    output: Output,
    options: WriterOptions,
    props: WriterProperties,
    /// The row's schema carrying the same key-value metadata, so that readers that show
    /// the Arrow schema (pyarrow, pandas) see the format, version and source too.
    schema: std::sync::Arc<arrow_schema::Schema>,
    builders: R::Builders,
    pending: usize,
    part: Option<OpenPart>,
    next_part: u64,
    summary: WriteSummary,
    failed: bool,
    _row: PhantomData<R>,
}

impl<R: Row> std::fmt::Debug for DatasetWriter<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatasetWriter")
            .field("format", &R::format_id())
            .field("output", &self.output)
            .field("rows", &self.summary.rows)
            .finish()
    }
}

impl<R: Row> DatasetWriter<R> {
    /// Creates a writer. A directory output is created if needed; part numbering continues
    /// after any parts already there.
    pub fn create(output: Output, options: WriterOptions) -> Result<Self> {
        let mut next_part = 0;
        match &output {
            Output::Dir(dir) => {
                fs::create_dir_all(dir).map_err(|e| TraceError::io(dir, e))?;
                for entry in fs::read_dir(dir).map_err(|e| TraceError::io(dir, e))? {
                    let entry = entry.map_err(|e| TraceError::io(dir, e))?;
                    if let Some(n) = part_number(&entry.file_name().to_string_lossy()) {
                        next_part = next_part.max(n + 1);
                    }
                }
            }
            Output::File(file) => {
                if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fs::create_dir_all(parent).map_err(|e| TraceError::io(parent, e))?;
                }
            }
        }
        let mut kv = vec![
            KeyValue::new(META_FORMAT.to_owned(), R::format_id()),
            KeyValue::new(
                META_VERSION.to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
        ];
        for (k, v) in &options.metadata {
            if k != META_FORMAT && k != META_VERSION {
                kv.push(KeyValue::new(k.clone(), v.clone()));
            }
        }
        let schema = std::sync::Arc::new(
            R::schema().as_ref().clone().with_metadata(
                kv.iter()
                    .map(|e| (e.key.clone(), e.value.clone().unwrap_or_default()))
                    .collect::<std::collections::HashMap<String, String>>(),
            ),
        );
        let level = ZstdLevel::try_new(options.zstd_level)
            .map_err(|e| TraceError::parquet(output.path(), e))?;
        // Dictionary encoding only where values repeat: text columns (run ids, targets,
        // phases, models, error classes). Times, latencies and counts are mostly distinct,
        // so a dictionary there only costs a hash of every value before parquet gives up on
        // it (11% of a replay's writer thread); zstd compresses them as well without.
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(options.row_group_rows.max(1)))
            .set_key_value_metadata(Some(kv))
            .set_dictionary_enabled(false);
        // Text columns keep no min/max statistics either: they cost a comparison of every
        // value (9% of a replay's writer thread), and no reader prunes by a run id's or a
        // phase's range; times, latencies and counts keep theirs.
        for field in schema.fields() {
            if matches!(
                field.data_type(),
                arrow_schema::DataType::Utf8 | arrow_schema::DataType::LargeUtf8
            ) {
                let column = parquet::schema::types::ColumnPath::from(field.name().as_str());
                props = props
                    .set_column_dictionary_enabled(column.clone(), true)
                    .set_column_statistics_enabled(
                        column,
                        parquet::file::properties::EnabledStatistics::None,
                    );
            }
        }
        let props = props.build();
        Ok(DatasetWriter {
            builders: R::builders(options.batch_rows),
            output,
            options,
            props,
            schema,
            pending: 0,
            part: None,
            next_part,
            summary: WriteSummary::default(),
            failed: false,
            _row: PhantomData,
        })
    }

    /// Opens the (first) part now rather than at the first row, so that its file
    /// descriptor is held from the start: a process that may run short of descriptors (a
    /// replay opening thousands of connections) cannot then lose its results to that.
    pub fn open_now(&mut self) -> Result<()> {
        self.check_usable()?;
        if self.part.is_none() {
            self.open_part()?;
        }
        Ok(())
    }

    /// Encodes `rows` exactly as a part would be encoded, into nothing: no file is written
    /// and no row counted. A long-running writer calls it once at start-up, on the thread
    /// that will write, so that the memory a part needs (column builders filled to a batch,
    /// parquet's page buffers, a zstd context per column) is allocated and first touched
    /// then, not under the first traffic; on a virtual machine a first touch can cost
    /// milliseconds per 2 MiB. Rows already buffered stay untouched: with any pending, this
    /// does nothing.
    pub fn rehearse(&mut self, rows: impl IntoIterator<Item = R>) -> Result<()> {
        self.check_usable()?;
        if self.pending != 0 {
            return Ok(());
        }
        let path = self.output.path().to_owned();
        let err = |e: parquet::errors::ParquetError| TraceError::parquet(&path, e);
        let mut sink = ArrowWriter::try_new(
            std::io::sink(),
            self.schema.clone(),
            Some(self.props.clone()),
        )
        .map_err(err)?;
        let mut buffered = 0;
        let mut rows = rows.into_iter().peekable();
        while let Some(row) = rows.next() {
            row.append_to(&mut self.builders);
            buffered += 1;
            if buffered >= self.options.batch_rows || rows.peek().is_none() {
                buffered = 0;
                sink.write(&self.finish_batch()?).map_err(err)?;
            }
        }
        sink.close().map_err(err)?;
        Ok(())
    }

    /// Appends one record.
    pub fn write(&mut self, record: &R) -> Result<()> {
        self.check_usable()?;
        if self.part.is_none() {
            self.open_part()?;
        }
        record.append_to(&mut self.builders);
        self.pending += 1;
        if self.pending >= self.options.batch_rows {
            self.encode_pending()?;
        }
        self.rotate_if_due()
    }

    /// Appends many records.
    pub fn write_all<'a>(&mut self, records: impl IntoIterator<Item = &'a R>) -> Result<()> {
        for r in records {
            self.write(r)?;
        }
        Ok(())
    }

    /// Rows accepted so far.
    pub fn rows(&self) -> u64 {
        self.summary.rows + self.pending as u64
    }

    /// Encodes buffered rows and ends the current row group, so they are on disk in the
    /// open `*.tmp` part (readable once the part is finished).
    pub fn flush(&mut self) -> Result<()> {
        self.check_usable()?;
        self.encode_pending()?;
        if let Some(part) = &mut self.part {
            let path = part.tmp.clone();
            part.writer
                .flush()
                .map_err(|e| self.fail(TraceError::parquet(path, e)))?;
        }
        Ok(())
    }

    /// Rotates the open part if it has reached its age limit; call it on idle ticks so that
    /// parts close on time even when no rows arrive.
    pub fn tick(&mut self) -> Result<()> {
        self.check_usable()?;
        self.rotate_if_due()
    }

    /// Finishes the current part (if any rows are in it) so it becomes a valid file now.
    pub fn finish_part(&mut self) -> Result<()> {
        self.check_usable()?;
        self.encode_pending()?;
        self.close_part()
    }

    /// Flushes everything and finishes the open file. An output that received no rows
    /// still gets one valid, empty file, so the schema is there for readers.
    ///
    /// When closing fails (a full disk, say), the unfinished `*.tmp` file is removed: no
    /// partial file is left behind, and files finished earlier are kept.
    pub fn close(mut self) -> Result<WriteSummary> {
        if let Err(e) = self.close_inner() {
            self.discard();
            return Err(e);
        }
        Ok(std::mem::take(&mut self.summary))
    }

    /// Abandons the output after a failure upstream: the open `*.tmp` part is deleted so no
    /// partial file looks complete. Parts finished earlier are kept.
    pub fn abort(mut self) {
        self.discard();
    }

    fn discard(&mut self) {
        self.failed = true;
        if let Some(part) = self.part.take() {
            drop(part.writer);
            if let Err(e) = fs::remove_file(&part.tmp) {
                tracing::warn!("removing {} failed: {e}", part.tmp.display());
            }
        }
    }

    fn close_inner(&mut self) -> Result<()> {
        self.check_usable()?;
        self.encode_pending()?;
        if self.part.is_none() && self.summary.files.is_empty() {
            self.open_part()?;
        }
        self.close_part()?;
        self.failed = true; // closed: no further writes
        Ok(())
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(TraceError::WriterClosed {
                path: self.output.path().to_owned(),
            });
        }
        Ok(())
    }

    fn fail(&mut self, err: TraceError) -> TraceError {
        self.failed = true;
        err
    }

    fn encode_pending(&mut self) -> Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let rows = self.pending;
        self.pending = 0;
        let batch = self.finish_batch()?;
        if self.part.is_none() {
            self.open_part()?;
        }
        let part = self.part.as_mut().expect("a part was just opened");
        if let Err(e) = part.writer.write(&batch) {
            let path = part.tmp.clone();
            return Err(self.fail(TraceError::parquet(path, e)));
        }
        part.rows += rows as u64;
        self.summary.rows += rows as u64;
        Ok(())
    }

    /// The builders' rows as one batch (the builders are left empty).
    fn finish_batch(&mut self) -> Result<RecordBatch> {
        RecordBatch::try_new(self.schema.clone(), R::finish(&mut self.builders))
            .map_err(|e| TraceError::parquet(self.output.path(), e))
    }

    fn rotate_if_due(&mut self) -> Result<()> {
        if !matches!(self.output, Output::Dir(_)) {
            return Ok(());
        }
        let Some(part) = &self.part else {
            return Ok(());
        };
        let by_rows = self
            .options
            .part_max_rows
            .is_some_and(|max| part.rows + self.pending as u64 >= max);
        let by_age = self
            .options
            .part_max_age
            .is_some_and(|max| part.opened.elapsed() >= max);
        if by_rows || by_age {
            self.encode_pending()?;
            self.close_part()?;
        }
        Ok(())
    }

    fn open_part(&mut self) -> Result<()> {
        let path = match &self.output {
            Output::File(file) => file.clone(),
            Output::Dir(dir) => {
                let p = dir.join(format!("part-{:06}.parquet", self.next_part));
                self.next_part += 1;
                p
            }
        };
        let tmp = tmp_path(&path);
        let file = File::create(&tmp).map_err(|e| self.fail(TraceError::io(&tmp, e)))?;
        let writer = ArrowWriter::try_new(
            BufWriter::with_capacity(1 << 20, file),
            self.schema.clone(),
            Some(self.props.clone()),
        )
        .map_err(|e| TraceError::parquet(&tmp, e))?;
        self.part = Some(OpenPart {
            tmp,
            path,
            writer,
            rows: 0,
            opened: Instant::now(),
        });
        Ok(())
    }

    fn close_part(&mut self) -> Result<()> {
        let Some(part) = self.part.take() else {
            return Ok(());
        };
        let OpenPart {
            tmp, path, writer, ..
        } = part;
        let finished = (|| {
            let inner = writer
                .into_inner()
                .map_err(|e| TraceError::parquet(&tmp, e))?;
            let file = inner
                .into_inner()
                .map_err(|e| TraceError::io(&tmp, e.into_error()))?;
            file.sync_data().map_err(|e| TraceError::io(&tmp, e))?;
            drop(file);
            fs::rename(&tmp, &path).map_err(|e| TraceError::io(&path, e))
        })();
        if let Err(e) = finished {
            // A part that could not be finished is not valid: it goes.
            let _ = fs::remove_file(&tmp);
            return Err(self.fail(e));
        }
        self.summary.files.push(path);
        Ok(())
    }
}

impl<R: Row> Drop for DatasetWriter<R> {
    fn drop(&mut self) {
        if self.failed {
            return;
        }
        if let Err(e) = self.close_inner() {
            tracing::warn!(
                "closing {} on drop failed: {e}",
                self.output.path().display()
            );
        }
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// The number of a finished part file name `part-NNNNNN.parquet`.
pub(crate) fn part_number(name: &str) -> Option<u64> {
    name.strip_prefix("part-")?
        .strip_suffix(".parquet")?
        .parse()
        .ok()
}
