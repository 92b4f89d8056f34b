//! What the audience routes share: expressions and cursors from the
//! request, pages of members, and members streamed as a file.

use crate::audience::bitmaps::{page_after, TagBitmaps};
use crate::audience::expr::Expr;
use crate::http::{ApiError, AppState};
use crate::members::export::{self, ExportError, Format};
use crate::store::Store;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use roaring::RoaringBitmap;
use serde::Deserialize;
use std::sync::Arc;
use utoipa::IntoParams;

/// Query string of the member listings and exports.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MembersQuery {
    /// The expression (only for `GET /api/v1/audiences/query`).
    pub expr: Option<String>,
    /// `csv`, `jsonl` or `parquet`: stream every member as a file
    /// (without: a JSON page).
    pub format: Option<String>,
    /// Members per page, 0 to 10000 (default 100).
    #[param(value_type = Option<u32>, maximum = 10000)]
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Members per page at most.
pub const MAX_PAGE: usize = 10_000;

/// `expr` parsed against the loaded tags: 400 with the position and token
/// of the first error.
pub fn parse_expr(state: &AppState, text: &str) -> Result<Expr, ApiError> {
    crate::members::resolve::parse(text, &state.tags()).map_err(|e| {
        ApiError::bad_request(
            format!("invalid audience expression: {e}"),
            format!("受众表达式无效: {e}"),
        )
    })
}

/// A page cursor: the last member's dense index.
pub fn parse_cursor(raw: Option<&str>) -> Result<Option<u32>, ApiError> {
    raw.map(|c| {
        c.parse::<u32>().map_err(|_| ApiError::BadParam {
            name: "cursor",
            error: format!(
                "cursor must be the next_cursor of a previous page, got \"{}\"",
                tag_plugin_api::echo::clip(c)
            ),
        })
    })
    .transpose()
}

/// Up to `limit` members of `bits` after `cursor`, with their user ids,
/// and the cursor of the next page.
pub fn page(
    store: &dyn Store,
    bits: &RoaringBitmap,
    cursor: Option<u32>,
    limit: usize,
) -> Result<(Vec<String>, Option<String>), crate::store::StoreError> {
    let (uidx, next) = page_after(bits, cursor, limit);
    let users = store.indexed_users(&uidx)?;
    let next = next.map(|u| u.to_string());
    Ok((users.into_iter().map(|(_, u)| u).collect(), next))
}

/// `format` as asked: 400 for one not offered.
pub fn parse_format(raw: Option<&str>) -> Result<Option<Format>, ApiError> {
    raw.map(|f| {
        Format::parse(f).ok_or_else(|| ApiError::BadParam {
            name: "format",
            error: format!(
                "format must be csv, jsonl or parquet, got \"{}\"",
                tag_plugin_api::echo::clip(f)
            ),
        })
    })
    .transpose()
}

/// Streams every member of the set `select` picks from the live bitmaps,
/// written in `format` on a blocking thread as the client reads.
pub async fn stream_members(
    state: AppState,
    select: impl FnOnce(&TagBitmaps) -> RoaringBitmap + Send + 'static,
    format: Format,
    name: &str,
) -> Result<Response, ApiError> {
    let live = Arc::clone(&state.live);
    let (snapshot, bits) = state
        .blocking(move |s| {
            let snapshot = live.fresh(s)?;
            let bits = select(&snapshot);
            Ok((snapshot.version(), bits))
        })
        .await?;
    let store = Arc::clone(&state.store);
    let body = streamed(move |out| {
        export::write_members(store.as_ref(), &bits, format, out, &mut |_| {}).map(drop)
    });
    Ok(attachment(body, format, &format!("{name}-v{snapshot}")))
}

/// A response body written by `write` on a blocking thread, in chunks sent
/// as the client reads them; an error ends the body early (the client sees
/// a cut transfer, the log says why).
pub fn streamed(
    write: impl FnOnce(ChannelWriter) -> Result<(), ExportError> + Send + 'static,
) -> axum::body::Body {
    let (send, receive) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let writer = ChannelWriter {
        buffer: Vec::with_capacity(ChannelWriter::CHUNK),
        send: send.clone(),
    };
    tokio::task::spawn_blocking(move || {
        if let Err(e) = write(writer) {
            tracing::warn!(error = %e, "an export stopped");
            let _ = send.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures_util::stream::unfold(receive, |mut receive| async move {
        receive.recv().await.map(|item| (item, receive))
    });
    axum::body::Body::from_stream(stream)
}

/// A response with `body` as a file download named `name.EXT`.
pub fn attachment(body: axum::body::Body, format: Format, name: &str) -> Response {
    let file: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    (
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}.{}\"", format.extension()),
            ),
        ],
        body,
    )
        .into_response()
}

/// An `io::Write` that sends its bytes to a response body in chunks.
pub struct ChannelWriter {
    buffer: Vec<u8>,
    send: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
}

impl ChannelWriter {
    const CHUNK: usize = 256 * 1024;

    fn send_buffer(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(Self::CHUNK));
        self.send.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= Self::CHUNK {
            self.send_buffer()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buffer()
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        let _ = self.send_buffer();
    }
}
