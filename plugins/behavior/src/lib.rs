//! Behaviour tags (行为类): 2 活跃交易者 and 8 最近活跃用户, from `user_activity_summary`.

use tag_plugin_api::{export_plugin, ColumnType, Tag, TagInfo};

const CATEGORY: &str = "行为类";
const TABLE: &str = "user_activity_summary";

/// Tag 2: more than 10 trades in the last 30 days.
pub struct ActiveTrader;

impl Tag for ActiveTrader {
    fn info(&self) -> TagInfo {
        TagInfo::new(2, "ActiveTraderTask", "活跃交易者", CATEGORY)
            .version(env!("CARGO_PKG_VERSION"))
            .input(TABLE, "trade_count_30d", ColumnType::Int32)
            .default_rule(r#"{"field": "trade_count_30d", "operator": ">", "value": 10}"#)
    }
}

/// Tag 8: logged in within the last 7 days (as of the run's date).
pub struct RecentActiveUser;

impl Tag for RecentActiveUser {
    fn info(&self) -> TagInfo {
        TagInfo::new(8, "RecentActiveUserTask", "最近活跃用户", CATEGORY)
            .version(env!("CARGO_PKG_VERSION"))
            .input(TABLE, "last_login_date", ColumnType::Date)
            .default_rule(r#"{"field": "last_login_date", "operator": "recent_days", "value": 7}"#)
    }
}

export_plugin!(ActiveTrader, RecentActiveUser);

#[cfg(test)]
mod tests {
    use super::*;
    use tag_plugin_api::{owned::OwnedBatch, testing::evaluate_default};

    #[test]
    fn active_trader_is_strictly_more_than_ten() {
        let batch = OwnedBatch::new().int32(
            "trade_count_30d",
            &[Some(10), Some(11), None, Some(0), Some(500)],
        );
        assert_eq!(
            evaluate_default(ActiveTrader, &batch, "2025-01-15").unwrap(),
            [false, true, false, false, true]
        );
    }

    #[test]
    fn recent_active_window_is_as_of_minus_seven_through_as_of() {
        let batch = OwnedBatch::new().date(
            "last_login_date",
            &[
                Some("2025-01-15"),
                Some("2025-01-08"),
                Some("2025-01-07"),
                Some("2025-01-16"),
                None,
            ],
        );
        assert_eq!(
            evaluate_default(RecentActiveUser, &batch, "2025-01-15").unwrap(),
            [true, true, false, false, false]
        );
    }
}
