//! One connection's outgoing side: a writer task that batches, and a
//! direct write that skips it.
//!
//! Frames normally go through the writer task, which encodes whatever waits
//! together into one write, so under load frames share syscalls. But a task
//! hop costs a closed loop (one job in flight) a wake-up, a poll and a
//! channel on every message; so a sender that knows nothing else is coming
//! (the master: its pool's inbox is empty; the client: no other job of the
//! connection is in flight) may call [`Outbox::send_now`]: when the writer
//! is idle (nothing queued, nothing half-written) the frame is encoded and
//! written on the socket right there. A direct write the socket cannot take
//! whole leaves its tail to the writer, which writes it before anything
//! queued after it, so frames keep their order whichever way they go.

use crate::codec::{self, CodecError};
use bytes::BytesMut;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc::{self, error::TryRecvError};

/// The sending side, cloned into whatever answers on the connection. The
/// writer ends when every clone is gone.
pub struct Outbox<T> {
    tx: Tx<T>,
    /// `None`: queue only (tests that read the queue themselves).
    direct: Option<Arc<Shared>>,
}

impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Outbox {
            tx: self.tx.clone(),
            direct: self.direct.clone(),
        }
    }
}

/// The queue's sending side: to a [`Writer`], or plain (queue only).
enum Tx<T> {
    Writer(mpsc::UnboundedSender<Item<T>>),
    Plain(mpsc::UnboundedSender<T>),
}

impl<T> Clone for Tx<T> {
    fn clone(&self) -> Self {
        match self {
            Tx::Writer(tx) => Tx::Writer(tx.clone()),
            Tx::Plain(tx) => Tx::Plain(tx.clone()),
        }
    }
}

/// What the writer's queue carries.
enum Item<T> {
    Msg(T),
    /// A direct write left a tail: wake up and write it (one queue for
    /// both, so an idle writer waits on nothing else).
    Tail,
}

/// What the senders and the writer share.
struct Shared {
    socket: OwnedWriteHalf,
    /// The writer waits with nothing queued and nothing half-written: a
    /// sender may write on the socket (holding `state`). A queued message
    /// clears it without the lock: queueing is the hot path under load.
    idle: AtomicBool,
    /// The writer is gone (stopped, or the socket failed): nothing more
    /// is written.
    closed: AtomicBool,
    state: Mutex<State>,
    /// Frames written, either way.
    written: AtomicU64,
}

struct State {
    /// The tail of a direct write the socket did not take.
    leftover: BytesMut,
    /// Where a direct send encodes its frame (kept, not reallocated).
    scratch: BytesMut,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shut_down(&self) {
        let _ = socket2::SockRef::from(self.socket.as_ref()).shutdown(std::net::Shutdown::Write);
    }
}

impl<T> Outbox<T> {
    /// An outbox for a connection's write half. Frames go out only while
    /// the returned [`Writer`] runs.
    pub fn new(socket: OwnedWriteHalf) -> (Outbox<T>, Writer<T>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            socket,
            idle: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            state: Mutex::new(State {
                leftover: BytesMut::new(),
                scratch: BytesMut::new(),
            }),
            written: AtomicU64::new(0),
        });
        let writer = Writer {
            shared: shared.clone(),
            rx,
            buf: BytesMut::with_capacity(codec::KEEP_CAPACITY),
            frames: 0,
        };
        let outbox = Outbox {
            tx: Tx::Writer(tx),
            direct: Some(shared),
        };
        (outbox, writer)
    }

    /// An outbox that only queues, for whoever holds `tx`'s receiver.
    pub fn queue_only(tx: mpsc::UnboundedSender<T>) -> Outbox<T> {
        Outbox {
            tx: Tx::Plain(tx),
            direct: None,
        }
    }

    /// Queues a message for the writer. `false`: the writer is gone (the
    /// message is dropped).
    pub fn send(&self, msg: T) -> bool {
        match (&self.tx, &self.direct) {
            (_, Some(shared)) if shared.closed.load(Ordering::Acquire) => false,
            // Queued first, then not idle: the writer, which checks the
            // queue after marking itself idle, cannot miss it.
            (Tx::Writer(tx), direct) => {
                let queued = tx.send(Item::Msg(msg)).is_ok();
                if let (true, Some(shared)) = (queued, direct) {
                    shared.idle.store(false, Ordering::Release);
                }
                queued
            }
            (Tx::Plain(tx), _) => tx.send(msg).is_ok(),
        }
    }

    fn queued(&self, msg: T) -> Sent<T> {
        if self.send(msg) {
            Sent::Queued
        } else {
            Sent::Gone
        }
    }

    /// Writes the message on the socket now, encoded by `encode`, if the
    /// writer is idle; else queues it. For a message with nothing behind
    /// it: sent this way, each message costs a write.
    pub fn send_now(
        &self,
        msg: T,
        encode: impl FnOnce(&T, &mut BytesMut) -> Result<(), CodecError>,
    ) -> Sent<T> {
        let Some(shared) = &self.direct else {
            return self.queued(msg);
        };
        let mut state = shared.lock();
        if !shared.idle.load(Ordering::Acquire) || shared.closed.load(Ordering::Acquire) {
            drop(state);
            return self.queued(msg);
        }
        let State {
            scratch, leftover, ..
        } = &mut *state;
        scratch.clear();
        // A message that does not encode is the writer's to report.
        let written = encode(&msg, scratch)
            .ok()
            .and_then(|()| shared.socket.try_write(scratch).ok());
        let Some(n) = written else {
            // Full or failing: the writer waits for room or meets the error.
            drop(state);
            return self.queued(msg);
        };
        if n < scratch.len() {
            leftover.extend_from_slice(&scratch[n..]);
            shared.idle.store(false, Ordering::Release);
            if let Tx::Writer(tx) = &self.tx {
                let _ = tx.send(Item::Tail);
            }
        }
        if scratch.capacity() > codec::KEEP_CAPACITY {
            *scratch = BytesMut::new();
        }
        drop(state);
        shared.written.fetch_add(1, Ordering::Relaxed);
        Sent::Written(msg)
    }

    /// Frames written so far (0 for a queue-only outbox).
    pub fn written(&self) -> u64 {
        self.direct
            .as_ref()
            .map_or(0, |s| s.written.load(Ordering::Relaxed))
    }
}

