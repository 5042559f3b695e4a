//! The checked dataset reader: one file or a directory of part files, validated up front
//! (footer, `reprise.format`, every column's type), then read in batches.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, TimestampNanosecondArray};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::column::{ReadIssue, readable_as, type_name};
use crate::error::{Result, TraceError};
use crate::record::Row;
use crate::widen::{WidenError, widen};
use crate::writer::META_FORMAT;

/// What a dataset is, read from its footers only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetInfo {
    /// The files, in read order.
    pub files: Vec<PathBuf>,
    /// Total rows.
    pub rows: u64,
    /// `reprise.format` of the first file, if set.
    pub format: Option<String>,
    /// Key-value metadata of the first file.
    pub metadata: BTreeMap<String, String>,
}

/// Lists the files of a dataset path: the file itself, or the directory's `*.parquet`
/// files in name order (`*.tmp` files being written are skipped).
pub fn dataset_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = fs::metadata(path).map_err(|e| TraceError::io(path, e))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path).map_err(|e| TraceError::io(path, e))? {
        let entry = entry.map_err(|e| TraceError::io(path, e))?;
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "parquet") && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(TraceError::EmptyDataset {
            path: path.to_owned(),
        });
    }
    Ok(files)
}

/// Reads footers only: files, rows, format and metadata. Checks nothing about columns.
pub fn probe(path: impl AsRef<Path>) -> Result<DatasetInfo> {
    let files = dataset_files(path.as_ref())?;
    let mut rows = 0;
    let mut first = None;
    for file in &files {
        let builder = open_builder(file)?;
        rows += builder.metadata().file_metadata().num_rows() as u64;
        if first.is_none() {
            first = Some(key_values(&builder));
        }
    }
    let metadata = first.unwrap_or_default();
    Ok(DatasetInfo {
        format: metadata.get(META_FORMAT).cloned(),
        files,
        rows,
        metadata,
    })
}

fn check_magic(path: &Path) -> Result<File> {
    let mut file = File::open(path).map_err(|e| TraceError::io(path, e))?;
    let len = file.metadata().map_err(|e| TraceError::io(path, e))?.len();
    if len < 12 {
        return Err(TraceError::NotParquet {
            path: path.to_owned(),
            detail: format!("{len} bytes"),
        });
    }
    let mut head = [0u8; 4];
    let mut tail = [0u8; 4];
    let io = |e| TraceError::io(path, e);
    file.read_exact(&mut head).map_err(io)?;
    file.seek(SeekFrom::End(-4)).map_err(io)?;
    file.read_exact(&mut tail).map_err(io)?;
    if &head != b"PAR1" {
        return Err(TraceError::NotParquet {
            path: path.to_owned(),
            detail: "no PAR1 header".into(),
        });
    }
    if &tail != b"PAR1" {
        return Err(TraceError::NotParquet {
            path: path.to_owned(),
            detail: "no PAR1 footer".into(),
        });
    }
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    Ok(file)
}

fn open_builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = check_magic(path)?;
    let len = file.metadata().map_err(|e| TraceError::io(path, e))?.len();
    let builder = crate::guard::decode(|| ParquetRecordBatchReaderBuilder::try_new(file))
        .map_err(|detail| TraceError::NotParquet {
            path: path.to_owned(),
            detail,
        })?
        .map_err(|e| TraceError::NotParquet {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    check_chunks(path, &builder, len)?;
    Ok(builder)
}

/// Every column chunk the footer lists lies inside the file: the Parquet library panics on a
/// negative offset or size (found by fuzzing), and a chunk past the end is a truncated file.
fn check_chunks(
    path: &Path,
    builder: &ParquetRecordBatchReaderBuilder<File>,
    file_len: u64,
) -> Result<()> {
    for (g, group) in builder.metadata().row_groups().iter().enumerate() {
        for chunk in group.columns() {
            let start = chunk
                .dictionary_page_offset()
                .unwrap_or_else(|| chunk.data_page_offset());
            let size = chunk.compressed_size();
            let inside = start >= 0
                && size >= 0
                && (start as u64)
                    .checked_add(size as u64)
                    .is_some_and(|end| end <= file_len);
            if !inside {
                return Err(TraceError::NotParquet {
                    path: path.to_owned(),
                    detail: format!(
                        "row group {g}, column {}: chunk at offset {start}, {size} bytes, outside the file's {file_len} bytes",
                        chunk.column_path()
                    ),
                });
            }
        }
    }
    Ok(())
}

fn key_values(builder: &ParquetRecordBatchReaderBuilder<File>) -> BTreeMap<String, String> {
    builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter(|kv| !kv.key.starts_with("ARROW:"))
                .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Debug, Clone)]
