//! `?limit=N&after=KEY` on the list endpoints (`/api/v1/leases`, `/api/v1/nodes`,
//! `/api/v1/discovered`): at most N items whose key (an address, a MAC) comes after KEY, in
//! key order, and a `Link: <…>; rel="next"` header when more follow. Without `limit` the whole
//! list is returned, as before, so scripts that read it whole keep working; a list of 200,000
//! nodes is read in pages by those that need to.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;

/// Largest page.
pub const MAX_LIMIT: usize = 10_000;

/// A `limit` or `after` that cannot be used: a 400 that says which.
#[derive(Debug)]
pub struct BadQuery(String);

impl IntoResponse for BadQuery {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, self.0).into_response()
    }
}

/// The query of a paged list, for the API's description (the handlers read the query map).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct Paging {
    /// At most this many items (up to 10000); without it, the whole list.
    limit: Option<u32>,
    /// The key (address or MAC) the page starts after: the `Link: rel=next` header gives it.
    after: Option<String>,
}

/// The items of one page, and the link to the next if more follow.
pub struct Page<T> {
    pub items: Vec<T>,
    next: Option<String>,
}

/// The page of `items` the query asks for (sorted by `key` first when paged), or a 400 for a
/// bad `limit` or `after`.
pub fn select<T, K>(path: &str, q: &BTreeMap<String, String>, mut items: Vec<T>, key: impl Fn(&T) -> K) -> Result<Page<T>, BadQuery>
where
    K: Ord + Display + FromStr,
{
    let limit = match q.get("limit").map(|v| v.parse::<usize>()) {
        None => None,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => Some(n),
        Some(_) => return Err(BadQuery(format!("limit: 1 to {MAX_LIMIT}\n"))),
    };
    let after = match q.get("after").map(|v| v.parse::<K>()) {
        None => None,
        Some(Ok(k)) => Some(k),
        Some(Err(_)) => return Err(BadQuery("after: not a key of this list (an address or a MAC)\n".into())),
    };
    if limit.is_none() && after.is_none() {
        return Ok(Page { items, next: None });
    }
    items.sort_by_key(&key);
    let start = after.map_or(0, |a| items.partition_point(|i| key(i) <= a));
    let end = limit.map_or(items.len(), |n| (start + n).min(items.len()));
    let next = match (limit, end < items.len() && end > start) {
        (Some(n), true) => Some(format!("<{path}?limit={n}&after={}>; rel=\"next\"", key(&items[end - 1]))),
        _ => None,
    };
    Ok(Page { items: items.drain(start..end).collect(), next })
}

impl<T> Page<T> {
    /// The page as a JSON array of `show(item)`, with its `Link` header.
    pub fn respond<V: serde::Serialize>(self, show: impl FnMut(T) -> V) -> Response {
        let mut resp = axum::Json(self.items.into_iter().map(show).collect::<Vec<V>>()).into_response();
        if let Some(v) = self.next.and_then(|n| HeaderValue::from_str(&n).ok()) {
            resp.headers_mut().insert(header::LINK, v);
        }
        resp
    }
}

/// [`select`] and [`Page::respond`] in one, for lists shown as they are.
pub fn page<T: serde::Serialize, K: Ord + Display + FromStr>(path: &str, q: &BTreeMap<String, String>, items: Vec<T>, key: impl Fn(&T) -> K) -> Response {
    match select(path, q, items, key) {
        Ok(p) => p.respond(|i| i),
        Err(bad) => bad.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    async fn body(r: Response) -> (StatusCode, Option<String>, Vec<u32>) {
        let link = r.headers().get(header::LINK).map(|v| v.to_str().unwrap().to_string());
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, link, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn pages_follow_the_key_order_and_link_the_next() {
        let items: Vec<u32> = vec![5, 1, 4, 2, 3];
        let (_, link, all) = body(page("/l", &q(&[]), items.clone(), |i| *i)).await;
        assert_eq!((link, all), (None, vec![5, 1, 4, 2, 3]), "no limit: everything, as it was");
        let (_, link, first) = body(page("/l", &q(&[("limit", "2")]), items.clone(), |i| *i)).await;
        assert_eq!((first, link.as_deref()), (vec![1, 2], Some("</l?limit=2&after=2>; rel=\"next\"")));
        let (_, link, second) = body(page("/l", &q(&[("limit", "2"), ("after", "2")]), items.clone(), |i| *i)).await;
        assert_eq!((second, link.is_some()), (vec![3, 4], true));
        let (_, link, last) = body(page("/l", &q(&[("limit", "2"), ("after", "4")]), items.clone(), |i| *i)).await;
        assert_eq!((last, link), (vec![5], None));
        assert_eq!(body(page("/l", &q(&[("limit", "0")]), items.clone(), |i| *i)).await.0, StatusCode::BAD_REQUEST);
        assert_eq!(body(page("/l", &q(&[("after", "x")]), items, |i| *i)).await.0, StatusCode::BAD_REQUEST);
    }
}
