//! Demographic tags (人口统计类): 7 年轻用户, from `user_basic_info`.

use tag_plugin_api::{export_plugin, ColumnType, Tag, TagInfo};

/// Tag 7: aged 18 to 30 inclusive.
pub struct YoungUser;

impl Tag for YoungUser {
    fn info(&self) -> TagInfo {
        TagInfo::new(7, "YoungUserTask", "年轻用户", "人口统计类")
            .version(env!("CARGO_PKG_VERSION"))
            .input("user_basic_info", "age", ColumnType::Int32)
            .default_rule(r#"{"field": "age", "operator": "in_range", "value": [18, 30]}"#)
    }
}

export_plugin!(YoungUser);

#[cfg(test)]
mod tests {
    use super::*;
    use tag_plugin_api::{owned::OwnedBatch, testing::evaluate_default};

    #[test]
    fn ages_eighteen_through_thirty() {
        let batch = OwnedBatch::new().int32(
            "age",
            &[Some(17), Some(18), Some(30), Some(31), None, Some(25)],
        );
        assert_eq!(
            evaluate_default(YoungUser, &batch, "2025-01-15").unwrap(),
            [false, true, true, false, false, true]
        );
    }
}
