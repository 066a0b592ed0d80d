//! Websockets: whether one side is in the middle of a frame or of a
//! fragmented message, from the bytes read off its connection, so that a
//! started message can be given a deadline (`listen.websocket_message_timeout`).
//!
//! Owns the framing tracker and the reading wrapper that feeds it. Must
//! not: change, buffer or hold back a byte (it only watches what the
//! websocket library reads), or decide what happens on a late message (the
//! relay in `websocket.rs` does).
//!
//! Hand-written because tungstenite, which parses the same bytes, does not
//! say whether it holds part of a frame or of a message: without this, a
//! peer that sends the start of a message and then trickles the rest keeps
//! up to about twice `max_websocket_message_bytes` held for as long as the
//! socket lives. Only the frame header (RFC 6455 §5.2) is read: the fin
//! bit, the opcode, the payload length and the mask bit.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where one side's bytes stand in the websocket framing.
#[derive(Debug, Default)]
pub struct Framing {
    /// The header of the frame being read, as far as it has come.
    head: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: u64,
    /// A data frame without the fin bit came, and its final continuation
    /// has not.
    fragmented: bool,
}

impl Framing {
    /// Takes the next bytes of the stream; true if, somewhere in them,
    /// nothing was pending (a message ended and no fragment was open), so
    /// that whatever is pending after them began in them.
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        let mut between = false;
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = usize::try_from(self.left).map_or(bytes.len(), |l| l.min(bytes.len()));
                self.left -= n as u64;
                bytes = &bytes[n..];
                if self.left == 0 {
                    self.frame_done();
                    between |= !self.pending();
                }
                continue;
            }
            self.head[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have == self.header_len() {
                self.left = self.payload_len();
                if self.left == 0 {
                    self.frame_done();
                    between |= !self.pending();
                } else {
                    // The header is read; only the opcode and fin bit are
                    // still needed, in `head[0]`.
                    self.have = 1;
                }
            }
        }
        between
    }

    /// A frame has begun and not ended, or a message is fragmented and
    /// its last frame has not come.
    pub fn pending(&self) -> bool {
        self.left > 0 || self.have > 0 || self.fragmented
    }

    /// The header's full length once its second byte is known (14 until
    /// then: never reached before it is).
    fn header_len(&self) -> usize {
        if self.have < 2 {
            return 14;
        }
        let masked = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        let extended = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + extended + masked
    }

    fn payload_len(&self) -> u64 {
        match self.head[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.head[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        }
    }

    fn frame_done(&mut self) {
        let fin = self.head[0] & 0x80 != 0;
        match self.head[0] & 0x0f {
            // Text, binary: the first frame of a message.
            1 | 2 => self.fragmented = !fin,
            // Continuation.
            0 if fin => self.fragmented = false,
            // Control frames may come between fragments: they change
            // nothing.
            _ => {}
        }
        self.have = 0;
    }
}

/// Since when one side has had a frame or message pending: milliseconds
/// after the relay's start, plus one; 0 when nothing is pending. The clock
/// stops while the relay hands this side's last data message to the other side
/// (see [`Started::hold`]).
#[derive(Debug, Default)]
pub struct Started {
    started: AtomicU64,
    /// When the current hold began (ms after the relay's start, plus
    /// one); 0: not held.
    held_at: AtomicU64,
}

impl Started {
    /// How long something has been pending at `now_ms`, the time held
    /// not counted; `None` when nothing is.
    pub fn pending_for(&self, now_ms: u64) -> Option<u64> {
        let started = match self.started.load(Ordering::Acquire) {
            0 => return None,
            ms => ms - 1,
        };
        let until = match self.held_at.load(Ordering::Acquire) {
            0 => now_ms,
            at => at - 1,
        };
        Some(until.saturating_sub(started))
    }