/// What [`Outbox::send_now`] did with a message.
pub enum Sent<T> {
    /// Written on the socket (the caller settles what the writer's encoder
    /// would have).
    Written(T),
    /// Queued for the writer.
    Queued,
    /// The writer is gone: the message was dropped.
    Gone,
}

/// The connection's writer, to run in a task of its own ([`Writer::run`]).
pub struct Writer<T> {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Item<T>>,
    /// Encoded frames not yet written, and how many.
    buf: BytesMut,
    frames: u64,
}

impl<T> Writer<T> {
    /// Writes what is queued, batching what waits together, until every
    /// [`Outbox`] is gone (after writing what they sent), on error, or
    /// when `stop` completes. Then the write side is shut down, even while
    /// senders still hold the outbox: the peer sees the end now.
    pub async fn run(
        mut self,
        mut encode: impl FnMut(T, &mut BytesMut) -> Result<(), CodecError>,
        stop: impl Future<Output = ()>,
    ) -> Result<(), CodecError> {
        let result = tokio::select! {
            r = self.serve(&mut encode) => r,
            () = stop => Ok(()),
        };
        self.shared.closed.store(true, Ordering::Release);
        self.shared.shut_down();
        result
    }

    async fn serve(
        &mut self,
        encode: &mut impl FnMut(T, &mut BytesMut) -> Result<(), CodecError>,
    ) -> Result<(), CodecError> {
        while self.flush(encode).await? {
            // Idle: senders may write themselves until one queues.
            match self.rx.recv().await {
                Some(Item::Msg(msg)) => {
                    encode(msg, &mut self.buf)?;
                    self.frames += 1;
                }
                Some(Item::Tail) => {}
                None => return Ok(()),
            }
        }
        Ok(())
    }

    /// Writes a direct write's tail, then everything queued, encoded into
    /// one buffer per write, until nothing waits; then the writer is idle
    /// (senders may write themselves). `Ok(false)`: every [`Outbox`] is
    /// gone and all they sent is written.
    async fn flush(
        &mut self,
        encode: &mut impl FnMut(T, &mut BytesMut) -> Result<(), CodecError>,
    ) -> Result<bool, CodecError> {
        loop {
            // A tail left by a direct write goes before anything queued
            // after it (a queued message ends direct writes until idle).
            let leftover = std::mem::take(&mut self.shared.lock().leftover);
            if !leftover.is_empty() {
                write_all(&self.shared.socket, &leftover).await?;
            }
            let mut gone = false;
            while self.buf.len() < codec::FLUSH_AT {
                match self.rx.try_recv() {
                    Ok(Item::Msg(msg)) => {
                        encode(msg, &mut self.buf)?;
                        self.frames += 1;
                    }
                    Ok(Item::Tail) => {}
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        gone = true;
                        break;
                    }
                }
            }
            if self.frames > 0 {
                write_all(&self.shared.socket, &self.buf).await?;
                self.shared
                    .written
                    .fetch_add(self.frames, Ordering::Relaxed);
                self.frames = 0;
                self.buf.clear();
                if self.buf.capacity() > 4 * codec::KEEP_CAPACITY {
                    self.buf = BytesMut::with_capacity(codec::KEEP_CAPACITY);
                }
                continue;
            }
            if gone {
                return Ok(false);
            }
            let state = self.shared.lock();
            if state.leftover.is_empty() && self.rx.is_empty() {
                self.shared.idle.store(true, Ordering::Release);
                // A message queued meanwhile (another thread) undoes it.
                if self.rx.is_empty() {
                    return Ok(true);
                }
                self.shared.idle.store(false, Ordering::Release);
            }
        }
    }
}

