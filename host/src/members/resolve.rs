//! Expressions parsed against the loaded tags: a tag is named by its id,
//! its task class or its description (e.g. 高净值用户).

use crate::audience::expr::{self, Expr, ExprError, Reference};
use tag_plugin_loader::TagRegistry;

/// `text` parsed, its names and ids resolved to loaded tags.
pub fn parse(text: &str, tags: &TagRegistry) -> Result<Expr, ExprError> {
    expr::parse(text, &|reference| match reference {
        Reference::Id(id) => tags.get(id).map(|t| t.info.tag_id),
        Reference::Name(name) => tags
            .iter()
            .find(|t| {
                t.info.task_class.as_str() == name
                    || t.info.description.as_str() == name
                    || t.info.task_class.eq_ignore_ascii_case(name)
            })
            .map(|t| t.info.tag_id),
    })
}