    /// The side's reads stop while the relay hands its last data message
    /// to the other side: so does its clock (the other side's slowness is
    /// `send_timeout`'s, not this side's fault). Nothing reads this side
    /// meanwhile, so nothing else moves the clock. The clock stays visible
    /// (frozen), and control frames do not hold it (the relay calls this
    /// for data messages only): a side that keeps the relay busy with pings
    /// between the fragments of a message is timed all the same. `now_ms` (milliseconds after the
    /// relay's start) is only read when something is pending. Kept in
    /// atomics, so that the relay task's future holds nothing more across
    /// the send.
    pub fn hold(&self, now_ms: impl FnOnce() -> u64) {
        if self.started.load(Ordering::Acquire) != 0 {
            self.held_at
                .store(now_ms().saturating_add(1), Ordering::Release);
        }
    }

    /// After [`Started::hold`]: the clock runs again, moved on by the time
    /// it was held.
    pub fn resume(&self, now_ms: impl FnOnce() -> u64) {
        let at = self.held_at.swap(0, Ordering::AcqRel);
        if at != 0 {
            let held_for = now_ms().saturating_sub(at - 1);
            let started = self.started.load(Ordering::Acquire);
            if started != 0 {
                self.started
                    .store(started.saturating_add(held_for), Ordering::Release);
            }
        }
    }

    fn set(&self, v: u64) {
        self.started.store(v, Ordering::Release);
    }

    #[cfg(test)]
    fn since_ms(&self) -> Option<u64> {
        self.started.load(Ordering::Acquire).checked_sub(1)
    }
}

/// One side's connection, read through a [`Framing`] that sets its
/// [`Started`] when a frame or message begins and clears it when it ends.
pub struct Watched<IO> {
    io: IO,
    framing: Framing,
    started: Arc<Started>,
    base: std::time::Instant,
}

