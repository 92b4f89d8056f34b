//! Lifecycle tags (生命周期类): 4 新注册用户 and 5 VIP客户, from `user_basic_info`.

use tag_plugin_api::{export_plugin, ColumnType, Tag, TagInfo};

const CATEGORY: &str = "生命周期类";
const TABLE: &str = "user_basic_info";

/// Tag 4: registered within the last 30 days (as of the run's date).
pub struct NewUser;

impl Tag for NewUser {
    fn info(&self) -> TagInfo {
        TagInfo::new(4, "NewUserTask", "新注册用户", CATEGORY)
            .version(env!("CARGO_PKG_VERSION"))
            .input(TABLE, "registration_date", ColumnType::Date)
            .default_rule(
                r#"{"field": "registration_date", "operator": "recent_days", "value": 30}"#,
            )
    }
}

/// Tag 5: level VIP2 or VIP3 with verified KYC.
pub struct VipUser;

impl Tag for VipUser {
    fn info(&self) -> TagInfo {
        TagInfo::new(5, "VIPUserTask", "VIP客户", CATEGORY)
            .version(env!("CARGO_PKG_VERSION"))
            .input(TABLE, "user_level", ColumnType::Utf8)
            .input(TABLE, "kyc_status", ColumnType::Utf8)
            .default_rule(
                r#"{"logic": "AND", "conditions": [
                    {"field": "user_level", "operator": "in", "value": ["VIP2", "VIP3"]},
                    {"field": "kyc_status", "operator": "=", "value": "verified"}]}"#,
            )
    }
}

export_plugin!(NewUser, VipUser);

#[cfg(test)]
mod tests {
    use super::*;
    use tag_plugin_api::{owned::OwnedBatch, testing::evaluate_default};

    #[test]
    fn new_user_window_is_thirty_days_inclusive() {
        let batch = OwnedBatch::new().date(
            "registration_date",
            &[
                Some("2025-01-15"),
                Some("2024-12-16"),
                Some("2024-12-15"),
                Some("2025-02-01"),
                None,
            ],
        );
        assert_eq!(
            evaluate_default(NewUser, &batch, "2025-01-15").unwrap(),
            [true, true, false, false, false]
        );
    }

    #[test]
    fn vip_needs_level_and_verified_kyc_case_sensitive() {
        let batch = OwnedBatch::new()
            .string(
                "user_level",
                &[
                    Some("VIP2"),
                    Some("VIP3"),
                    Some("vip2"),
                    Some("VIP1"),
                    None,
                    Some("VIP3"),
                ],
            )
            .string(
                "kyc_status",
                &[
                    Some("verified"),
                    Some("pending"),
                    Some("verified"),
                    Some("verified"),
                    Some("verified"),
                    None,
                ],
            );
        assert_eq!(
            evaluate_default(VipUser, &batch, "2025-01-15").unwrap(),
            [true, false, false, false, false, false]
        );
    }
}
