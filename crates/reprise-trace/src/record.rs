//! The `Row` trait: a typed record that is one row of a reprise format, and the macro that
//! defines a record, its builders and its Arrow schema from one field list.

use std::sync::Arc;

use arrow_array::ArrayRef;
use arrow_schema::{DataType, Field, Schema};

use crate::column::ReadIssue;

/// One column of a format: its name, canonical type, and whether it may be null or missing.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSpec {
    /// Column name in files.
    pub name: String,
    /// The canonical Arrow type written by reprise.
    pub data_type: DataType,
    /// Whether values may be null.
    pub nullable: bool,
    /// Whether a file must contain the column (otherwise it reads as null or a default).
    pub required: bool,
}

/// Why a batch could not become records (positions are within the batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowIssue {
    /// The column involved.
    pub column: String,
    /// What was wrong.
    pub issue: ReadIssue,
}

/// A typed record that is one row of a reprise Parquet format.
///
/// Implemented by [`crate::record!`]; user code does not implement it by hand.
pub trait Row: Sized + Clone + Send + 'static {
    /// The format's kind, e.g. `trace`.
    const KIND: &'static str;
    /// The format's major version.
    const MAJOR: u32;
    /// The format's minor version: columns added that older readers may ignore (0: none).
    const MINOR: u32 = 0;
    /// Arrow builders for a batch of records.
    type Builders: Send;

    /// Columns in file order.
    fn columns() -> Vec<ColumnSpec>;
    /// Fresh builders for `capacity` rows.
    fn builders(capacity: usize) -> Self::Builders;
    /// Appends this record to the builders.
    fn append_to(&self, builders: &mut Self::Builders);
    /// Finishes the builders into arrays in column order (the builders are reset).
    fn finish(builders: &mut Self::Builders) -> Vec<ArrayRef>;
    /// Makes `rows` records from arrays in column order, each already of its canonical
    /// type; `None` is a missing column that may be missing.
    fn from_arrays(arrays: &[Option<ArrayRef>], rows: usize) -> Result<Vec<Self>, RowIssue>;

    /// The format id written in `reprise.format`, e.g. `trace/1`, or `trace/1.1` once a
    /// minor version has added columns.
    fn format_id() -> String {
        if Self::MINOR == 0 {
            format!("{}/{}", Self::KIND, Self::MAJOR)
        } else {
            format!("{}/{}.{}", Self::KIND, Self::MAJOR, Self::MINOR)
        }
    }

    /// Whether this build reads a file whose `reprise.format` is `found`: the same kind and
    /// major version, any minor version (columns a reader does not know are ignored, and
    /// those it knows but the file lacks read as null or their default).
    fn reads_format(found: &str) -> bool {
        let Some(version) = found
            .strip_prefix(Self::KIND)
            .and_then(|v| v.strip_prefix('/'))
        else {
            return false;
        };
        let (major, minor) = version.split_once('.').unwrap_or((version, "0"));
        major == Self::MAJOR.to_string()
            && !minor.is_empty()
            && minor.bytes().all(|b| b.is_ascii_digit())
    }

    /// The Arrow schema of the format.
    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(
            Self::columns()
                .into_iter()
                .map(|c| Field::new(c.name, c.data_type, c.nullable))
                .collect::<Vec<_>>(),
        ))
    }
}

/// Reads one column for [`Row::from_arrays`]: a present column is converted, a missing
/// one takes its default.
#[doc(hidden)]
pub fn read_column<T: crate::column::ColumnType>(
    array: Option<&ArrayRef>,
    rows: usize,
    default: Option<T>,
    name: &str,
) -> Result<Vec<T>, RowIssue> {
    match array {
        Some(array) => T::read(array.as_ref()).map_err(|issue| RowIssue {
            column: name.to_owned(),
            issue,
        }),
        None => match default {
            Some(value) => Ok(vec![value; rows]),
            // The reader checks required columns before reading; this is a safe fallback.
            None => Err(RowIssue {
                column: name.to_owned(),
                issue: ReadIssue::Null { row: 0 },
            }),
        },
    }
}

#[doc(hidden)]
#[macro_export]
macro_rules! __default_or_none {
    () => {
        None
    };
    ($e:expr) => {
        Some($e)
    };
}