struct FilePlan {
    path: PathBuf,
    rows: u64,
    /// Root column indices to read.
    projection: Vec<usize>,
}

/// A reader of one format over a file or a directory of part files.
///
/// [`DatasetReader::open`] checks every file's footer, format and column types before any
/// row is read; reading then goes batch by batch ([`DatasetReader::batches`]), or all at
/// once when asked ([`DatasetReader::read_all`]).
pub struct DatasetReader<R: Row> {
    files: Vec<FilePlan>,
    metadata: BTreeMap<String, String>,
    batch_rows: usize,
    _row: PhantomData<R>,
}

impl<R: Row> std::fmt::Debug for DatasetReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatasetReader")
            .field("format", &R::format_id())
            .field("files", &self.files.len())
            .finish()
    }
}

impl<R: Row> DatasetReader<R> {
    /// Opens and checks a dataset.
    ///
    /// A file whose `reprise.format` is another kind or an unknown major version is
    /// rejected. A file without `reprise.format` (e.g. written by hand with polars) is
    /// accepted when its columns fit the format.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut plans = Vec::new();
        let mut metadata = None;
        for file in dataset_files(path)? {
            let builder = open_builder(&file)?;
            let kv = key_values(&builder);
            match kv.get(META_FORMAT) {
                Some(found) if R::reads_format(found) => {}
                Some(found) => {
                    return Err(TraceError::UnsupportedFormat {
                        path: file,
                        found: found.clone(),
                        expected: format!("{}/{}", R::KIND, R::MAJOR),
                    });
                }
                None => tracing::debug!(
                    "{}: no `{META_FORMAT}` metadata; reading it as {} by its columns",
                    file.display(),
                    R::format_id()
                ),
            }
            let schema = builder.schema();
            let mut projection = Vec::new();
            for spec in R::columns() {
                match schema.index_of(&spec.name) {
                    Ok(i) => {
                        let found = schema.field(i).data_type();
                        if !readable_as(found, &spec.data_type) {
                            return Err(TraceError::ColumnType {
                                path: file,
                                column: spec.name,
                                found: type_name(found),
                                expected: type_name(&spec.data_type),
                            });
                        }
                        projection.push(i);
                    }
                    Err(_) if spec.required => {
                        return Err(TraceError::MissingColumn {
                            path: file,
                            column: spec.name,
                        });
                    }
                    Err(_) => {}
                }
            }
            projection.sort_unstable();
            let rows = builder.metadata().file_metadata().num_rows() as u64;
            if metadata.is_none() {
                metadata = Some(kv);
            }
            plans.push(FilePlan {
                path: file,
                rows,
                projection,
            });
        }
        Ok(DatasetReader {
            files: plans,
            metadata: metadata.unwrap_or_default(),
            batch_rows: 8_192,
            _row: PhantomData,
        })
    }

    /// Sets the number of rows per batch (default 8,192).
    pub fn with_batch_rows(mut self, rows: usize) -> Self {
        self.batch_rows = rows.max(1);
        self
    }

    /// Key-value metadata of the first file (`reprise.*` keys and any others).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The files in read order.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// Total rows, from the footers.
    pub fn num_rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }

    /// Iterates over batches of records, file by file.
    pub fn batches(&self) -> Batches<R> {
        Batches {
            files: self.files.clone().into_iter(),
            batch_rows: self.batch_rows,
            current: None,
            done: false,
            _row: PhantomData,
        }
    }

    /// Reads the whole dataset into memory.
    pub fn read_all(&self) -> Result<Vec<R>> {
        let mut out = Vec::with_capacity(self.num_rows() as usize);
        for batch in self.batches() {
            out.extend(batch?);
        }
        Ok(out)
    }
}

struct OpenFile {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    rows_read: u64,
}

/// An iterator over batches of records (see [`DatasetReader::batches`]). After the first
/// error it ends.
pub struct Batches<R: Row> {
    files: std::vec::IntoIter<FilePlan>,
    batch_rows: usize,
    current: Option<OpenFile>,
    done: bool,
    _row: PhantomData<R>,
}

impl<R: Row> std::fmt::Debug for Batches<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches").field("done", &self.done).finish()
    }
}

