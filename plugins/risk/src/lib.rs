//! Risk tags (风险类): 3 低风险用户, from `user_activity_summary`.

use tag_plugin_api::{export_plugin, ColumnType, Tag, TagInfo};

/// Tag 3: a risk score between 0 and 30 inclusive.
pub struct LowRiskUser;

impl Tag for LowRiskUser {
    fn info(&self) -> TagInfo {
        TagInfo::new(3, "LowRiskUserTask", "低风险用户", "风险类")
            .version(env!("CARGO_PKG_VERSION"))
            .input("user_activity_summary", "risk_score", ColumnType::Float64)
            .default_rule(r#"{"field": "risk_score", "operator": "in_range", "value": [0, 30]}"#)
    }
}

export_plugin!(LowRiskUser);

#[cfg(test)]
mod tests {
    use super::*;
    use tag_plugin_api::{owned::OwnedBatch, testing::evaluate_default};

    #[test]
    fn range_is_inclusive_at_both_ends() {
        let batch = OwnedBatch::new().float64(
            "risk_score",
            &[
                Some(0.0),
                Some(30.0),
                Some(30.0001),
                Some(-0.5),
                None,
                Some(15.5),
            ],
        );
        assert_eq!(
            evaluate_default(LowRiskUser, &batch, "2025-01-15").unwrap(),
            [true, true, false, false, false, true]
        );
    }
}
