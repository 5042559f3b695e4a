//! Lossless, checked conversions of a column read from a file to its canonical type — the
//! ones [`readable_as`](crate::column::readable_as) admits: other string encodings, other
//! integer widths (a value that does not fit is an error naming its row), integers and
//! smaller floats to `Float64`, and lists of those under any list encoding.
//!
//! Written here rather than taken from `arrow-cast`, whose general casts (and the sorting
//! kernels of `arrow-ord` they pull in) were two minutes of a cold release build for the
//! handful of conversions a trace needs. Timestamps are converted by the reader itself.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    ArrowPrimitiveType, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, GenericListArray, OffsetSizeTrait, PrimitiveArray};
use arrow_array::{ListArray, StringArray};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{ArrowError, DataType, Field};

/// Why a column could not be converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WidenError {
    /// The value at this row (0-based, within the array) does not fit the canonical type.
    DoesNotFit { row: usize },
    /// No conversion from this type to that one (the reader checks
    /// [`readable_as`](crate::column::readable_as) first, so this is a reader bug).
    Unsupported { from: DataType, to: DataType },
    /// Arrow refused the array built (inconsistent offsets in the file).
    Arrow(String),
}

impl From<ArrowError> for WidenError {
    fn from(e: ArrowError) -> Self {
        WidenError::Arrow(e.to_string())
    }
}

/// Converts `column` to `to`. A value that does not fit is [`WidenError::DoesNotFit`] with
/// the row of the outer array (for lists: the row of the list that holds it).
pub fn widen(column: &dyn Array, to: &DataType) -> Result<ArrayRef, WidenError> {
    let from = column.data_type();
    let unsupported = || WidenError::Unsupported {
        from: from.clone(),
        to: to.clone(),
    };
    match to {
        DataType::Utf8 => match from {
            DataType::Utf8 => Ok(Arc::new(column.as_string::<i32>().clone())),
            DataType::LargeUtf8 => Ok(Arc::new(
                column.as_string::<i64>().iter().collect::<StringArray>(),
            )),
            DataType::Utf8View => Ok(Arc::new(
                column.as_string_view().iter().collect::<StringArray>(),
            )),
            _ => Err(unsupported()),
        },
        DataType::UInt16 => integers::<UInt16Type>(column).ok_or_else(unsupported)?,
        DataType::UInt32 => integers::<UInt32Type>(column).ok_or_else(unsupported)?,
        DataType::UInt64 => integers::<UInt64Type>(column).ok_or_else(unsupported)?,
        DataType::Float64 => floats(column).ok_or_else(unsupported),
        DataType::List(field) => match from {
            DataType::List(_) => list(column.as_list::<i32>(), field),
            DataType::LargeList(_) => list(column.as_list::<i64>(), field),
            DataType::ListView(_) => list_view::<i32>(column, field),
            DataType::LargeListView(_) => list_view::<i64>(column, field),
            _ => Err(unsupported()),
        },
        _ if from == to => Ok(arrow_array::make_array(column.to_data())),
        _ => Err(unsupported()),
    }
}

/// Maps each value of a primitive array, keeping nulls; `f` failing is the row's error.
fn map_values<F, O>(
    array: &PrimitiveArray<F>,
    f: impl Fn(F::Native) -> Option<O::Native>,
) -> Result<ArrayRef, WidenError>
where
    F: ArrowPrimitiveType,
    O: ArrowPrimitiveType,
{
    let mut out = Vec::with_capacity(array.len());
    for (row, v) in array.iter().enumerate() {
        out.push(match v {
            None => None,
            Some(v) => Some(f(v).ok_or(WidenError::DoesNotFit { row })?),
        });
    }
    Ok(Arc::new(out.into_iter().collect::<PrimitiveArray<O>>()))
}

