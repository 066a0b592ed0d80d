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
    match store.shared_apply(vec![op]).await {
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

/// Folds choices stored before records were lower-cased (a record with
/// upper-case letters under its exact spelling) into their lower-cased
/// key, merged with any choice already there, and removes the old keys:
/// afterwards every spelling of the record finds them. Run once at start;
/// returns how many were folded.
pub async fn fold_legacy_choices(
    store: &Store,
    masks: impl Iterator<Item = &str>,
) -> Result<usize, crate::session::StoreError> {
    let now = now_ms();
    let shared = store.shared();
    let mut ops = Vec::new();
    let mut folded = 0;
    for mask in masks {
        let ns = choice_ns(mask);
        let entries = shared.list(&ns, now);
        // New key → the stored values merged into it.
        let mut merged: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (k, e) in &entries {
            let Ok([resource, record]) = serde_json::from_str::<[String; 2]>(k) else {
                continue;
            };
            if legacy_choice_key(&resource, &record).is_none() {
                continue;
            }
            let to = choice_key(&resource, &record);
            let values = merged.entry(to.clone()).or_insert_with(|| {
                shared
                    .get(&ns, &to, now)
                    .map(|v| v.to_string())
                    .into_iter()
                    .collect()
            });
            values.push(e.value.to_string());
            ops.push(SharedOp::Del {
                ns: ns.clone(),
                k: k.clone(),
            });
            folded += 1;
        }
        for (k, values) in merged {
            // A value that is not a column list is kept as the new key's
            // (the respond stage then refuses the answer: fail closed).
            let v = crate::mask::owner::merge_choices(values.iter().map(String::as_str))
                .unwrap_or_else(|| values.join(""));
            ops.push(SharedOp::Put {
                ns: ns.clone(),
                k,
                v,
                x: None,
            });
        }
    }
    if !ops.is_empty() {
        store.shared_apply(ops).await?;
    }
    Ok(folded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn choices_stored_under_an_exact_spelling_are_folded_to_every_spelling() {
        let d = std::env::temp_dir().join(format!("rolegate-fold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let settings = crate::session::embedded_test_settings(&d);
        let store = Store::open(&settings).await.unwrap();
        let ns = choice_ns("cols");
        let put = |k: &str, v: &str| SharedOp::Put {
            ns: ns.clone(),
            k: k.to_string(),
            v: v.to_string(),
            x: None,
        };
        // As an older version stored them: `Customers` exactly, and a
        // lower-case choice for the same table made since.
        store
            .shared_apply(vec![
                put(r#"["42","Customers"]"#, r#"["phone"]"#),
                put(r#"["42","customers"]"#, r#"["nick"]"#),
                put(r#"["42","Orders"]"#, r#"["email"]"#),
                put(r#"["42",""]"#, r#"["ssn"]"#),
            ])
            .await
            .unwrap();
        let n = fold_legacy_choices(&store, ["cols"].into_iter())
            .await
            .unwrap();
        assert_eq!(n, 2);
        let get = |k: &str| store.shared().get(&ns, k, now_ms());
        assert_eq!(
            get(&choice_key("42", "CUSTOMERS")).as_deref(),
            Some(r#"["nick","phone"]"#)
        );
        assert_eq!(
            get(&choice_key("42", "orders")).as_deref(),
            Some(r#"["email"]"#)
        );
        assert_eq!(get(r#"["42","Customers"]"#), None);
        assert_eq!(get(r#"["42","Orders"]"#), None);
        assert_eq!(get(r#"["42",""]"#).as_deref(), Some(r#"["ssn"]"#));
        // Nothing left to fold.
        assert_eq!(
            fold_legacy_choices(&store, ["cols"].into_iter())
                .await
                .unwrap(),
            0
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
