//! Cursor pagination: `?limit=` (1–200, default 50) and `?cursor=` (opaque, from the previous
//! page's `cursor.next`). Cursors are the last id of the page, base64url encoded.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use platform::problem::Problem;
use serde::{Deserialize, Serialize};

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
    /// A consistency token may also come as a query parameter.
    pub consistency: Option<String>,
}

impl PageQuery {
    pub fn limit(&self) -> Result<i64, Problem> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(l) if (1..=MAX_LIMIT).contains(&l) => Ok(l),
            Some(_) => {
                Err(Problem::bad_request(format!("limit must be between 1 and {MAX_LIMIT}")))
            }
        }
    }

    /// The id after which the page starts (`""` for the first page).
    pub fn after(&self) -> Result<String, Problem> {
        match &self.cursor {
            None => Ok(String::new()),
            Some(c) => URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| Problem::bad_request("malformed cursor")),
        }
    }
}

/// One page of a list: its items and where the next page starts.
#[derive(Debug, Serialize)]
pub struct Page {
    pub items: Vec<serde_json::Value>,
    pub cursor: Cursor,
}

#[derive(Debug, Serialize)]
pub struct Cursor {
    pub next: Option<String>,
}

impl Page {
    /// A page from `limit + 1` fetched items: the extra one only says there is more. The cursor
    /// is the id found at JSON pointer `id` (e.g. `/id`) in the page's last item.
    pub fn of(mut items: Vec<serde_json::Value>, limit: i64, id: &str) -> Self {
        let more = items.len() as i64 > limit;
        items.truncate(usize::try_from(limit).unwrap_or(0));
        let last_id = items.last().and_then(|i| i.pointer(id)).and_then(|v| v.as_str());
        let next = last_id.filter(|_| more).map(|i| URL_SAFE_NO_PAD.encode(i));
        Page { items, cursor: Cursor { next } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_page_has_a_cursor_only_when_there_is_more() {
        let items = |n: usize| (0..n).map(|i| json!({ "id": format!("x{i}") })).collect::<Vec<_>>();
        let full = Page::of(items(3), 2, "/id");
        assert_eq!(full.items.len(), 2);
        let q = PageQuery { limit: None, cursor: full.cursor.next.clone(), consistency: None };
        assert_eq!(q.after().unwrap(), "x1");
        assert!(Page::of(items(2), 2, "/id").cursor.next.is_none());
    }
}
