//! Wealth tags (财富类): 1 高净值用户 and 6 现金充足用户, from `user_asset_summary`.

use tag_plugin_api::{export_plugin, ColumnType, Tag, TagInfo};

const CATEGORY: &str = "财富类";
const TABLE: &str = "user_asset_summary";

/// Tag 1: total assets of at least 150,000 with at least 60,000 in cash.
pub struct HighNetWorthUser;

impl Tag for HighNetWorthUser {
    fn info(&self) -> TagInfo {
        TagInfo::new(1, "HighNetWorthUserTask", "高净值用户", CATEGORY)
            .version(env!("CARGO_PKG_VERSION"))
            .input(TABLE, "total_asset_value", ColumnType::Float64)
            .input(TABLE, "cash_balance", ColumnType::Float64)
            .default_rule(
                r#"{"logic": "AND", "conditions": [
                    {"field": "total_asset_value", "operator": ">=", "value": 150000},
                    {"field": "cash_balance", "operator": ">=", "value": 60000}]}"#,
            )
    }
}

/// Tag 6: at least 50,000 in cash.
pub struct CashRichUser;

impl Tag for CashRichUser {
    fn info(&self) -> TagInfo {
        TagInfo::new(6, "CashRichUserTask", "现金充足用户", CATEGORY)
            .version(env!("CARGO_PKG_VERSION"))
            .input(TABLE, "cash_balance", ColumnType::Float64)
            .default_rule(r#"{"field": "cash_balance", "operator": ">=", "value": 50000}"#)
    }
}

export_plugin!(HighNetWorthUser, CashRichUser);

#[cfg(test)]
mod tests {
    use super::*;
    use tag_plugin_api::{owned::OwnedBatch, testing::evaluate_default};

    const AS_OF: &str = "2025-01-15";

    #[test]
    fn high_net_worth_needs_both_thresholds_inclusive() {
        let batch = OwnedBatch::new()
            .float64(
                "total_asset_value",
                &[
                    Some(150_000.0),
                    Some(149_999.99),
                    Some(1e7),
                    None,
                    Some(200_000.0),
                    Some(150_000.0),
                ],
            )
            .float64(
                "cash_balance",
                &[
                    Some(60_000.0),
                    Some(1e6),
                    Some(59_999.99),
                    Some(1e6),
                    None,
                    Some(60_000.01),
                ],
            );
        assert_eq!(
            evaluate_default(HighNetWorthUser, &batch, AS_OF).unwrap(),
            [true, false, false, false, false, true]
        );
    }

    #[test]
    fn cash_rich_at_threshold_and_null() {
        let batch = OwnedBatch::new().float64(
            "cash_balance",
            &[Some(50_000.0), Some(49_999.999), None, Some(-1.0)],
        );
        assert_eq!(
            evaluate_default(CashRichUser, &batch, AS_OF).unwrap(),
            [true, false, false, false]
        );
    }

    #[test]
    fn metadata_matches_the_reference_table() {
        let info = HighNetWorthUser.info();
        assert_eq!(
            (
                info.tag_id,
                info.task_class.as_str(),
                info.description.as_str()
            ),
            (1, "HighNetWorthUserTask", "高净值用户")
        );
        assert_eq!(CashRichUser.info().category, "财富类");
        info.check().unwrap();
        CashRichUser.info().check().unwrap();
    }
}
