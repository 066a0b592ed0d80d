//! What the load benches share: the 1 KB customer profile they serve, the
//! `pii` mask policy over it, and how they start a throwaway Redis.
#![allow(dead_code)]

/// A 1 KB customer profile with four PII fields.
pub const PROFILE: &str = r#"{"customer":{"id":"c-1001","name":"Asha Rao","email":"asha.rao@example.com","phone":"+91 98200 11223","tier":"gold","address":{"street":"12 Marine Drive","city":"Mumbai","zip":"400002","country":"IN"},"date_of_birth":"1988-04-12","preferences":{"language":"en","channel":"whatsapp","marketing":false,"locale":"en-IN"},"tags":["vip","repeat","priority-support","early-adopter"],"orders":[{"id":"o-1","total":129.5,"currency":"INR","status":"delivered"},{"id":"o-2","total":54.0,"currency":"INR","status":"shipped"},{"id":"o-3","total":12.25,"currency":"INR","status":"pending"}],"notes":"prefers evening calls; asked about the annual plan renewal and a refund for order o-2","created_at":"2024-01-03T10:00:00Z","updated_at":"2026-11-20T08:30:00Z"},"conversations":[{"id":"cv-7","channel":"whatsapp","opened_at":"2026-11-20T08:00:00Z","status":"open"},{"id":"cv-6","channel":"email","opened_at":"2026-11-02T14:12:00Z","status":"closed","rating":5}],"meta":{"source":"crm","version":17,"segment":"retail-west","owner":"team-7"}}"#;

/// The `pii` mask over `PROFILE`: a config's `masks:` block, inserted as
/// a `format!` argument.
pub const PII_MASK_YAML: &str = r#"masks:
  pii:
    unmask_with: customer.pii.view
    fields:
      - { path: "$..phone", as: last4 }
      - { path: "$..email", as: email }
      - { path: "$..name", as: redact }
      - { path: "$..address", as: redact }
"#;

/// Arguments of a `redis-server` on loopback `port` that writes nothing
/// to disk.
pub fn redis_args(port: u16) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .map(String::from)
    .to_vec()
}
