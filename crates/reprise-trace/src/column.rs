//! Rust value types that map to one Arrow column each, and the rules for reading them.

use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, BooleanBuilder, Float64Builder, ListBuilder, StringBuilder,
    TimestampNanosecondBuilder, UInt16Builder, UInt32Builder, UInt64Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float64Type, TimestampNanosecondType, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrowPrimitiveType};
use arrow_schema::{DataType, Field, TimeUnit};

/// A wall-clock instant: nanoseconds since the Unix epoch, UTC.
///
/// Stored as Arrow `Timestamp(ns, "UTC")`. Arithmetic on instants is plain integer
/// arithmetic; durations in reprise files are integer microseconds in `*_us` columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The instant `secs` seconds after the epoch.
    pub fn from_secs_f64(secs: f64) -> Self {
        Timestamp((secs * 1e9).round() as i64)
    }

    /// Seconds since the epoch, as a float (for rates and plots, not for exact arithmetic).
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }

    /// Nanoseconds since the epoch.
    pub fn nanos(self) -> i64 {
        self.0
    }
}

/// Why a column's values could not become Rust values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadIssue {
    /// A null where the format requires a value (row index within the batch).
    Null { row: usize },
    /// A null inside a list value (row index within the batch).
    NullInList { row: usize },
}

/// A Rust type stored as one Arrow column of a reprise format.
///
/// Implemented for the scalar types the formats use and for `Option` of each (a nullable
/// column). Reading happens after the column was cast to [`ColumnType::data_type`].
pub trait ColumnType: Sized + Clone {
    /// The Arrow builder for this type.
    type Builder: ArrayBuilder;
    /// The canonical Arrow type written to files.
    fn data_type() -> DataType;
    /// Whether the column may hold nulls.
    fn nullable() -> bool;
    /// A new builder with room for `capacity` values.
    fn new_builder(capacity: usize) -> Self::Builder;
    /// Appends one value.
    fn append(builder: &mut Self::Builder, value: &Self);
    /// Reads every value of an array of exactly [`ColumnType::data_type`].
    fn read(array: &dyn Array) -> Result<Vec<Self>, ReadIssue>;
    /// The value a missing column reads as, if the column may be missing (nullable ones).
    fn missing() -> Option<Self>;
}

fn primitive_values<T: ArrowPrimitiveType>(array: &dyn Array) -> Result<Vec<T::Native>, ReadIssue> {
    let array = array.as_primitive::<T>();
    if array.null_count() > 0 {
        let row = (0..array.len()).find(|&i| array.is_null(i)).unwrap_or(0);
        return Err(ReadIssue::Null { row });
    }
    Ok(array.values().to_vec())
}

fn primitive_options<T: ArrowPrimitiveType>(array: &dyn Array) -> Vec<Option<T::Native>> {
    array.as_primitive::<T>().iter().collect()
}

macro_rules! primitive_column {
    ($rust:ty, $arrow:ty, $builder:ty, $dt:expr) => {
        impl ColumnType for $rust {
            type Builder = $builder;
            fn data_type() -> DataType {
                $dt
            }
            fn nullable() -> bool {
                false
            }
            fn new_builder(capacity: usize) -> Self::Builder {
                <$builder>::with_capacity(capacity)
            }
            fn append(builder: &mut Self::Builder, value: &Self) {
                builder.append_value(*value);
            }
            fn read(array: &dyn Array) -> Result<Vec<Self>, ReadIssue> {
                primitive_values::<$arrow>(array)
            }
            fn missing() -> Option<Self> {
                None
            }
        }

        impl ColumnType for Option<$rust> {
            type Builder = $builder;
            fn data_type() -> DataType {
                $dt
            }
            fn nullable() -> bool {
                true
            }
            fn new_builder(capacity: usize) -> Self::Builder {
                <$builder>::with_capacity(capacity)
            }
            fn append(builder: &mut Self::Builder, value: &Self) {
                builder.append_option(*value);
            }
            fn read(array: &dyn Array) -> Result<Vec<Self>, ReadIssue> {
                Ok(primitive_options::<$arrow>(array))
            }
            fn missing() -> Option<Self> {
                Some(None)
            }
        }
    };
}

primitive_column!(u16, UInt16Type, UInt16Builder, DataType::UInt16);
primitive_column!(u32, UInt32Type, UInt32Builder, DataType::UInt32);
primitive_column!(u64, UInt64Type, UInt64Builder, DataType::UInt64);
primitive_column!(f64, Float64Type, Float64Builder, DataType::Float64);

/// The canonical timestamp type of every reprise time column.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some(Arc::from("UTC")))
}

