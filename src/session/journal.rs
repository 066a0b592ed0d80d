//! The embedded store's durability: an append-only JSON-lines journal in
//! `sessions.state_dir`, replayed at start and compacted into a snapshot.
//!
//! Why a journal and not an embedded database: the write pattern is tiny
//! appends (an ended session, a deactivation, a batch of activity times)
//! and one sequential read at start; an append + `rename` snapshot gives
//! exactly the durability needed (`write(2)` completes before the request
//! is answered, so `kill -9` loses nothing that was acknowledged) without
//! another storage engine, its file format and its compaction to operate.
//!
//! Records: `{"op":"seen",…}` (activity snapshot of one session),
//! `{"op":"end",…}` (both carry issuer `iss`, subject `u`, session id `s`),
//! `{"op":"revid","s":…}` (a session id revoked for every user),
//! `{"op":"deact","u":…,"t":…}`, `{"op":"react","u":…}`. A `deact` line
//! also raises the user's not-before cut-off to `t`, which a `react` line
//! leaves in place; compaction keeps the cut-off of a reactivated user as
//! its last `deact` line followed by `react` (kept forever: one pair per
//! user ever deactivated).
//!
//! Damage: a last line that cannot be read is a write torn by a crash
//! mid-append (never acknowledged), so it is skipped with a warning. A line
//! that cannot be read *followed by others* is damage that may have eaten a
//! revocation: [`Journal::open`] refuses to start, naming the file and the
//! line, and the journal is left as it is (never compacted over) for the
//! operator to repair. Lines written before sessions were keyed by issuer
//! (no `iss`) are read fail-closed: every one of them, ended or not,
//! revokes its session id for every user until its token expires and at
//! least `retention` (a forced re-login at the upgrade: an active one may
//! have gone idle, or past its lifetime, while the gateway was down).
//!
//! The directory is locked (`rolegate.lock`) so two gateways never share
//! one journal.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::shared::Op;
use super::table::{EndReason, Record, RevokedId, Table};

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Line {
    Seen {
        s: String,
        u: String,
        /// Absent in journals written before sessions were keyed by issuer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        iss: Option<String>,
        c: u64,
        l: u64,
        i: u64,
        x: u64,
    },
    End {
        s: String,
        u: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        iss: Option<String>,
        c: u64,
        l: u64,
        x: u64,
        r: String,
        t: u64,
    },
    Deact {
        u: String,
        t: u64,
    },
    React {
        u: String,
    },
    Revid {
        s: String,
        t: u64,
        x: u64,
    },
    /// A batch of shared records (`shared.rs`), applied as a whole.
    State {
        ops: Vec<Op>,
    },
}

fn line_of(r: &Record) -> Line {
    match r.ended {
        None => Line::Seen {
            s: r.session.clone(),
            u: r.subject.clone(),
            iss: Some(r.issuer.clone()),
            c: r.created_ms,
            l: r.last_ms,
            i: r.idle_ms,
            x: r.exp_ms,
        },
        Some((reason, t)) => Line::End {
            s: r.session.clone(),
            u: r.subject.clone(),
            iss: Some(r.issuer.clone()),
            c: r.created_ms,
            l: r.last_ms,
            x: r.exp_ms,
            r: reason.as_str().to_string(),
            t,
        },
    }
}

struct Inner {
    /// Append handle on the journal.
    file: File,
    /// Length of `file` up to its last whole line: a failed append is cut
    /// back to it, so no partial line is left for the next one to glue to.
    len: u64,
    /// Lines appended since the last compaction.
    appended: usize,
    /// An append failed: memory holds changes the file may lack (an end
    /// already applied, a flushed activity batch). Appends are refused
    /// until [`Journal::compact`] has rewritten the file from memory.
    needs_rewrite: bool,
    /// Appended since the last sync (a rewrite is synced whole).
    unsynced: bool,
    /// Syncs done (tests count them).
    #[cfg(test)]
    syncs: usize,
    #[cfg(test)]
    fault: Option<Fault>,
}

/// Failures injected by tests (a full disk cannot be had on demand).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// The next append writes this many bytes, then fails (a disk filling
    /// up mid-write).
    Partial(usize),
    /// Every write fails, compaction included, until cleared.
    Full,
    /// Opening the new append handle in `compact` fails once.
    Open,
    /// The next sync fails once.
    Sync,
    /// Syncing the directory after a rewrite's rename fails once.
    DirSync,
}