/// Defines a record type, its builders type and its [`Row`] implementation from one list of
/// fields. A field `name: Type = default` may be missing from a file and then reads as
/// `default`; an `Option` field reads as `None`; any other field is required.
///
/// `flatten base: Base as rename_fn` embeds all columns of another record first, with
/// column names passed through `rename_fn` (used by result/1 to embed trace/1).
#[macro_export]
macro_rules! record {
    (
        $(#[$meta:meta])*
        pub struct $name:ident / $builders:ident : $kind:literal / $major:literal $(, minor $minor:literal)? {
            $( flatten $base:ident : $base_ty:ty as $rename:path, )?
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty $(= $default:expr)? ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( #[doc = "The embedded record's columns."] pub $base: $base_ty, )?
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        #[doc = concat!("Arrow builders for batches of [`", stringify!($name), "`].")]
        #[allow(
            missing_debug_implementations,
            reason = "arrow builders of generated rows; nothing to show"
        )]
        pub struct $builders {
            $( $base: <$base_ty as $crate::record::Row>::Builders, )?
            $( $field: <$ty as $crate::column::ColumnType>::Builder, )*
        }

        impl $crate::record::Row for $name {
            const KIND: &'static str = $kind;
            const MAJOR: u32 = $major;
            $( const MINOR: u32 = $minor; )?
            type Builders = $builders;

            fn columns() -> Vec<$crate::record::ColumnSpec> {
                #[allow(unused_mut, reason = "a row without fields pushes nothing")]
                let mut out: Vec<$crate::record::ColumnSpec> = Vec::new();
                $(
                    for mut c in <$base_ty as $crate::record::Row>::columns() {
                        c.name = $rename(&c.name);
                        out.push(c);
                    }
                )?
                $(
                    let default: Option<$ty> = $crate::__default_or_none!($($default)?);
                    out.push($crate::record::ColumnSpec {
                        name: stringify!($field).to_owned(),
                        data_type: <$ty as $crate::column::ColumnType>::data_type(),
                        nullable: <$ty as $crate::column::ColumnType>::nullable(),
                        required: default.is_none()
                            && <$ty as $crate::column::ColumnType>::missing().is_none(),
                    });
                )*
                out
            }

            fn builders(capacity: usize) -> Self::Builders {
                $builders {
                    $( $base: <$base_ty as $crate::record::Row>::builders(capacity), )?
                    $( $field: <$ty as $crate::column::ColumnType>::new_builder(capacity), )*
                }
            }

            fn append_to(&self, b: &mut Self::Builders) {
                $( $crate::record::Row::append_to(&self.$base, &mut b.$base); )?
                $( <$ty as $crate::column::ColumnType>::append(&mut b.$field, &self.$field); )*
            }

            #[allow(
                clippy::vec_init_then_push,
                reason = "the macro pushes one column per field"
            )]
            fn finish(b: &mut Self::Builders) -> Vec<$crate::__private::arrow_array::ArrayRef> {
                #[allow(
                    unused_mut,
                    clippy::vec_init_then_push,
                    reason = "the macro pushes one column per field, or none"
                )]
                let mut out: Vec<$crate::__private::arrow_array::ArrayRef> = Vec::new();
                $( out.extend(<$base_ty as $crate::record::Row>::finish(&mut b.$base)); )?
                $(
                    out.push(::std::sync::Arc::new(
                        $crate::__private::arrow_array::builder::ArrayBuilder::finish(&mut b.$field),
                    ));
                )*
                out
            }

            fn from_arrays(
                arrays: &[Option<$crate::__private::arrow_array::ArrayRef>],
                rows: usize,
            ) -> Result<Vec<Self>, $crate::record::RowIssue> {
                #[allow(
                    unused_mut,
                    unused_assignments,
                    reason = "the last field's column index is not read again"
                )]
                let mut index = 0usize;
                $(
                    let n = <$base_ty as $crate::record::Row>::columns().len();
                    let mut $base =
                        <$base_ty as $crate::record::Row>::from_arrays(&arrays[..n], rows)?
                            .into_iter();
                    index = n;
                )?
                $(
                    let default: Option<$ty> = $crate::__default_or_none!($($default)?);
                    let mut $field = $crate::record::read_column::<$ty>(
                        arrays[index].as_ref(),
                        rows,
                        default.or_else(<$ty as $crate::column::ColumnType>::missing),
                        stringify!($field),
                    )?
                    .into_iter();
                    index += 1;
                )*
                let _ = index;
                let mut out = Vec::with_capacity(rows);
                for _ in 0..rows {
                    out.push($name {
                        $( $base: $base.next().expect("column lengths equal the batch length"), )?
                        $( $field: $field.next().expect("column lengths equal the batch length"), )*
                    });
                }
                Ok(out)
            }
        }
    };
}