fn timestamp_builder(capacity: usize) -> TimestampNanosecondBuilder {
    TimestampNanosecondBuilder::with_capacity(capacity).with_timezone("UTC")
}

impl ColumnType for Timestamp {
    type Builder = TimestampNanosecondBuilder;
    fn data_type() -> DataType {
        timestamp_type()
    }
    fn nullable() -> bool {
        false
    }
    fn new_builder(capacity: usize) -> Self::Builder {
        timestamp_builder(capacity)
    }
    fn append(builder: &mut Self::Builder, value: &Self) {
        builder.append_value(value.0);
    }
    fn read(array: &dyn Array) -> Result<Vec<Self>, ReadIssue> {
        Ok(primitive_values::<TimestampNanosecondType>(array)?
            .into_iter()
            .map(Timestamp)
            .collect())
    }
    fn missing() -> Option<Self> {
        None
    }
}

impl ColumnType for Option<Timestamp> {
    type Builder = TimestampNanosecondBuilder;
    fn data_type() -> DataType {
        timestamp_type()
    }
    fn nullable() -> bool {
        true
    }
    fn new_builder(capacity: usize) -> Self::Builder {
        timestamp_builder(capacity)
    }
    fn append(builder: &mut Self::Builder, value: &Self) {
        builder.append_option(value.map(|t| t.0));
    }
    fn read(array: &dyn Array) -> Result<Vec<Self>, ReadIssue> {
        Ok(primitive_options::<TimestampNanosecondType>(array)
            .into_iter()
            .map(|v| v.map(Timestamp))
            .collect())
    }
    fn missing() -> Option<Self> {
        Some(None)
    }
}

impl ColumnType for bool {
    type Builder = BooleanBuilder;
    fn data_type() -> DataType {
        DataType::Boolean
    }
    fn nullable() -> bool {
        false
    }
    fn new_builder(capacity: usize) -> Self::Builder {
        BooleanBuilder::with_capacity(capacity)
    }
    fn append(builder: &mut Self::Builder, value: &Self) {
        builder.append_value(*value);
    }
    fn read(array: &dyn Array) -> Result<Vec<Self>, ReadIssue> {
        let array = array.as_boolean();
        let mut out = Vec::with_capacity(array.len());
        for (row, v) in array.iter().enumerate() {
            out.push(v.ok_or(ReadIssue::Null { row })?);
        }
        Ok(out)
    }
    fn missing() -> Option<Self> {
        None
    }
}

impl ColumnType for Option<bool> {
    type Builder = BooleanBuilder;
    fn data_type() -> DataType {
        DataType::Boolean
    }
    fn nullable() -> bool {
        true
    }
    fn new_builder(capacity: usize) -> Self::Builder {
        BooleanBuilder::with_capacity(capacity)
    }
    fn append(builder: &mut Self::Builder, value: &Self) {
        builder.append_option(*value);
    }
    fn read(array: &dyn Array) -> Result<Vec<Self>, ReadIssue> {
        Ok(array.as_boolean().iter().collect())
    }
    fn missing() -> Option<Self> {
        Some(None)
    }
}

impl ColumnType for String {
    type Builder = StringBuilder;
    fn data_type() -> DataType {
        DataType::Utf8
    }
    fn nullable() -> bool {
        false
    }
    fn new_builder(capacity: usize) -> Self::Builder {
        StringBuilder::with_capacity(capacity, capacity * 16)
    }
    fn append(builder: &mut Self::Builder, value: &Self) {
        builder.append_value(value);
    }
    fn read(array: &dyn Array) -> Result<Vec<Self>, ReadIssue> {
        let array = array.as_string::<i32>();
        let mut out = Vec::with_capacity(array.len());
        for (row, v) in array.iter().enumerate() {
            out.push(v.ok_or(ReadIssue::Null { row })?.to_owned());
        }
        Ok(out)
    }
    fn missing() -> Option<Self> {
        None
    }
}

impl ColumnType for Option<String> {
    type Builder = StringBuilder;
    fn data_type() -> DataType {
        DataType::Utf8
    }
    fn nullable() -> bool {
        true
    }
    fn new_builder(capacity: usize) -> Self::Builder {
        StringBuilder::with_capacity(capacity, capacity * 8)
    }
    fn append(builder: &mut Self::Builder, value: &Self) {
        builder.append_option(value.as_deref());
    }
    fn read(array: &dyn Array) -> Result<Vec<Self>, ReadIssue> {
        Ok(array
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_owned))
            .collect())
    }
    fn missing() -> Option<Self> {
        Some(None)
    }
}