#[cfg(test)]
fn injected() -> std::io::Error {
    std::io::Error::other("injected fault")
}

pub struct Journal {
    dir: PathBuf,
    inner: Mutex<Inner>,
    _lock: File,
}

const JOURNAL: &str = "sessions.journal";
/// Shared records per line in a compacted journal.
const STATE_LINE_OPS: usize = 1000;

impl Journal {
    /// Opens (creating) `dir`, locks it, replays the journal into `table`
    /// and compacts it. Errors are fatal at start: no durable store, no
    /// gateway. `retention_ms` bounds how long a legacy ended line keeps
    /// its session id revoked.
    pub fn open(dir: &Path, table: &Table, retention_ms: u64) -> Result<Journal, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("creating state_dir {}: {e}", dir.display()))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("rolegate.lock"))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        lock.try_lock().map_err(|_| {
            format!(
                "state_dir {} is in use by another rolegate process",
                dir.display()
            )
        })?;

        let path = dir.join(JOURNAL);
        if path.exists() {
            replay_file(&path, table, retention_ms)?;
        }
        let mut opts = OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let file = opts
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let len = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        let j = Journal {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                file,
                len,
                appended: 0,
                needs_rewrite: false,
                unsynced: false,
                #[cfg(test)]
                syncs: 0,
                #[cfg(test)]
                fault: None,
            }),
            _lock: lock,
        };
        j.compact(table)
            .map_err(|e| format!("compacting {}: {e}", path.display()))?;
        Ok(j)
    }

    /// Appends `lines` in one write. Fails without writing while a rewrite
    /// is pending (also for no lines: the caller's change, already in
    /// memory, is then not durable until [`Journal::compact`] succeeds).
    /// A failed write is cut back to the last whole line and makes a
    /// rewrite pending.
    fn write_lines(&self, lines: &[Line]) -> std::io::Result<usize> {
        let mut buf = Vec::with_capacity(lines.len() * 96);
        for l in lines {
            serde_json::to_writer(&mut buf, l).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.needs_rewrite {
            return Err(std::io::Error::other(
                "an earlier write failed; the journal must be rewritten first",
            ));
        }
        if lines.is_empty() {
            return Ok(inner.appended);
        }
        // One write(2): lines from concurrent callers never interleave.
        if let Err(e) = inner.append(&buf) {
            inner.needs_rewrite = true;
            let len = inner.len;
            if let Err(t) = inner.file.set_len(len) {
                tracing::error!(error = %t, "session journal: could not cut a failed write back");
            }
            return Err(e);
        }
        inner.len += buf.len() as u64;
        inner.appended += lines.len();
        inner.unsynced = true;
        Ok(inner.appended)
    }

    /// Syncs what was appended to the disk (`fdatasync`). Activity
    /// flushes are not synced (losing the last seconds of activity to a
    /// power loss only shortens sessions); the changes that refuse
    /// something are.
    /// Nothing appended since the last sync (a repeated logout of an
    /// ended session): no sync. A failed sync makes a rewrite pending, as
    /// a failed append does.
    pub fn sync(&self) -> std::io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !inner.unsynced {
            return Ok(());
        }
        #[cfg(test)]
        let result = if inner.fault == Some(Fault::Sync) {
            inner.fault = None;
            Err(injected())
        } else {
            inner.syncs += 1;
            inner.file.sync_data()
        };
        #[cfg(not(test))]
        let result = inner.file.sync_data();
        match result {
            Ok(()) => inner.unsynced = false,
            Err(_) => inner.needs_rewrite = true,
        }
        result
    }

    #[cfg(test)]
    pub(super) fn fault(&self) -> Option<Fault> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).fault
    }

    #[cfg(test)]
    pub(super) fn syncs(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).syncs
    }

    /// Whether appends wait for a rewrite (an earlier write failed).
    pub fn needs_rewrite(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .needs_rewrite
    }

    #[cfg(test)]
    pub(super) fn inject(&self, fault: Option<Fault>) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).fault = fault;
    }

    /// Appends session records (ended ones or activity snapshots).
    pub fn records(&self, records: &[Record]) -> std::io::Result<usize> {
        let lines: Vec<Line> = records.iter().map(line_of).collect();
        self.write_lines(&lines)
    }

    /// A deactivation and the sessions it ended, in one write.
    pub fn deactivate(&self, subject: &str, t: u64, ended: &[Record]) -> std::io::Result<usize> {
        let mut lines = vec![Line::Deact {
            u: subject.to_string(),
            t,
        }];
        lines.extend(ended.iter().map(line_of));
        self.write_lines(&lines)
    }

    pub fn reactivate(&self, subject: &str) -> std::io::Result<usize> {
        self.write_lines(&[Line::React {
            u: subject.to_string(),
        }])
    }

    /// A batch of shared records, as one line.
    pub fn state(&self, ops: &[Op]) -> std::io::Result<usize> {
        self.write_lines(&[Line::State { ops: ops.to_vec() }])
    }

    /// A session id revoked for every user, with the sessions it ended.
    pub fn revoke_id(
        &self,
        session: &str,
        r: RevokedId,
        ended: &[Record],
    ) -> std::io::Result<usize> {
        let mut lines = vec![Line::Revid {
            s: session.to_string(),
            t: r.at_ms,
            x: r.until_ms,
        }];
        lines.extend(ended.iter().map(line_of));
        self.write_lines(&lines)
    }

    /// Rewrites the journal as a snapshot of `table` (tmp file, fsync,
    /// rename), holding the append lock so no line is lost in between.
    /// Clears a pending rewrite. On failure the old journal and its append
    /// handle stay as they were.
    pub fn compact(&self, table: &Table) -> std::io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        #[cfg(test)]
        if inner.fault == Some(Fault::Full) {
            return Err(injected());
        }
        let tmp = self.dir.join("sessions.journal.tmp");
        let mut out = std::io::BufWriter::new(private_file(&tmp)?);
        for r in table.snapshot() {
            serde_json::to_writer(&mut out, &line_of(&r)).map_err(std::io::Error::other)?;
            out.write_all(b"\n")?;
        }
        for l in user_lines(table) {
            serde_json::to_writer(&mut out, &l).map_err(std::io::Error::other)?;
            out.write_all(b"\n")?;
        }
        for (s, r) in table.revoked_ids() {
            let l = Line::Revid {
                s,
                t: r.at_ms,
                x: r.until_ms,
            };
            serde_json::to_writer(&mut out, &l).map_err(std::io::Error::other)?;
            out.write_all(b"\n")?;
        }
        for chunk in table
            .shared()
            .snapshot(super::now_ms())
            .chunks(STATE_LINE_OPS)
        {
            let l = Line::State {
                ops: chunk.to_vec(),
            };
            serde_json::to_writer(&mut out, &l).map_err(std::io::Error::other)?;
            out.write_all(b"\n")?;
        }
        let f = out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        let len = f.metadata()?.len();
        // The append handle is opened on the new file *before* it replaces
        // the journal: after the rename nothing can fail, so appends never
        // go on to the old, unlinked file while reporting success.
        #[cfg(test)]
        if inner.fault == Some(Fault::Open) {
            inner.fault = None;
            return Err(injected());
        }
        let file = OpenOptions::new().append(true).open(&tmp)?;
        let path = self.dir.join(JOURNAL);
        std::fs::rename(&tmp, &path)?;
        inner.file = file;
        inner.len = len;
        inner.appended = 0;
        inner.unsynced = false;
        // The rename is durable only once the directory is synced: until
        // then a power loss brings the old journal back, without the
        // changes this rewrite was for. A failure leaves the rewrite
        // pending (the next write or housekeeping retries it).
        #[cfg(test)]
        if inner.fault == Some(Fault::DirSync) {
            inner.fault = None;
            inner.needs_rewrite = true;
            return Err(injected());
        }
        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            inner.needs_rewrite = true;
            return Err(e);
        }
        inner.needs_rewrite = false;
        Ok(())
    }
}

