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
            Some(_) => Err(Problem::bad_request(format!(
                "limit must be between 1 and {MAX_LIMIT}"
            ))),
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

#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub cursor: Cursor,
}

#[derive(Debug, Serialize)]
pub struct Cursor {
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// A page from `limit + 1` fetched rows: the extra row only says there is more.
    pub fn from_rows(mut items: Vec<T>, limit: i64, id_of: impl Fn(&T) -> String) -> Self {
        let more = items.len() as i64 > limit;
        items.truncate(limit as usize);
        let next = more
            .then(|| items.last().map(|i| URL_SAFE_NO_PAD.encode(id_of(i))))
            .flatten();
        Page {
            items,
            cursor: Cursor { next },
        }
    }
}