macro_rules! list_column {
    ($item:ty, $arrow:ty, $builder:ty, $dt:expr) => {
        impl ColumnType for Option<Vec<$item>> {
            type Builder = ListBuilder<$builder>;
            fn data_type() -> DataType {
                DataType::List(Arc::new(Field::new_list_field($dt, true)))
            }
            fn nullable() -> bool {
                true
            }
            fn new_builder(capacity: usize) -> Self::Builder {
                ListBuilder::with_capacity(<$builder>::with_capacity(capacity * 4), capacity)
            }
            fn append(builder: &mut Self::Builder, value: &Self) {
                match value {
                    Some(items) => {
                        builder.values().append_slice(items);
                        builder.append(true);
                    }
                    None => builder.append(false),
                }
            }
            fn read(array: &dyn Array) -> Result<Vec<Self>, ReadIssue> {
                let list = array.as_list::<i32>();
                let values = list.values().as_primitive::<$arrow>();
                let offsets = list.value_offsets();
                let mut out = Vec::with_capacity(list.len());
                for row in 0..list.len() {
                    if list.is_null(row) {
                        out.push(None);
                        continue;
                    }
                    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
                    if values.null_count() > 0 && (start..end).any(|i| values.is_null(i)) {
                        return Err(ReadIssue::NullInList { row });
                    }
                    out.push(Some(values.values()[start..end].to_vec()));
                }
                Ok(out)
            }
            fn missing() -> Option<Self> {
                Some(None)
            }
        }
    };
}

list_column!(u64, UInt64Type, UInt64Builder, DataType::UInt64);
list_column!(u32, UInt32Type, UInt32Builder, DataType::UInt32);

/// Whether a column of type `actual` in a file can be read as the canonical type `expected`
/// (by a lossless, checked cast): other string encodings, other integer widths, other
/// timestamp units, naive or UTC-equivalent time zones, large lists.
pub fn readable_as(actual: &DataType, expected: &DataType) -> bool {
    use DataType::*;
    if actual == expected {
        return true;
    }
    let is_int = |t: &DataType| {
        matches!(
            t,
            Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64
        )
    };
    match (expected, actual) {
        (Utf8, Utf8 | LargeUtf8 | Utf8View) => true,
        (UInt16 | UInt32 | UInt64, a) => is_int(a),
        (Float64, a) => is_int(a) || matches!(a, Float16 | Float32 | Float64),
        (Boolean, Boolean) => true,
        (Timestamp(TimeUnit::Nanosecond, Some(_)), Timestamp(_, tz)) => match tz {
            None => true,
            Some(tz) => matches!(&**tz, "UTC" | "utc" | "Z" | "+00:00" | "Etc/UTC" | "GMT"),
        },
        (List(e), List(a) | LargeList(a) | ListView(a) | LargeListView(a)) => {
            readable_as(a.data_type(), e.data_type())
        }
        _ => false,
    }
}

/// A short, stable name for a type, as used in error messages (`Timestamp(ns, UTC)`).
pub fn type_name(t: &DataType) -> String {
    use DataType::*;
    match t {
        Timestamp(unit, tz) => {
            let unit = match unit {
                TimeUnit::Second => "s",
                TimeUnit::Millisecond => "ms",
                TimeUnit::Microsecond => "us",
                TimeUnit::Nanosecond => "ns",
            };
            match tz {
                Some(tz) => format!("Timestamp({unit}, {tz})"),
                None => format!("Timestamp({unit})"),
            }
        }
        List(f) => format!("List<{}>", type_name(f.data_type())),
        LargeList(f) => format!("LargeList<{}>", type_name(f.data_type())),
        other => format!("{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_short_and_stable() {
        assert_eq!(type_name(&timestamp_type()), "Timestamp(ns, UTC)");
        assert_eq!(type_name(&DataType::Utf8), "Utf8");
        assert_eq!(type_name(&<Option<Vec<u64>>>::data_type()), "List<UInt64>");
    }

    #[test]
    fn readable_as_accepts_lossless_variants_only() {
        assert!(readable_as(&DataType::LargeUtf8, &DataType::Utf8));
        assert!(readable_as(&DataType::Int64, &DataType::UInt32));
        assert!(readable_as(
            &DataType::Timestamp(TimeUnit::Microsecond, None),
            &timestamp_type()
        ));
        assert!(!readable_as(
            &DataType::Timestamp(TimeUnit::Microsecond, Some("Europe/Paris".into())),
            &timestamp_type()
        ));
        assert!(!readable_as(&DataType::Utf8, &timestamp_type()));
        assert!(!readable_as(&DataType::Float64, &DataType::UInt32));
    }
}
