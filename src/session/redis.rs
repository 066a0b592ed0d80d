//! STUB: the Redis store (being written). Same interface as the embedded store.
#![allow(dead_code, unused_variables)]

use super::table::{EndReason, Record, Touch, Verdict};
use super::{SessionSettings, StoreError};

pub struct RedisStore;

impl RedisStore {
    pub async fn open(url: &str, settings: &SessionSettings) -> Result<RedisStore, String> {
        Err("the redis store is not available in this build".into())
    }
    pub async fn check(&self, t: &Touch<'_>) -> Result<Verdict, StoreError> {
        Err(StoreError("not implemented".into()))
    }
    pub async fn end(
        &self,
        session: &str,
        subject: &str,
        reason: EndReason,
        keep_until_ms: u64,
    ) -> Result<bool, StoreError> {
        Err(StoreError("not implemented".into()))
    }
    pub async fn end_user(&self, subject: &str) -> Result<usize, StoreError> {
        Err(StoreError("not implemented".into()))
    }
    pub async fn deactivate(&self, subject: &str) -> Result<bool, StoreError> {
        Err(StoreError("not implemented".into()))
    }
    pub async fn reactivate(&self, subject: &str) -> Result<bool, StoreError> {
        Err(StoreError("not implemented".into()))
    }
    pub async fn is_deactivated(&self, subject: &str) -> Result<bool, StoreError> {
        Err(StoreError("not implemented".into()))
    }
    pub async fn sessions_of(&self, subject: &str) -> Result<Vec<Record>, StoreError> {
        Err(StoreError("not implemented".into()))
    }
    pub async fn ready(&self) -> bool {
        false
    }
    pub async fn flush(&self) {}
}