/// A new file readable by its owner only (sessions, subjects, directory
/// entries): 0600 from its creation on, whatever the umask.
fn private_file(path: &Path) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
}

impl Inner {
    fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        match self.fault {
            Some(Fault::Partial(n)) => {
                self.fault = None;
                self.file.write_all(&buf[..n.min(buf.len())])?;
                return Err(injected());
            }
            Some(Fault::Full) => return Err(injected()),
            _ => {}
        }
        self.file.write_all(buf)
    }
}

/// The snapshot lines of deactivations and not-before cut-offs, as the
/// journal itself wrote them: a user's last deactivation (`deact` at its
/// cut-off) followed by its `react` when the user is active again, or by
/// its current `deact` when that differs. Replayed, they give back both
/// maps (a `deact` line raises the cut-off); and no new kind of line is
/// needed, so an older gateway can still read the journal.
fn user_lines(table: &Table) -> Vec<Line> {
    let deactivated: std::collections::HashMap<String, u64> =
        table.deactivated().into_iter().collect();
    let mut lines = Vec::new();
    for (u, nb) in table.not_befores() {
        match deactivated.get(&u) {
            Some(&since) if since == nb => lines.push(Line::Deact { u, t: nb }),
            Some(&since) => {
                lines.push(Line::Deact {
                    u: u.clone(),
                    t: nb,
                });
                lines.push(Line::Deact { u, t: since });
            }
            None => {
                lines.push(Line::Deact {
                    u: u.clone(),
                    t: nb,
                });
                lines.push(Line::React { u });
            }
        }
    }
    // Every deactivated user has a cut-off; this only guards that rule.
    for (u, t) in table.deactivated() {
        if table.not_before(&u).is_none() {
            lines.push(Line::Deact { u, t });
        }
    }
    lines
}

