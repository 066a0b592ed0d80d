//! Admin API for owner-chosen columns (`masks.NAME.owner_columns`): the
//! owner of a resource (a bot's Super Admin: whoever holds the mask's
//! `manage_with` on that resource) chooses which columns of a table
//! everyone without `unmask_with` sees masked. Callable with the admin
//! token or with the owner's own token.
//!
//! Owns the request bodies and the choice's validation. Must not mask
//! anything: the choice goes to the session store's shared records, which
//! the respond stage reads per response (`mask::owner`).

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::caller::{Caller, forbidden};
use super::{Resp, error, reply};
use crate::config::Runtime;
use crate::mask::owner::{MAX_COLUMNS, choice_key, choice_ns, legacy_choice_key, valid_column};
use crate::session::{SharedOp, Store, now_ms};

/// A choice body larger than this is refused (413).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Choice {
    columns: Vec<String>,
}

/// `GET|PUT|DELETE /masks/{mask}/columns/{resource}[/{record}]`. Returns
/// the response and, for a change, the audit line's action, object and
/// result.
pub async fn handle(
    rt: &Runtime,
    store: &Store,
    caller: &Caller,
    method: &Method,
    (mask, resource, record): (&str, &str, &str),
    body: Option<&[u8]>,
) -> (Resp, Option<(String, Value)>) {
    let Some(spec) = rt.owner_masks.get(mask) else {
        return (
            error(
                StatusCode::NOT_FOUND,
                "unknown_mask",
                "no mask of that name has owner_columns",
            ),
            None,
        );
    };
    if !caller.may(rt, &spec.manage_with, Some((&spec.scope, resource))) {
        return (
            forbidden(&format!(
                "choosing this mask's columns requires {} on {}:{resource}",
                spec.manage_with, spec.scope
            )),
            None,
        );
    }
    let (ns, key) = (choice_ns(mask), choice_key(resource, record));
    // A choice stored under the record's exact spelling (before records
    // were lower-cased) goes with any change.
    let legacy = legacy_choice_key(resource, record).map(|k| SharedOp::Del { ns: ns.clone(), k });
    let answer = |columns: Value| {
        json!({
            "mask": mask,
            "scope": spec.scope,
            "resource": resource,
            "record": (!record.is_empty()).then_some(record),
            "columns": columns,
        })
    };
    let object = format!("{mask}/{}:{resource}/{record}", spec.scope);
    let op = match *method {
        Method::GET => {
            let columns: Value = store
                .shared()
                .get(&ns, &key, now_ms())
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_else(|| json!([]));
            return (reply(StatusCode::OK, answer(columns)), None);
        }
        Method::PUT => {
            let choice: Choice = match serde_json::from_slice(body.unwrap_or_default()) {
                Ok(c) => c,
                Err(e) => {
                    let reason = format!("body is not {{\"columns\": [..]}}: {e}");
                    return (error(StatusCode::BAD_REQUEST, "bad_request", &reason), None);
                }
            };
            let mut columns = choice.columns;
            columns.sort();
            columns.dedup();
            if columns.len() > MAX_COLUMNS || columns.iter().any(|c| !valid_column(c)) {
                let reason = format!(
                    "at most {MAX_COLUMNS} columns, each 1 to 128 bytes without control characters"
                );
                return (error(StatusCode::BAD_REQUEST, "bad_request", &reason), None);
            }
            if columns.is_empty() {
                SharedOp::Del { ns, k: key }
            } else {
                SharedOp::Put {
                    ns,
                    k: key,
                    v: serde_json::to_string(&columns).unwrap_or_default(),
                    x: None,
                }
            }
        }
        Method::DELETE => SharedOp::Del { ns, k: key },
        _ => {
            return (
                error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "see the README's admin API",
                ),
                None,
            );
        }
    };
    let columns = match &op {
        SharedOp::Put { v, .. } => serde_json::from_str(v).unwrap_or_else(|_| json!([])),
        SharedOp::Del { .. } => json!([]),
    };
    match store
        .shared_apply([op].into_iter().chain(legacy).collect())
        .await
    {
        Ok(()) => {
            let result = answer(columns);
            (
                reply(StatusCode::OK, result.clone()),
                Some((object, result)),
            )
        }
        Err(e) => (
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "session_store_unavailable",
                &e.0,
            ),
            None,
        ),
    }
}