impl<R: Row> Batches<R> {
    fn open_next(&mut self) -> Result<bool> {
        let Some(plan) = self.files.next() else {
            return Ok(false);
        };
        let builder = open_builder(&plan.path)?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), plan.projection.clone());
        let batch_rows = self.batch_rows;
        let reader = crate::guard::decode(|| {
            builder
                .with_projection(mask)
                .with_batch_size(batch_rows)
                .build()
        })
        .map_err(|message| TraceError::Parquet {
            path: plan.path.clone(),
            message,
        })?
        .map_err(|e| TraceError::parquet(&plan.path, e))?;
        self.current = Some(OpenFile {
            path: plan.path,
            reader,
            rows_read: 0,
        });
        Ok(true)
    }

    fn next_batch(&mut self) -> Result<Option<Vec<R>>> {
        loop {
            if self.current.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let file = self.current.as_mut().expect("a file is open");
            let next = crate::guard::decode(|| file.reader.next()).map_err(|message| {
                TraceError::Parquet {
                    path: file.path.clone(),
                    message,
                }
            })?;
            match next {
                Some(Ok(batch)) => {
                    let first_row = file.rows_read;
                    file.rows_read += batch.num_rows() as u64;
                    return convert::<R>(&file.path, first_row, &batch).map(Some);
                }
                Some(Err(e)) => return Err(TraceError::parquet(&file.path, e)),
                None => self.current = None,
            }
        }
    }
}

impl<R: Row> Iterator for Batches<R> {
    type Item = Result<Vec<R>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_batch() {
            Ok(Some(batch)) => Some(Ok(batch)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Converts a timestamp column of any unit (naive or UTC) to `Timestamp(ns, UTC)`; the
/// error is the row that overflows.
fn timestamp_to_ns(column: &dyn Array, unit: TimeUnit) -> Result<ArrayRef, usize> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{
        TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
        TimestampSecondType,
    };
    let (values, factor): (Vec<Option<i64>>, i64) = match unit {
        TimeUnit::Second => (
            column
                .as_primitive::<TimestampSecondType>()
                .iter()
                .collect(),
            1_000_000_000,
        ),
        TimeUnit::Millisecond => (
            column
                .as_primitive::<TimestampMillisecondType>()
                .iter()
                .collect(),
            1_000_000,
        ),
        TimeUnit::Microsecond => (
            column
                .as_primitive::<TimestampMicrosecondType>()
                .iter()
                .collect(),
            1_000,
        ),
        TimeUnit::Nanosecond => (
            column
                .as_primitive::<TimestampNanosecondType>()
                .iter()
                .collect(),
            1,
        ),
    };
    let mut out = Vec::with_capacity(values.len());
    for (row, v) in values.into_iter().enumerate() {
        out.push(match v {
            Some(v) => Some(v.checked_mul(factor).ok_or(row)?),
            None => None,
        });
    }
    Ok(Arc::new(
        TimestampNanosecondArray::from(out).with_timezone("UTC"),
    ))
}

/// Turns one record batch (projected to known columns) into records.
fn convert<R: Row>(path: &Path, first_row: u64, batch: &RecordBatch) -> Result<Vec<R>> {
    let schema = batch.schema();
    let mut arrays: Vec<Option<ArrayRef>> = Vec::new();
    for spec in R::columns() {
        let Ok(i) = schema.index_of(&spec.name) else {
            arrays.push(None);
            continue;
        };
        let column = batch.column(i);
        if column.data_type() == &spec.data_type {
            arrays.push(Some(column.clone()));
            continue;
        }
        if let DataType::Timestamp(unit, _) = column.data_type() {
            let array =
                timestamp_to_ns(column.as_ref(), *unit).map_err(|row| TraceError::BadValue {
                    path: path.to_owned(),
                    row: first_row + row as u64 + 1,
                    column: spec.name.clone(),
                    reason: "time out of range for nanoseconds".to_owned(),
                })?;
            arrays.push(Some(array));
            continue;
        }
        let cast = widen(column.as_ref(), &spec.data_type).map_err(|e| match e {
            WidenError::DoesNotFit { row } => TraceError::BadValue {
                path: path.to_owned(),
                row: first_row + row as u64 + 1,
                column: spec.name.clone(),
                reason: format!("value does not fit {}", type_name(&spec.data_type)),
            },
            WidenError::Unsupported { from, to } => TraceError::parquet(
                path,
                format!(
                    "column `{}`: cannot read {} as {}",
                    spec.name,
                    type_name(&from),
                    type_name(&to)
                ),
            ),
            WidenError::Arrow(e) => {
                TraceError::parquet(path, format!("column `{}`: {e}", spec.name))
            }
        })?;
        arrays.push(Some(cast));
    }
    R::from_arrays(&arrays, batch.num_rows()).map_err(|issue| {
        let (row, reason) = match issue.issue {
            ReadIssue::Null { row } => (row, "null in a column that requires a value"),
            ReadIssue::NullInList { row } => (row, "null inside a list"),
        };
        TraceError::BadValue {
            path: path.to_owned(),
            row: first_row + row as u64 + 1,
            column: issue.column,
            reason: reason.to_owned(),
        }
    })
}