/// Replays the journal at `path` into `table`. A last line that cannot be
/// read and has no newline (torn by a crash mid-append) is skipped with a
/// warning. Any other unreadable line is damage and refuses the start: one
/// followed by other lines, or one ending in a newline (an append is one
/// `write(2)` of whole lines, so a torn one never ends in `\n`; a whole
/// unreadable line is damage, or a failed write glued to the next one).
fn replay_file(path: &Path, table: &Table, retention_ms: u64) -> Result<(), String> {
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reader = BufReader::new(f);
    let mut buf = Vec::new();
    let mut n: usize = 0;
    // The first unreadable line: fine only if nothing but blank lines follows.
    let mut unreadable: Option<(usize, String)> = None;
    loop {
        buf.clear();
        let read = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("{}: reading line {}: {e}", path.display(), n + 1))?;
        if read == 0 {
            break;
        }
        n += 1;
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Some((bad, e)) = &unreadable {
            return Err(format!(
                "session journal {}: line {bad} cannot be read ({e}) and more lines follow it, so it is \
                 damage, not a torn last write; refusing to start because the lost line could be a \
                 revocation or deactivation. Repair or delete that line (the journal was left as it is), \
                 then start again",
                path.display()
            ));
        }
        match serde_json::from_slice::<Line>(&buf) {
            Ok(l) => replay(table, l, retention_ms),
            Err(e) if buf.ends_with(b"\n") => {
                return Err(format!(
                    "session journal {}: line {n} cannot be read ({e}) although it was written \
                     whole (it ends in a newline), so it is damage, not a torn last write; refusing \
                     to start because the lost line could be a revocation or deactivation. Repair \
                     or delete that line (the journal was left as it is), then start again",
                    path.display()
                ));
            }
            Err(e) => unreadable = Some((n, e.to_string())),
        }
    }
    if let Some((bad, e)) = unreadable {
        tracing::warn!(
            file = %path.display(),
            line = bad,
            error = %e,
            "session journal: unreadable last line skipped (a write torn by a crash; it was never acknowledged)"
        );
    }
    Ok(())
}

fn replay(table: &Table, l: Line, retention_ms: u64) {
    match l {
        Line::Seen {
            s,
            u,
            iss: Some(iss),
            c,
            l,
            i,
            x,
        } => table.apply(&Record {
            issuer: iss,
            subject: u,
            session: s,
            created_ms: c,
            last_ms: l,
            idle_ms: i,
            exp_ms: x,
            ended: None,
        }),
        // Legacy (no issuer): cannot be keyed under its issuer, and dropping
        // it would let a session idle (or past its lifetime) while the
        // gateway was down start afresh. Fail closed: its id is revoked for
        // every user, as a legacy ended line's is (a forced re-login at the
        // upgrade).
        Line::Seen {
            s, iss: None, x, ..
        } => {
            let now = super::now_ms();
            table.set_revoked_id(
                &s,
                RevokedId {
                    at_ms: now,
                    until_ms: x.max(now.saturating_add(retention_ms)),
                },
            )
        }
        Line::End {
            s,
            u,
            iss: Some(iss),
            c,
            l,
            x,
            r,
            t,
        } => table.apply(&Record {
            issuer: iss,
            subject: u,
            session: s,
            created_ms: c,
            last_ms: l,
            idle_ms: 0,
            exp_ms: x,
            ended: Some((EndReason::parse(&r).unwrap_or(EndReason::Revoked), t)),
        }),
        // Legacy (no issuer): the id was refused for everyone; keep it so.
        Line::End {
            s, iss: None, x, t, ..
        } => table.set_revoked_id(
            &s,
            RevokedId {
                at_ms: t,
                until_ms: x.max(t.saturating_add(retention_ms)),
            },
        ),
        Line::Deact { u, t } => table.set_deactivated(&u, t),
        Line::React { u } => {
            table.reactivate(&u);
        }
        Line::Revid { s, t, x } => table.set_revoked_id(
            &s,
            RevokedId {
                at_ms: t,
                until_ms: x,
            },
        ),
        Line::State { ops } => table.shared().apply(&ops),
    }
}

