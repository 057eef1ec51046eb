//! The durable job table of `--state-dir` (SPEC section 13): a redb file
//! holding every detached and start-later job (input while it waits,
//! status, times, outcome), a lock file, and the writer thread that commits
//! what the pool actor sends it.
//!
//! The pool never waits for the disk: it sends each change with a sequence
//! number and goes on. The writer takes every change waiting at that moment
//! into one transaction and one fsync (group commit), then publishes the
//! last sequence number it made durable on a watch channel. What must be on
//! disk before it happens waits on that channel: a submit's id is sent
//! back, and a job is written to a child, only once its change is durable,
//! so no acknowledged job is lost and none runs twice after a crash.
//! Outcomes ride along in the next commit.
//!
//! A write that fails stops the master (exit 1, like a database that
//! cannot fsync): what was acknowledged is on disk, what was not never
//! was, and the restart recovers exactly that.

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use taskmaster_proto::jobs::JobStatus;
use taskmaster_proto::Reason;
use tokio::sync::watch;
use tracing::{error, info};

/// The store's file in the state directory.
pub const FILE: &str = "jobs.redb";
/// The lock file in the state directory (holds the owner's pid).
const LOCK: &str = "lock";
/// Where the store is copied while it is opened, so a failed open can put
/// the original bytes back.
const OPENING: &str = "jobs.redb.opening";

const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Changes taken into one transaction at most (bounds a commit's memory).
const MAX_BATCH: usize = 4096;

/// Why a state directory cannot be used; each exits 2.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory cannot be made or used.
    #[error("--state-dir {dir}: {why}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Another master holds the lock.
    #[error("--state-dir {dir}: another master uses it{holder}")]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// ` (pid N)` when the lock file says.
        holder: String,
    },
    /// The store cannot be read.
    #[error("job store {file}: {why}; it was left as it was")]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// What failed.
        why: String,
    },
}

/// One job as the store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredJob {
    /// Its module.
    pub module: String,
    /// Its status when written.
    pub status: JobStatus,
    /// Its place in the queue (queued jobs come back in this order).
    pub order: u64,
    /// Its own time limit, ms (`None`: the master's default).
    pub timeout_ms: Option<u64>,
    /// Wall-clock times, ms since the Unix epoch.
    pub created_ms: u64,
    /// When it started.
    pub started_ms: Option<u64>,
    /// When it ended.
    pub finished_ms: Option<u64>,
    /// Its input while it has not started.
    pub input: Option<Bytes>,
    /// Its response, once completed.
    pub output: Option<Bytes>,
    /// Its failure, once failed or cancelled.
    pub failure: Option<(Reason, String)>,
    /// Its lane in the queue.
    pub priority: taskmaster_proto::Priority,
    /// Runs it may still have.
    pub retries: u32,
}

/// What a state directory held when the master started.
pub struct Recovered {
    /// The job-id prefix of the store (kept across restarts, so ids never
    /// repeat and old ids still resolve).
    pub instance: String,
    /// The next job number to hand out.
    pub next_job: u64,
    /// Every stored job, by number.
    pub jobs: Vec<(u64, StoredJob)>,
}

/// An opened, locked, read store, before its writer starts.
pub struct Opened {
    db: Database,
    _lock: nix::fcntl::Flock<File>,
    /// What it held.
    pub recovered: Recovered,
}

fn encode(job: &StoredJob) -> Vec<u8> {
    bincode::serde::encode_to_vec(job, bincode::config::standard())
        .expect("a stored job always encodes")
}

fn decode(bytes: &[u8]) -> Result<StoredJob, String> {
    let (job, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!("{} bytes left over", bytes.len() - used));
    }
    Ok(job)
}

/// Opens (or creates) the store in `dir`: takes the lock, reads every job.
/// `fresh` names the job-id prefix of a new store. A store that cannot be
/// read is put back byte for byte and reported.
pub fn open(dir: &Path, fresh: impl FnOnce() -> String) -> Result<Opened, StoreError> {
    let dir_err = |why: String| StoreError::Dir {
        dir: dir.to_owned(),
        why,
    };
    // Job inputs and outputs are in there: a directory it makes is the
    // master user's alone.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .map_err(|e| dir_err(e.to_string()))?;
    let lock = lock(dir)?;
    let path = dir.join(FILE);
    let backup = dir.join(OPENING);
    let existed = path.exists();
    if existed {
        // redb repairs a store that was not closed cleanly, in place: a
        // copy lets a failed open leave the file exactly as it found it.
        std::fs::copy(&path, &backup).map_err(|e| dir_err(format!("copying {FILE}: {e}")))?;
    }
    let corrupt = |why: String| StoreError::Corrupt {
        file: path.clone(),
        why,
    };
    // Some damage makes redb panic instead of returning an error: caught
    // (quietly) and reported like any other unreadable store.
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Database::create(&path)
            .map_err(|e| e.to_string())
            .and_then(|db| read_all(&db, existed, fresh).map(|r| (db, r)))
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(format!("damaged ({what})"))
    });
    std::panic::set_hook(quiet);
    match result {
        Ok((db, recovered)) => {
            let _ = std::fs::remove_file(&backup);
            Ok(Opened {
                db,
                _lock: lock,
                recovered,
            })
        }
        Err(why) => {
            if existed {
                let _ = std::fs::rename(&backup, &path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
            Err(corrupt(why))
        }
    }
}

/// Takes the state directory's lock (held until the master exits; the
/// kernel drops it if the master is killed) and writes our pid in it.
fn lock(dir: &Path) -> Result<nix::fcntl::Flock<File>, StoreError> {
    use nix::fcntl::{Flock, FlockArg};
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::Dir {
            dir: dir.to_owned(),
            why: format!("{}: {e}", path.display()),
        })?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut locked) => {
            let _ = locked.set_len(0);
            let _ = locked.rewind();
            let _ = writeln!(locked, "{}", std::process::id());
            Ok(locked)
        }
        Err((mut file, _)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            Err(StoreError::Locked {
                dir: dir.to_owned(),
                holder: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
            })
        }
    }
}

