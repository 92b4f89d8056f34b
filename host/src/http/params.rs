//! Query parameters more than one resource reads.

use super::ApiError;

/// A non-negative count from the query string, at most `max`.
pub fn parse_count(
    raw: Option<&str>,
    key: &'static str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err(ApiError::BadParam {
                name: key,
                error: format!(
                    "{key} must be an integer from 0 to {max}, got \"{}\"",
                    tag_plugin_api::echo::clip(s)
                ),
            }),
        },
    }
}
