//! A record batch as the module receives it: imported through the Arrow C
//! Data Interface (its buffers stay the exporter's: nothing is copied), and
//! the column each tag input is read from.

use crate::columns::ColumnError;
use arrow_array::ffi::{from_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::{Array, ArrayRef, StructArray};
use arrow_schema::DataType;

/// The columns of one batch, by name, all of `num_rows` rows.
#[derive(Debug, Clone)]
pub struct Table {
    num_rows: usize,
    names: Vec<String>,
    columns: Vec<ArrayRef>,
}

impl Table {
    /// A batch exported as a struct array (as a record batch's
    /// `__arrow_c_array__` is); a null row of the struct itself is refused,
    /// as a record batch has none.
    pub fn from_struct(array: StructArray) -> Result<Table, String> {
        if array.null_count() > 0 {
            return Err(format!(
                "the batch has {} null rows at the top level; a record batch has none",
                array.null_count()
            ));
        }
        let num_rows = array.len();
        let (fields, columns, _) = array.into_parts();
        Ok(Table {
            num_rows,
            names: fields.iter().map(|f| f.name().clone()).collect(),
            columns,
        })
    }

    /// Imports an exported batch, taking ownership of `array` (its release
    /// callback runs when the last column built on it is dropped).
    ///
    /// # Safety
    /// `array` and `schema` must be valid C Data Interface structures that
    /// describe each other, as a producer exports them.
    pub unsafe fn from_c(array: FFI_ArrowArray, schema: &FFI_ArrowSchema) -> Result<Table, String> {
        // SAFETY: the caller's promise.
        let mut data = unsafe { from_ffi(array, schema) }
            .map_err(|e| format!("cannot import the Arrow batch: {e}"))?;
        // The C Data Interface asks for 8-byte alignment, arrow-rs for the
        // value type's (16 bytes for DECIMAL128): Spark's batches have
        // DECIMAL buffers 8 bytes off. Only such buffers are copied.
        data.align_buffers();
        if !matches!(data.data_type(), DataType::Struct(_)) {
            return Err(format!(
                "expected a record batch (an Arrow struct array), got an array of {}",
                data.data_type()
            ));
        }
        Table::from_struct(StructArray::from(data))
    }

    /// Rows in the batch.
    pub fn num_rows(&self) -> usize {
        self.num_rows
    }

    /// The column an input of `table`.`column` is read from: the one named
    /// `table.column`, else the one named `column`; with its name.
    pub fn find(&self, table: &str, column: &str) -> Result<(&str, &dyn Array), ColumnError> {
        let qualified = format!("{table}.{column}");
        let at = self
            .names
            .iter()
            .position(|n| *n == qualified)
            .or_else(|| self.names.iter().position(|n| n == column));
        match at {
            Some(i) => Ok((&self.names[i], self.columns[i].as_ref())),
            None => Err(ColumnError::Missing {
                table: table.to_string(),
                column: column.to_string(),
                available: self.names.join(", "),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::ffi::to_ffi;
    use arrow_array::{Float64Array, Int32Array, StringArray};
    use arrow_schema::{Field, Fields};
    use std::sync::Arc;

    fn exported(array: &dyn Array) -> Table {
        let (array, schema) = to_ffi(&array.to_data()).unwrap();
        // SAFETY: just exported by arrow-rs, describing each other.
        unsafe { Table::from_c(array, &schema) }.unwrap()
    }

    fn struct_of(columns: Vec<(&str, ArrayRef)>) -> StructArray {
        let fields: Fields = columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect();
        StructArray::new(fields, columns.into_iter().map(|(_, a)| a).collect(), None)
    }

    #[test]
    fn an_exported_batch_imports_with_its_buffers_where_they_were() {
        let scores = Float64Array::from(vec![Some(1.5), None, Some(30.0)]);
        let ptr = scores.values().as_ptr();
        let table = exported(&struct_of(vec![
            ("user_activity_summary.risk_score", Arc::new(scores)),
            ("age", Arc::new(Int32Array::from(vec![1, 2, 3]))),
        ]));
        assert_eq!(table.num_rows(), 3);
        let (name, array) = table.find("user_activity_summary", "risk_score").unwrap();
        assert_eq!(name, "user_activity_summary.risk_score");
        assert_eq!(array.null_count(), 1);
        let floats = array.as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(
            floats.values().as_ptr(),
            ptr,
            "the import copied the buffer"
        );
        // A bare column name serves any table's input of that column.
        assert_eq!(table.find("user_basic_info", "age").unwrap().0, "age");
    }

    #[test]
    fn a_decimal_buffer_aligned_to_8_bytes_only_is_copied_not_refused() {
        use arrow_array::Decimal128Array;
        use arrow_buffer::Buffer;
        use arrow_data::ArrayData;
        // Three i128 values starting 8 bytes into a 16-aligned allocation,
        // as in Spark's batches (arrow-rs cannot build such an array).
        let mut bytes = vec![0u8; 8];
        for v in [15_000_000i128, -1, 42] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let values = Buffer::from_vec(bytes).slice(8);
        assert_eq!(values.as_ptr() as usize % 16, 8);
        let decimal = DataType::Decimal128(18, 2);
        // SAFETY: a valid layout for three non-null DECIMAL128 values (only
        // the alignment is below arrow-rs's own).
        let (column, batch) = unsafe {
            let column = ArrayData::new_unchecked(
                decimal.clone(),
                3,
                Some(0),
                None,
                0,
                vec![values],
                vec![],
            );
            let fields = Fields::from(vec![Field::new("d", decimal, true)]);
            let batch = ArrayData::new_unchecked(
                DataType::Struct(fields),
                3,
                Some(0),
                None,
                0,
                vec![],
                vec![column.clone()],
            );
            (column, batch)
        };
        let (array, schema) = to_ffi(&batch).unwrap();
        // SAFETY: just exported, describing each other.
        let table = unsafe { Table::from_c(array, &schema) }.unwrap();
        drop(column);
        let (_, got) = table.find("t", "d").unwrap();
        let got = got.as_any().downcast_ref::<Decimal128Array>().unwrap();
        assert_eq!(got.values().to_vec(), vec![15_000_000, -1, 42]);
    }

    #[test]
    fn a_missing_column_names_both_spellings_and_what_there_is() {
        let table = exported(&struct_of(vec![(
            "a.x",
            Arc::new(StringArray::from(vec!["1"])) as ArrayRef,
        )]));
        let err = table.find("t", "y").unwrap_err().to_string();
        assert_eq!(err, "the batch has no column t.y (nor y); its columns: a.x");
    }

    #[test]
    fn an_array_that_is_not_a_batch_is_refused() {
        let (array, schema) = to_ffi(&Int32Array::from(vec![1]).to_data()).unwrap();
        // SAFETY: just exported by arrow-rs, describing each other.
        let err = unsafe { Table::from_c(array, &schema) }.unwrap_err();
        assert!(err.contains("expected a record batch"), "{err}");
    }
}