#[cfg(test)]
mod tests {
    use super::super::table::{SessionRef, Touch};
    use super::*;

    const RET: u64 = 60_000;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rolegate-journal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn id(session: &str) -> SessionRef<'_> {
        SessionRef {
            issuer: "https://idp.test",
            subject: "u1",
            session,
        }
    }

    fn append(d: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.join(JOURNAL))
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    /// The first request of user u1's session s1, at t = 1 s.
    fn u1_s1() -> Touch<'static> {
        Touch {
            issuer: "https://idp.test",
            subject: "u1",
            session: "s1",
            now_ms: 1_000,
            idle_ms: 60_000,
            max_lifetime_ms: None,
            token_exp_ms: u64::MAX / 2,
            token_iat_ms: Some(0),
            touch: true,
            key: None,
        }
    }

    /// A journal with an active session s1, a logged-out s2, a revoked id
    /// r1, a deactivated u7 and a reactivated u8.
    fn write_journal(d: &Path) {
        let t = Table::new();
        let j = Journal::open(d, &t, RET).unwrap();
        let touch = u1_s1();
        t.check(&touch);
        t.check(&Touch {
            session: "s2",
            now_ms: 1_500,
            ..touch
        });
        j.records(&t.take_dirty()).unwrap();
        let ended = t.end(id("s2"), EndReason::Logout, 2_000, 0).unwrap();
        j.records(&[ended]).unwrap();
        let r = RevokedId {
            at_ms: 2_500,
            until_ms: u64::MAX / 2,
        };
        j.revoke_id("r1", r, &t.revoke_id("r1", r.at_ms, r.until_ms))
            .unwrap();
        t.deactivate("u7", 3);
        j.deactivate("u7", 3, &[]).unwrap();
        t.deactivate("u8", 3);
        j.deactivate("u8", 3, &[]).unwrap();
        t.reactivate("u8");
        j.reactivate("u8").unwrap();
    }

    fn assert_state(t: &Table) {
        assert_eq!(t.get(id("s1")).unwrap().last_ms, 1_000);
        assert_eq!(t.get(id("s1")).unwrap().ended, None);
        assert_eq!(
            t.get(id("s2")).unwrap().ended.map(|e| e.0),
            Some(EndReason::Logout)
        );
        assert!(t.is_revoked_id("r1"));
        assert!(t.is_deactivated("u7"));
        assert!(!t.is_deactivated("u8"));
        // The reactivated user keeps the cut-off of its deactivation.
        assert_eq!(t.not_before("u8"), Some(3));
        assert_eq!(t.not_before("u7"), Some(3));
        assert_eq!(t.not_before("u1"), None);
    }

    #[test]
    fn ended_sessions_activity_and_deactivations_survive_reopen() {
        let d = dir("reopen");
        write_journal(&d);
        let t = Table::new();
        drop(Journal::open(&d, &t, RET).unwrap());
        assert_state(&t);
        // Compacted and reopened: the same state.
        let t = Table::new();
        let _j = Journal::open(&d, &t, RET).unwrap();
        assert_state(&t);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Sessions, subjects and directory entries: owner-only, whatever
    /// the umask.
    #[cfg(unix)]
    #[test]
    fn the_journal_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("mode");
        let t = Table::new();
        drop(Journal::open(&d, &t, RET).unwrap());
        let mode = std::fs::metadata(d.join(JOURNAL))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn shared_record_batches_survive_reopen_and_compaction_drops_expired_ones() {
        let d = dir("shared");
        let put = |k: &str, x: Option<u64>| Op::Put {
            ns: "rel.r".into(),
            k: k.into(),
            v: String::new(),
            x,
        };
        {
            let t = Table::new();
            let j = Journal::open(&d, &t, RET).unwrap();
            let batches = [
                vec![
                    put("kept", None),
                    put("gone", None),
                    put("expired", Some(1)),
                ],
                vec![Op::Del {
                    ns: "rel.r".into(),
                    k: "gone".into(),
                }],
            ];
            for b in &batches {
                t.shared().apply(b);
                j.state(b).unwrap();
            }
        }
        for _ in 0..2 {
            // Replayed from the appended lines, then from the compacted file.
            let t = Table::new();
            drop(Journal::open(&d, &t, RET).unwrap());
            assert_eq!(
                t.shared().snapshot(super::super::now_ms()),
                vec![put("kept", None)]
            );
        }
        let text = std::fs::read_to_string(d.join(JOURNAL)).unwrap();
        assert!(!text.contains("expired"), "{text}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn not_before_cut_offs_survive_compaction_with_or_without_a_deactivation() {
        let d = dir("notbefore");
        let t = Table::new();
        let j = Journal::open(&d, &t, RET).unwrap();
        // Reactivated: only the cut-off is left.
        t.deactivate("back", 10);
        t.reactivate("back");
        // Deactivated again at an earlier clock reading: since 5, cut-off 10.
        t.deactivate("again", 10);
        t.set_deactivated("again", 5);
        t.deactivate("plain", 7);
        j.compact(&t).unwrap();
        drop(j);
        let t = Table::new();
        let _j = Journal::open(&d, &t, RET).unwrap();
        assert!(!t.is_deactivated("back"));
        assert_eq!(t.not_before("back"), Some(10));
        let mut deact = t.deactivated();
        deact.sort();
        assert_eq!(deact, [("again".into(), 5), ("plain".into(), 7)]);
        assert_eq!(t.not_before("again"), Some(10));
        assert_eq!(t.not_before("plain"), Some(7));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_nothing_before_it_is_lost() {
        for torn in [&b"{\"op\":\"end\",\"s\":\"s1\""[..], b"\0\0\0\0"] {
            let d = dir("torn");
            write_journal(&d);
            append(&d, torn);
            let t = Table::new();
            let _j = Journal::open(&d, &t, RET).unwrap();
            assert_state(&t);
            let _ = std::fs::remove_dir_all(&d);
        }
    }

    #[test]
    fn a_damaged_line_in_the_middle_refuses_to_start_and_is_not_compacted_over() {
        let d = dir("damaged");
        write_journal(&d);
        // Damage the second line (s2's activity) and add a revocation after it.
        let path = d.join(JOURNAL);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines[1] = "{\"op\":\"seen\",\"s\":\"s2\",\"u\":".into();
        lines.push("{\"op\":\"revid\",\"s\":\"later\",\"t\":1,\"x\":99999999999999}".into());
        let damaged = lines.join("\n") + "\n";
        std::fs::write(&path, &damaged).unwrap();
        let err = match Journal::open(&d, &Table::new(), RET) {
            Ok(_) => panic!("a damaged journal was opened"),
            Err(e) => e,
        };
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("line 2"), "{err}");
        // Left as it was for the operator: not compacted, nothing dropped.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), damaged);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn legacy_lines_without_an_issuer_revoke_their_session_ids() {
        let d = dir("legacy");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join(JOURNAL),
            "{\"op\":\"seen\",\"s\":\"a\",\"u\":\"u1\",\"c\":1,\"l\":2,\"i\":3,\"x\":4}\n\
             {\"op\":\"end\",\"s\":\"b\",\"u\":\"u1\",\"c\":1,\"l\":2,\"x\":4,\"r\":\"logout\",\"t\":5}\n",
        )
        .unwrap();
        let t = Table::new();
        let _j = Journal::open(&d, &t, RET).unwrap();
        assert!(t.is_revoked_id("b"));
        // An old-format active line is a forced re-login too: it may have
        // gone idle while the gateway was down.
        assert!(t.is_revoked_id("a"));
        assert!(t.is_empty());
        let revoked = |t: &Table, u: &str, s: &'static str| {
            t.check(&Touch {
                issuer: "https://idp.test",
                subject: u,
                session: s,
                now_ms: super::super::now_ms(),
                idle_ms: 60_000,
                max_lifetime_ms: None,
                token_exp_ms: u64::MAX / 2,
                token_iat_ms: Some(0),
                touch: true,
                key: None,
            })
            .0 == super::super::Verdict::Ended(EndReason::Revoked)
        };
        assert!(revoked(&t, "u1", "a") && revoked(&t, "someone", "a"));
        drop(_j);
        // Compacted into `revid` lines: still refused after another restart.
        let t = Table::new();
        let _j = Journal::open(&d, &t, RET).unwrap();
        assert!(t.is_revoked_id("a") && t.is_revoked_id("b"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_unreadable_last_line_ending_in_a_newline_is_damage_not_a_torn_write() {
        for whole in [
            &b"{\"op\":\"end\",\"s\":\"s1\"\n"[..],
            b"{\"op\":\"end\",\"s\":\"s1\"\n\n",
            // A failed partial write with the next acknowledged line glued on.
            b"{\"op\":\"end\",\"s\"{\"op\":\"revid\",\"s\":\"x\",\"t\":1,\"x\":2}\n",
        ] {
            let d = dir("whole");
            write_journal(&d);
            append(&d, whole);
            let before = std::fs::read(d.join(JOURNAL)).unwrap();
            let err = match Journal::open(&d, &Table::new(), RET) {
                Ok(_) => panic!("opened over a damaged last line"),
                Err(e) => e,
            };
            assert!(err.contains("refusing to start"), "{err}");
            assert_eq!(std::fs::read(d.join(JOURNAL)).unwrap(), before);
            let _ = std::fs::remove_dir_all(&d);
        }
    }

    /// A journal whose `seen` write of session s1 (in `t`) has just failed
    /// half-way through.
    fn journal_after_a_failed_write(d: &Path, t: &Table) -> Journal {
        let j = Journal::open(d, t, RET).unwrap();
        let touch = u1_s1();
        t.check(&touch);
        j.records(&t.take_dirty()).unwrap();
        let ended = t.end(id("s1"), EndReason::Logout, 2_000, 0).unwrap();
        j.inject(Some(Fault::Partial(12)));
        assert!(j.records(&[ended]).is_err());
        j
    }

    #[test]
    fn a_failed_write_leaves_no_partial_line_and_blocks_appends_until_a_rewrite() {
        let d = dir("failed");
        let t = Table::new();
        let j = journal_after_a_failed_write(&d, &t);
        // Cut back: the file ends with a whole line.
        assert!(std::fs::read(d.join(JOURNAL)).unwrap().ends_with(b"\n"));
        // An acknowledged append now would follow a change the file lacks
        // (s1's end, in memory): refused, also with nothing to write.
        assert!(j.needs_rewrite());
        assert!(j.records(&[]).is_err());
        let r = RevokedId {
            at_ms: 3_000,
            until_ms: u64::MAX / 2,
        };
        assert!(
            j.revoke_id("r1", r, &t.revoke_id("r1", 3_000, r.until_ms))
                .is_err()
        );
        // The rewrite from memory makes both durable, and appends resume.
        j.compact(&t).unwrap();
        assert!(!j.needs_rewrite());
        j.deactivate("u9", 4, &[]).unwrap();
        drop(j);
        let t = Table::new();
        let _j = Journal::open(&d, &t, RET).unwrap();
        assert_eq!(
            t.get(id("s1")).unwrap().ended.map(|e| e.0),
            Some(EndReason::Logout)
        );
        assert!(t.is_revoked_id("r1"));
        assert!(t.is_deactivated("u9"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_compaction_that_cannot_open_its_new_file_keeps_appending_to_the_journal() {
        let d = dir("reopen-fails");
        let t = Table::new();
        let j = Journal::open(&d, &t, RET).unwrap();
        t.deactivate("u1", 1);
        j.deactivate("u1", 1, &[]).unwrap();
        j.inject(Some(Fault::Open));
        assert!(j.compact(&t).is_err());
        // Acknowledged after the failed compaction: must be in the journal.
        j.deactivate("u2", 2, &[]).unwrap();
        drop(j);
        let t = Table::new();
        let _j = Journal::open(&d, &t, RET).unwrap();
        assert!(t.is_deactivated("u1") && t.is_deactivated("u2"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_second_process_cannot_share_the_state_dir() {
        let d = dir("lock");
        let t = Table::new();
        let _j = Journal::open(&d, &t, RET).unwrap();
        match Journal::open(&d, &Table::new(), RET) {
            Ok(_) => panic!("a second journal opened the same state_dir"),
            Err(e) => assert!(e.contains("in use"), "{e}"),
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
