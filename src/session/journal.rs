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
//! `{"op":"end",…}`, `{"op":"deact","u":…}`, `{"op":"react","u":…}`.
//! A torn last line (crash mid-write) is skipped on replay. The directory is
//! locked (`rolegate.lock`) so two gateways never share one journal.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::table::{EndReason, Record, Table};

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Line {
    Seen {
        s: String,
        u: String,
        c: u64,
        l: u64,
        i: u64,
        x: u64,
    },
    End {
        s: String,
        u: String,
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
}

fn line_of(r: &Record) -> Line {
    match r.ended {
        None => Line::Seen {
            s: r.session.clone(),
            u: r.subject.clone(),
            c: r.created_ms,
            l: r.last_ms,
            i: r.idle_ms,
            x: r.exp_ms,
        },
        Some((reason, t)) => Line::End {
            s: r.session.clone(),
            u: r.subject.clone(),
            c: r.created_ms,
            l: r.last_ms,
            x: r.exp_ms,
            r: reason.as_str().to_string(),
            t,
        },
    }
}

struct Inner {
    file: File,
    /// Lines appended since the last compaction.
    appended: usize,
}

pub struct Journal {
    dir: PathBuf,
    inner: Mutex<Inner>,
    _lock: File,
}

const JOURNAL: &str = "sessions.journal";

impl Journal {
    /// Opens (creating) `dir`, locks it, replays the journal into `table`
    /// and compacts it. Errors are fatal at start: no durable store, no
    /// gateway.
    pub fn open(dir: &Path, table: &Table) -> Result<Journal, String> {
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
            let f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                // A torn final line from a crash mid-write is expected.
                let Ok(l) = serde_json::from_str::<Line>(&line) else {
                    continue;
                };
                replay(table, l);
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let j = Journal {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner { file, appended: 0 }),
            _lock: lock,
        };
        j.compact(table)
            .map_err(|e| format!("compacting {}: {e}", path.display()))?;
        Ok(j)
    }

    fn write_lines(&self, lines: &[Line]) -> std::io::Result<usize> {
        if lines.is_empty() {
            return Ok(0);
        }
        let mut buf = Vec::with_capacity(lines.len() * 96);
        for l in lines {
            serde_json::to_writer(&mut buf, l).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // One write(2): lines from concurrent callers never interleave.
        inner.file.write_all(&buf)?;
        inner.appended += lines.len();
        Ok(inner.appended)
    }

    /// Appends session records (ended ones or activity snapshots).
    pub fn records(&self, records: &[Record]) -> std::io::Result<usize> {
        let lines: Vec<Line> = records.iter().map(line_of).collect();
        self.write_lines(&lines)
    }

    pub fn deactivate(&self, subject: &str, t: u64) -> std::io::Result<usize> {
        self.write_lines(&[Line::Deact {
            u: subject.to_string(),
            t,
        }])
    }

    pub fn reactivate(&self, subject: &str) -> std::io::Result<usize> {
        self.write_lines(&[Line::React {
            u: subject.to_string(),
        }])
    }

    /// Rewrites the journal as a snapshot of `table` (tmp file, fsync,
    /// rename), holding the append lock so no line is lost in between.
    pub fn compact(&self, table: &Table) -> std::io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let tmp = self.dir.join("sessions.journal.tmp");
        let mut out = std::io::BufWriter::new(File::create(&tmp)?);
        for r in table.snapshot() {
            serde_json::to_writer(&mut out, &line_of(&r)).map_err(std::io::Error::other)?;
            out.write_all(b"\n")?;
        }
        for (u, t) in table.deactivated() {
            serde_json::to_writer(&mut out, &Line::Deact { u, t })
                .map_err(std::io::Error::other)?;
            out.write_all(b"\n")?;
        }
        let f = out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        let path = self.dir.join(JOURNAL);
        std::fs::rename(&tmp, &path)?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        inner.file = OpenOptions::new().append(true).open(&path)?;
        inner.appended = 0;
        Ok(())
    }
}

fn replay(table: &Table, l: Line) {
    match l {
        Line::Seen { s, u, c, l, i, x } => table.apply(&Record {
            session: s,
            subject: u,
            created_ms: c,
            last_ms: l,
            idle_ms: i,
            exp_ms: x,
            ended: None,
        }),
        Line::End {
            s,
            u,
            c,
            l,
            x,
            r,
            t,
        } => table.apply(&Record {
            session: s,
            subject: u,
            created_ms: c,
            last_ms: l,
            idle_ms: 0,
            exp_ms: x,
            ended: Some((EndReason::parse(&r).unwrap_or(EndReason::Revoked), t)),
        }),
        Line::Deact { u, t } => table.set_deactivated(&u, t),
        Line::React { u } => {
            table.reactivate(&u);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::table::Touch;
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rolegate-journal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn ended_sessions_activity_and_deactivations_survive_reopen() {
        let d = dir("reopen");
        {
            let t = Table::new();
            let j = Journal::open(&d, &t).unwrap();
            let touch = Touch {
                session: "s1",
                subject: "u1",
                now_ms: 1_000,
                idle_ms: 60_000,
                max_lifetime_ms: None,
                token_exp_ms: u64::MAX / 2,
                touch: true,
            };
            t.check(&touch);
            t.check(&Touch {
                session: "s2",
                now_ms: 1_500,
                ..touch
            });
            j.records(&t.take_dirty()).unwrap();
            let ended = t.end("s2", "u1", EndReason::Logout, 2_000, 0).unwrap();
            j.records(&[ended]).unwrap();
            t.deactivate("u7", 3);
            j.deactivate("u7", 3).unwrap();
            t.deactivate("u8", 3);
            j.deactivate("u8", 3).unwrap();
            t.reactivate("u8");
            j.reactivate("u8").unwrap();
            // Simulate a torn final line.
            let mut f = OpenOptions::new()
                .append(true)
                .open(d.join(JOURNAL))
                .unwrap();
            f.write_all(b"{\"op\":\"end\",\"s\":\"s1\"").unwrap();
        }
        let t = Table::new();
        let _j = Journal::open(&d, &t).unwrap();
        assert_eq!(t.get("s1").unwrap().last_ms, 1_000);
        assert_eq!(t.get("s1").unwrap().ended, None);
        assert_eq!(
            t.get("s2").unwrap().ended.map(|e| e.0),
            Some(EndReason::Logout)
        );
        assert!(t.is_deactivated("u7"));
        assert!(!t.is_deactivated("u8"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_second_process_cannot_share_the_state_dir() {
        let d = dir("lock");
        let t = Table::new();
        let _j = Journal::open(&d, &t).unwrap();
        match Journal::open(&d, &Table::new()) {
            Ok(_) => panic!("a second journal opened the same state_dir"),
            Err(e) => assert!(e.contains("in use"), "{e}"),
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