/// Any integer column to the unsigned type `O`, checked. `None`: not an integer column.
fn integers<O>(column: &dyn Array) -> Option<Result<ArrayRef, WidenError>>
where
    O: ArrowPrimitiveType,
    O::Native: TryFrom<i64> + TryFrom<u64>,
{
    macro_rules! from {
        ($t:ty, $via:ty) => {
            map_values::<$t, O>(column.as_primitive::<$t>(), |v| {
                O::Native::try_from(<$via>::from(v)).ok()
            })
        };
    }
    Some(match column.data_type() {
        DataType::Int8 => from!(Int8Type, i64),
        DataType::Int16 => from!(Int16Type, i64),
        DataType::Int32 => from!(Int32Type, i64),
        DataType::Int64 => from!(Int64Type, i64),
        DataType::UInt8 => from!(UInt8Type, u64),
        DataType::UInt16 => from!(UInt16Type, u64),
        DataType::UInt32 => from!(UInt32Type, u64),
        DataType::UInt64 => from!(UInt64Type, u64),
        _ => return None,
    })
}

/// Any integer or float column to `Float64` (integers beyond 2^53 round, as in any cast
/// to a double). `None`: not a numeric column.
fn floats(column: &dyn Array) -> Option<ArrayRef> {
    macro_rules! from {
        ($t:ty, $f:expr) => {{
            let a: &PrimitiveArray<$t> = column.as_primitive::<$t>();
            let f: PrimitiveArray<Float64Type> = a.unary($f);
            Arc::new(f) as ArrayRef
        }};
    }
    Some(match column.data_type() {
        DataType::Int8 => from!(Int8Type, f64::from),
        DataType::Int16 => from!(Int16Type, f64::from),
        DataType::Int32 => from!(Int32Type, f64::from),
        DataType::Int64 => from!(Int64Type, |v| v as f64),
        DataType::UInt8 => from!(UInt8Type, f64::from),
        DataType::UInt16 => from!(UInt16Type, f64::from),
        DataType::UInt32 => from!(UInt32Type, f64::from),
        DataType::UInt64 => from!(UInt64Type, |v| v as f64),
        DataType::Float16 => from!(Float16Type, f64::from),
        DataType::Float32 => from!(Float32Type, f64::from),
        DataType::Float64 => from!(Float64Type, |v| v),
        _ => return None,
    })
}

/// The row of the list that holds element `index`, given each list's start offset.
fn owner_row(starts: impl Iterator<Item = usize>, index: usize) -> usize {
    starts
        .enumerate()
        .take_while(|&(_, start)| start <= index)
        .last()
        .map_or(0, |(row, _)| row)
}

/// A list array (32- or 64-bit offsets) to `List<field>`, its values converted.
fn list<O: OffsetSizeTrait>(
    array: &GenericListArray<O>,
    field: &Arc<Field>,
) -> Result<ArrayRef, WidenError> {
    let offsets = array.value_offsets();
    let (first, last) = (
        offsets.first().map_or(0, |o| o.as_usize()),
        offsets.last().map_or(0, |o| o.as_usize()),
    );
    // Only the span the offsets cover: a sliced array's values may extend beyond it.
    let values = array.values().slice(first, last - first);
    let offsets = offsets
        .iter()
        .map(|o| offset(o.as_usize() - first))
        .collect::<Result<Vec<_>, _>>()?;
    rebuild(field, offsets, values.as_ref(), array.nulls())
}

/// A list-view array to `List<field>`: its lists copied out in row order, then converted.
fn list_view<O: OffsetSizeTrait>(
    column: &dyn Array,
    field: &Arc<Field>,
) -> Result<ArrayRef, WidenError> {
    let array = column.as_list_view::<O>();
    let mut indices = Vec::new();
    let mut offsets = Vec::with_capacity(array.len() + 1);
    offsets.push(0i32);
    for row in 0..array.len() {
        if array.is_valid(row) {
            let start = array.value_offsets()[row].as_usize();
            let size = array.value_sizes()[row].as_usize();
            indices.extend((start..start + size).map(|i| i as u64));
        }
        offsets.push(offset(indices.len())?);
    }
    let indices = PrimitiveArray::<UInt64Type>::from(indices);
    let values = arrow_select::take::take(array.values().as_ref(), &indices, None)?;
    rebuild(field, offsets, values.as_ref(), array.nulls())
}