impl<IO> Watched<IO> {
    pub fn new(io: IO, started: Arc<Started>, base: std::time::Instant) -> Self {
        Watched {
            io,
            framing: Framing::default(),
            started,
            base,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r
            && buf.filled().len() > before
        {
            let this = &mut *self;
            let was = this.framing.pending();
            let between = this.framing.feed(&buf.filled()[before..]);
            match (was && !between, this.framing.pending()) {
                // Began in these bytes (nothing was pending before them, or
                // a message ended in them and the next began).
                (false, true) => {
                    let ms = u64::try_from(this.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
                    this.started.set(ms + 1);
                }
                (_, false) => this.started.set(0),
                (true, true) => {}
            }
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control as Ctl, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

    /// A frame as a client sends it (masked), encoded by tungstenite.
    fn frame(fin: bool, opcode: OpCode, len: usize, masked: bool) -> Vec<u8> {
        let header = FrameHeader {
            is_final: fin,
            opcode,
            mask: masked.then_some([1, 2, 3, 4]),
            ..FrameHeader::default()
        };
        let f = Frame::from_payload(header, vec![b'x'; len].into());
        let mut out = Vec::new();
        f.format(&mut out).unwrap();
        out
    }

    /// Feeds `bytes` one at a time; `pending` after each.
    fn trace(f: &mut Framing, bytes: &[u8]) -> Vec<bool> {
        bytes
            .iter()
            .map(|b| {
                f.feed(std::slice::from_ref(b));
                f.pending()
            })
            .collect()
    }

    #[test]
    fn a_whole_frame_leaves_nothing_pending_and_a_partial_one_does() {
        for (len, masked) in [
            (0, true),
            (5, false),
            (125, true),
            (126, true),
            (70_000, false),
        ] {
            let bytes = frame(true, OpCode::Data(Data::Binary), len, masked);
            let mut f = Framing::default();
            f.feed(&bytes);
            assert!(!f.pending(), "len {len}");
            let mut f = Framing::default();
            let steps = trace(&mut f, &bytes);
            let last = steps.len() - 1;
            assert!(
                steps[..last].iter().all(|p| *p),
                "len {len}: pending until the end"
            );
            assert!(!steps[last], "len {len}");
        }
    }

    #[test]
    fn a_fragmented_message_is_pending_until_its_final_frame_even_between_frames() {
        let mut f = Framing::default();
        f.feed(&frame(false, OpCode::Data(Data::Text), 10, true));
        assert!(f.pending(), "first fragment");
        // A ping between fragments does not end the message.
        f.feed(&frame(true, OpCode::Control(Ctl::Ping), 4, true));
        assert!(f.pending());
        f.feed(&frame(false, OpCode::Data(Data::Continue), 10, true));
        assert!(f.pending());
        f.feed(&frame(true, OpCode::Data(Data::Continue), 3, true));
        assert!(!f.pending(), "final continuation");
        // Control frames alone never leave anything pending.
        f.feed(&frame(true, OpCode::Control(Ctl::Pong), 0, true));
        assert!(!f.pending());
    }

    #[test]
    fn many_frames_in_one_read_and_a_split_header_are_followed() {
        let mut bytes = Vec::new();
        for len in [3, 200, 0, 66_000] {
            bytes.extend(frame(true, OpCode::Data(Data::Binary), len, true));
        }
        let next = frame(true, OpCode::Data(Data::Text), 300, true);
        bytes.extend(&next[..3]);
        let mut f = Framing::default();
        f.feed(&bytes);
        assert!(f.pending(), "the next frame's header has begun");
        f.feed(&next[3..]);
        assert!(!f.pending());
    }

    #[test]
    fn feed_says_whether_a_message_ended_in_its_bytes() {
        let first = frame(true, OpCode::Data(Data::Binary), 300, true);
        let next = frame(true, OpCode::Data(Data::Binary), 300, true);
        let mut f = Framing::default();
        assert!(!f.feed(&first[..100]), "nothing ended");
        let mut chunk = first[100..].to_vec();
        chunk.extend(&next[..50]);
        assert!(f.feed(&chunk), "the first message ended, the next began");
        assert!(f.pending());
        let mut f = Framing::default();
        f.feed(&frame(false, OpCode::Data(Data::Text), 10, true));
        assert!(
            !f.feed(&frame(true, OpCode::Control(Ctl::Ping), 0, true)),
            "a ping between fragments ends no message"
        );
    }

    #[tokio::test]
    async fn the_wrapper_marks_when_a_frame_starts_and_clears_it_when_it_ends() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let started = Arc::new(Started::default());
        // A relay that began 10 s ago: a clock started now reads about 10 s.
        let base = std::time::Instant::now() - std::time::Duration::from_secs(10);
        let mut w = Watched::new(rx, started.clone(), base);
        let bytes = frame(true, OpCode::Data(Data::Binary), 1000, true);
        let mut buf = vec![0u8; 4096];
        tx.write_all(&bytes[..500]).await.unwrap();
        let n = w.read(&mut buf).await.unwrap();
        assert_eq!(n, 500);
        assert!(started.since_ms().is_some(), "half a frame read");
        tx.write_all(&bytes[500..]).await.unwrap();
        w.read_exact(&mut buf[..bytes.len() - 500]).await.unwrap();
        assert_eq!(started.since_ms(), None, "the frame ended");

        // A read that ends one frame and begins the next restarts the clock.
        tx.write_all(&bytes[..500]).await.unwrap();
        w.read_exact(&mut buf[..500]).await.unwrap();
        started.set(1);
        let mut chunk = bytes[500..].to_vec();
        chunk.extend(&bytes[..10]);
        tx.write_all(&chunk).await.unwrap();
        w.read_exact(&mut buf[..chunk.len()]).await.unwrap();
        assert!(started.since_ms().unwrap() >= 10_000, "the clock restarted");

        // Held while the other side takes a data message: frozen meanwhile,
        // and moved on by the time held when it resumes.
        let at = started.since_ms().unwrap();
        assert_eq!(started.pending_for(at + 300), Some(300));
        started.hold(|| at + 300);
        // Frozen while held: still pending, not growing.
        assert_eq!(started.pending_for(at + 900), Some(300));
        started.resume(|| at + 800);
        assert_eq!(started.since_ms(), Some(at + 500), "moved on by the hold");
        assert_eq!(started.pending_for(at + 1000), Some(500));
        // Holding with nothing pending leaves nothing to resume.
        started.set(0);
        started.hold(|| unreachable!("no clock read"));
        started.resume(|| unreachable!("no clock read"));
        assert_eq!(started.pending_for(at), None);
    }
}
