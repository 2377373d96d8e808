//! Cursor pagination: `?limit=` (1–200, default 50) and `?cursor=` (opaque, from the previous
//! page's `cursor.next`). Cursors are the last id of the page, base64url encoded.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use platform::problem::Problem;
use schemas::read::{Cursor, Page};
use serde::Deserialize;

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
/// A page of `items` (fetched with `limit + 1` to know whether there is more), with a cursor
/// made from the last item's key when there is.
pub fn page<T>(mut items: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Page<T> {
    let more = items.len() as i64 > limit;
    items.truncate(usize::try_from(limit).unwrap_or(0));
    let next = items.last().filter(|_| more).map(|i| URL_SAFE_NO_PAD.encode(key(i)));
    Page { items, cursor: Cursor { next } }
}

/// A stored enum value (a role) as its type; a value the type does not know is a server bug.
pub fn parse_stored<T: serde::de::DeserializeOwned>(value: &str) -> Result<T, Problem> {
    serde_json::from_value(serde_json::Value::String(value.to_owned()))
        .map_err(|e| Problem::internal(&format!("stored value {value:?}: {e}")))
}

/// A stored id as its type.
pub fn parse_id<T: std::str::FromStr>(value: &str) -> Result<T, Problem>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| Problem::internal(&format!("stored id {value:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_has_a_cursor_only_when_there_is_more() {
        let items = |n: usize| (0..n).map(|i| format!("x{i}")).collect::<Vec<_>>();
        let full = page(items(3), 2, String::clone);
        assert_eq!(full.items.len(), 2);
        let q = PageQuery { limit: None, cursor: full.cursor.next.clone(), consistency: None };
        assert_eq!(q.after().unwrap(), "x1");
        assert!(page(items(2), 2, String::clone).cursor.next.is_none());
    }
}