/// A 32-bit list offset.
fn offset(o: usize) -> Result<i32, WidenError> {
    i32::try_from(o)
        .map_err(|_| WidenError::Arrow("a list column holds more than 2^31 values".to_owned()))
}

/// `List<field>` from zero-based `offsets` over `values` (converted here; a value that does
/// not fit names the row of the list that holds it) and the lists' nulls.
fn rebuild(
    field: &Arc<Field>,
    offsets: Vec<i32>,
    values: &dyn Array,
    nulls: Option<&arrow_buffer::NullBuffer>,
) -> Result<ArrayRef, WidenError> {
    let values = widen(values, field.data_type()).map_err(|e| match e {
        WidenError::DoesNotFit { row } => WidenError::DoesNotFit {
            row: owner_row(offsets.iter().map(|&o| o as usize), row),
        },
        other => other,
    })?;
    Ok(Arc::new(ListArray::try_new(
        field.clone(),
        OffsetBuffer::new(offsets.into()),
        values,
        nulls.cloned(),
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::builder::{LargeListBuilder, ListBuilder, UInt64Builder};
    use arrow_array::{
        Float32Array, Int8Array, Int64Array, LargeListViewArray, LargeStringArray, StringViewArray,
        UInt8Array, UInt64Array,
    };
    use proptest::prelude::*;

    fn list_field(t: DataType) -> DataType {
        DataType::List(Arc::new(Field::new_list_field(t, true)))
    }

    fn u64_lists(out: &ArrayRef) -> Vec<Option<Vec<Option<u64>>>> {
        out.as_list::<i32>()
            .iter()
            .map(|l| l.map(|l| l.as_primitive::<UInt64Type>().iter().collect()))
            .collect()
    }

    #[test]
    fn strings_of_every_encoding_become_utf8() {
        let want = vec![Some("a"), None, Some("ccc")];
        for column in [
            Arc::new(LargeStringArray::from(want.clone())) as ArrayRef,
            Arc::new(StringViewArray::from(want.clone())),
            Arc::new(StringArray::from(want.clone())),
        ] {
            let out = widen(column.as_ref(), &DataType::Utf8).unwrap();
            assert_eq!(out.data_type(), &DataType::Utf8);
            assert_eq!(out.as_string::<i32>().iter().collect::<Vec<_>>(), want);
        }
    }

    #[test]
    fn integers_are_checked_and_the_row_is_named() {
        let column = Int64Array::from(vec![Some(7), None, Some(65_535)]);
        let out = widen(&column, &DataType::UInt16).unwrap();
        assert_eq!(
            out.as_primitive::<UInt16Type>().iter().collect::<Vec<_>>(),
            vec![Some(7), None, Some(65_535)]
        );
        let column = Int64Array::from(vec![Some(7), None, Some(65_536)]);
        assert_eq!(
            widen(&column, &DataType::UInt16).unwrap_err(),
            WidenError::DoesNotFit { row: 2 }
        );
        let column = Int8Array::from(vec![0, -1]);
        assert_eq!(
            widen(&column, &DataType::UInt64).unwrap_err(),
            WidenError::DoesNotFit { row: 1 }
        );
        let column = UInt64Array::from(vec![u64::MAX]);
        assert_eq!(
            widen(&column, &DataType::UInt64)
                .unwrap()
                .as_primitive::<UInt64Type>()
                .value(0),
            u64::MAX
        );
    }

    #[test]
    fn numbers_become_doubles() {
        let out = widen(
            &Float32Array::from(vec![Some(1.5), None]),
            &DataType::Float64,
        )
        .unwrap();
        assert_eq!(
            out.as_primitive::<Float64Type>().iter().collect::<Vec<_>>(),
            vec![Some(1.5), None]
        );
        let out = widen(&UInt8Array::from(vec![255]), &DataType::Float64).unwrap();
        assert_eq!(out.as_primitive::<Float64Type>().value(0), 255.0);
    }

    #[test]
    fn other_conversions_are_unsupported() {
        let err = widen(&Float32Array::from(vec![1.0]), &DataType::UInt32).unwrap_err();
        assert!(matches!(err, WidenError::Unsupported { .. }), "{err:?}");
        let err = widen(&StringArray::from(vec!["1"]), &DataType::UInt32).unwrap_err();
        assert!(matches!(err, WidenError::Unsupported { .. }), "{err:?}");
    }

    #[test]
    fn large_lists_and_sliced_lists_keep_rows_nulls_and_empty_lists() {
        let mut b = LargeListBuilder::new(UInt64Builder::new());
        b.values().append_value(9);
        b.append(true);
        b.values().append_value(1);
        b.values().append_null();
        b.append(true);
        b.append(false);
        b.append(true);
        b.values().append_value(3);
        b.append(true);
        let column: ArrayRef = Arc::new(b.finish());
        let to = list_field(DataType::UInt64);
        let out = widen(column.as_ref(), &to).unwrap();
        assert_eq!(out.data_type(), &to);
        assert_eq!(
            u64_lists(&out),
            vec![
                Some(vec![Some(9)]),
                Some(vec![Some(1), None]),
                None,
                Some(vec![]),
                Some(vec![Some(3)])
            ]
        );
        // A slice: offsets that do not start at zero.
        let out = widen(column.slice(1, 4).as_ref(), &to).unwrap();
        assert_eq!(
            u64_lists(&out),
            vec![
                Some(vec![Some(1), None]),
                None,
                Some(vec![]),
                Some(vec![Some(3)])
            ]
        );
    }

    #[test]
    fn a_value_that_does_not_fit_names_the_row_of_its_list() {
        let mut b = ListBuilder::new(arrow_array::builder::Int64Builder::new());
        b.values().append_value(1);
        b.append(true);
        b.append(true);
        b.append(true);
        b.values().append_value(2);
        b.values().append_value(-5);
        b.append(true);
        let column = b.finish();
        assert_eq!(
            widen(&column, &list_field(DataType::UInt32)).unwrap_err(),
            WidenError::DoesNotFit { row: 3 }
        );
    }

    #[test]
    fn list_views_are_copied_out_in_row_order() {
        // Views out of order and overlapping: rows [5, 6], null, [4], [].
        let values = Arc::new(Int64Array::from(vec![4, 5, 6]));
        let field = Arc::new(Field::new_list_field(DataType::Int64, true));
        let column = LargeListViewArray::new(
            field,
            vec![1i64, 0, 0, 2].into(),
            vec![2i64, 0, 1, 0].into(),
            values,
            Some(vec![true, false, true, true].into()),
        );
        let out = widen(&column, &list_field(DataType::UInt64)).unwrap();
        assert_eq!(
            u64_lists(&out),
            vec![
                Some(vec![Some(5), Some(6)]),
                None,
                Some(vec![Some(4)]),
                Some(vec![])
            ]
        );
    }

    proptest! {
        #[test]
        fn integers_widen_exactly_when_each_value_fits(
            values in proptest::collection::vec(proptest::option::of(any::<i64>()), 0..40)
        ) {
            let column = Int64Array::from(values.clone());
            let first_bad = values
                .iter()
                .position(|v| v.is_some_and(|v| u32::try_from(v).is_err()));
            match widen(&column, &DataType::UInt32) {
                Ok(out) => {
                    prop_assert_eq!(first_bad, None);
                    let got: Vec<Option<i64>> = out
                        .as_primitive::<UInt32Type>()
                        .iter()
                        .map(|v| v.map(i64::from))
                        .collect();
                    prop_assert_eq!(got, values);
                }
                Err(e) => prop_assert_eq!(e, WidenError::DoesNotFit { row: first_bad.unwrap() }),
            }
        }
    }
}