/// `write_all` on a write half the senders share.
async fn write_all(socket: &OwnedWriteHalf, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match socket.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: our outbox on one end, the raw peer on the other.
    async fn pair() -> (Outbox<Bytes>, Writer<Bytes>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap());
        let (ours, theirs) = tokio::join!(ours, listener.accept());
        let (_read, write) = ours.unwrap().into_split();
        // The read half may go: only the write half is ours to test.
        std::mem::forget(_read);
        let (outbox, writer) = Outbox::new(write);
        (outbox, writer, theirs.unwrap().0)
    }

    fn raw(m: &Bytes, buf: &mut BytesMut) -> Result<(), CodecError> {
        buf.extend_from_slice(m);
        Ok(())
    }

    async fn read_to_end(mut peer: TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn direct_and_queued_frames_keep_their_order() {
        let (outbox, writer, peer) = pair().await;
        let writing = tokio::spawn(writer.run(|m, b| raw(&m, b), std::future::pending()));
        // The writer parks idle before anything is sent.
        tokio::task::yield_now().await;
        assert!(matches!(
            outbox.send_now(Bytes::from_static(b"a"), raw),
            Sent::Written(_)
        ));
        assert!(outbox.send(Bytes::from_static(b"b")));
        // Queued behind "b": not written before it.
        assert!(matches!(
            outbox.send_now(Bytes::from_static(b"c"), raw),
            Sent::Queued
        ));
        tokio::task::yield_now().await;
        assert!(matches!(
            outbox.send_now(Bytes::from_static(b"d"), raw),
            Sent::Written(_)
        ));
        drop(outbox);
        writing.await.unwrap().unwrap();
        assert_eq!(read_to_end(peer).await, b"abcd");
    }

    #[tokio::test]
    async fn a_direct_write_cut_short_is_finished_before_what_follows() {
        let (outbox, writer, peer) = pair().await;
        let writing = tokio::spawn(writer.run(|m, b| raw(&m, b), std::future::pending()));
        tokio::task::yield_now().await;
        // More than loopback buffers hold while the peer does not read.
        let big: Bytes = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
        assert!(matches!(
            outbox.send_now(big.clone(), raw),
            Sent::Written(_)
        ));
        assert!(matches!(
            outbox.send_now(Bytes::from_static(b"tail"), raw),
            Sent::Queued
        ));
        assert_eq!(outbox.written(), 1);
        drop(outbox);
        let got = tokio::spawn(read_to_end(peer));
        writing.await.unwrap().unwrap();
        let got = got.await.unwrap();
        assert_eq!(got.len(), big.len() + 4);
        assert!(got[..big.len()] == big[..], "the big frame arrived intact");
        assert_eq!(&got[big.len()..], b"tail");
    }

    #[tokio::test]
    async fn a_flush_keeps_queued_and_direct_frames_in_order() {
        let (outbox, mut writer, peer) = pair().await;
        let mut enc = |m: Bytes, b: &mut BytesMut| raw(&m, b);
        // Not flushed yet, so not idle: a direct send queues.
        assert!(matches!(
            outbox.send_now(Bytes::from_static(b"a"), raw),
            Sent::Queued
        ));
        assert!(outbox.send(Bytes::from_static(b"b")));
        assert!(writer.flush(&mut enc).await.unwrap());
        // Idle after the flush: the next one is written at once, and one
        // queued after it goes after it.
        assert!(matches!(
            outbox.send_now(Bytes::from_static(b"c"), raw),
            Sent::Written(_)
        ));
        assert!(outbox.send(Bytes::from_static(b"d")));
        assert!(matches!(
            outbox.send_now(Bytes::from_static(b"e"), raw),
            Sent::Queued
        ));
        assert!(writer.flush(&mut enc).await.unwrap());
        assert_eq!(outbox.written(), 5);
        drop((outbox, writer));
        assert_eq!(read_to_end(peer).await, b"abcde");
    }

    #[tokio::test]
    async fn a_stopped_writer_ends_the_stream_while_senders_remain() {
        let (outbox, writer, peer) = pair().await;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async {
            let _ = stop_rx.await;
        };
        let writing = tokio::spawn(writer.run(|m, b| raw(&m, b), stop));
        assert!(outbox.send(Bytes::from_static(b"x")));
        tokio::task::yield_now().await;
        stop_tx.send(()).unwrap();
        writing.await.unwrap().unwrap();
        // Held, but closed: nothing more goes out, and the peer sees the end.
        assert!(matches!(
            outbox.send_now(Bytes::from_static(b"y"), raw),
            Sent::Gone
        ));
        assert_eq!(read_to_end(peer).await, b"x");
        assert_eq!(outbox.written(), 1);
    }
}