fn read_all(
    db: &Database,
    existed: bool,
    fresh: impl FnOnce() -> String,
) -> Result<Recovered, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let read = db.begin_read().map_err(|x| e(&x))?;
    let mut jobs = Vec::new();
    let (mut instance, mut next_job) = (None, 1u64);
    match read.open_table(META) {
        Ok(meta) => {
            if let Some(v) = meta.get("instance").map_err(|x| e(&x))? {
                instance = Some(
                    String::from_utf8(v.value().to_vec()).map_err(|_| "bad instance".to_owned())?,
                );
            }
            if let Some(v) = meta.get("next_job").map_err(|x| e(&x))? {
                let bytes: [u8; 8] = v
                    .value()
                    .try_into()
                    .map_err(|_| "bad next_job".to_owned())?;
                next_job = u64::from_le_bytes(bytes);
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) if !existed => {}
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Err("not a taskmaster job store (no meta table)".into())
        }
        Err(x) => return Err(e(&x)),
    }
    match read.open_table(JOBS) {
        Ok(table) => {
            for entry in table.iter().map_err(|x| e(&x))? {
                let (k, v) = entry.map_err(|x| e(&x))?;
                let job = decode(v.value()).map_err(|why| format!("job {}: {why}", k.value()))?;
                next_job = next_job.max(k.value() + 1);
                jobs.push((k.value(), job));
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(x) => return Err(e(&x)),
    }
    drop(read);
    let instance = match instance {
        Some(i) if taskmaster_proto::jobs::parse_id(&format!("{i}-1")).is_ok() => i,
        Some(i) => return Err(format!("bad job-id prefix {i:?}")),
        None => {
            // A new store: its prefix is on disk before any id is given out.
            let i = fresh();
            let w = db.begin_write().map_err(|x| e(&x))?;
            {
                let mut meta = w.open_table(META).map_err(|x| e(&x))?;
                meta.insert("instance", i.as_bytes()).map_err(|x| e(&x))?;
                w.open_table(JOBS).map_err(|x| e(&x))?;
            }
            w.commit().map_err(|x| e(&x))?;
            i
        }
    };
    Ok(Recovered {
        instance,
        next_job,
        jobs,
    })
}

/// A change to the store.
pub enum Change {
    /// Writes (or rewrites) a job.
    Put(u64, StoredJob),
    /// Removes a job (evicted).
    Delete(u64),
}

/// The pool's end of the store: sends changes, learns what is durable.
pub struct Store {
    tx: Option<mpsc::Sender<(u64, Change)>>,
    seq: u64,
    committed: watch::Receiver<u64>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Opened {
    /// Starts the writer thread; returns the pool's end and what the store
    /// held.
    pub fn start(self) -> (Store, Recovered) {
        let (tx, rx) = mpsc::channel();
        let (done_tx, committed) = watch::channel(0);
        let next_job = self.recovered.next_job;
        let db = self.db;
        let lock = self._lock;
        let writer = std::thread::Builder::new()
            .name("job-store".into())
            .spawn(move || {
                write_loop(db, rx, done_tx, next_job);
                drop(lock);
            })
            .expect("spawn the job store's writer");
        let store = Store {
            tx: Some(tx),
            seq: 0,
            committed,
            writer: Some(writer),
        };
        (store, self.recovered)
    }
}

impl Store {
    /// Sends a change; returns its sequence number.
    pub fn send(&mut self, change: Change) -> u64 {
        self.seq += 1;
        if let Some(tx) = &self.tx {
            // The writer only stops with the master (a failed write exits).
            let _ = tx.send((self.seq, change));
        }
        self.seq
    }

    /// The last sequence number sent.
    pub fn last(&self) -> u64 {
        self.seq
    }

    /// The last sequence number durable now.
    pub fn durable(&self) -> u64 {
        *self.committed.borrow()
    }

    /// The last sequence number durable, as it advances.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    /// Commits what is left and stops the writer (clean shutdown).
    pub fn close(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_loop(
    db: Database,
    rx: mpsc::Receiver<(u64, Change)>,
    committed: watch::Sender<u64>,
    mut next_job: u64,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(change) => batch.push(change),
                Err(_) => break,
            }
        }
        let last = batch.last().map_or(0, |(seq, _)| *seq);
        if let Err(e) = commit(&db, &mut batch, &mut next_job) {
            error!(error = %e, "the job store cannot be written; stopping the master");
            std::process::exit(1);
        }
        let _ = committed.send(last);
    }
    info!("job store closed");
}

fn commit(
    db: &Database,
    batch: &mut Vec<(u64, Change)>,
    next_job: &mut u64,
) -> Result<(), redb::Error> {
    let w = db.begin_write()?;
    {
        let mut jobs = w.open_table(JOBS)?;
        for (_, change) in batch.drain(..) {
            match change {
                Change::Put(id, job) => {
                    *next_job = (*next_job).max(id + 1);
                    jobs.insert(id, encode(&job).as_slice())?;
                }
                Change::Delete(id) => {
                    jobs.remove(id)?;
                }
            }
        }
        let mut meta = w.open_table(META)?;
        meta.insert("next_job", next_job.to_le_bytes().as_slice())?;
    }
    w.commit()?;
    Ok(())
}
