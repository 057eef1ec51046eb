//! [`BlockingClient`]: a connection to a master for code without an async
//! runtime (a thread per request, a script, a sync web framework). One job
//! at a time: submit, then read until its answer. Plain blocking socket
//! calls, so a closed loop costs one write and one read per job, no event
//! loop and no task hand-offs.

use super::{
    answer_limit, check_sizes, client_hello, welcomed, ClientError, Completed, JobEvent,
    JobFailure, WELCOME_TIMEOUT,
};
use crate::codec::{self, CodecError};
use crate::jobs::{format_id, SubmitOptions};
use crate::messages::{ToClient, ToMaster};
use bytes::{Bytes, BytesMut};
use std::io::{BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};

/// Read buffer: one `read` takes a whole answer of ordinary size.
const READ_BUFFER: usize = 64 * 1024;

/// A blocking connection to a master: one job in flight at a time.
///
/// Each call writes its request and blocks until the master's answer. For
/// many jobs in flight on one connection, use the async [`super::Client`].
/// A job's run time is bounded by its time limit
/// ([`SubmitOptions::timeout_ms`], else the master's `--job-timeout`): past
/// it the master answers `timeout`.
pub struct BlockingClient {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    out: BytesMut,
    next_tag: u64,
    max_payload: usize,
    instance: String,
    /// A read or write failed part-way: where the next frame starts is
    /// unknown, so every later call is `Disconnected`.
    broken: bool,
}

impl BlockingClient {
    /// Connects and says hello as a client. With `token` `None`, the token
    /// comes from the environment, as for [`super::Client::connect`].
    pub fn connect(
        addr: impl ToSocketAddrs,
        token: Option<String>,
    ) -> Result<BlockingClient, ClientError> {
        let hello = client_hello(token)?;
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.write_all(&hello)?;
        stream.set_read_timeout(Some(WELCOME_TIMEOUT))?;
        let mut reader = BufReader::with_capacity(READ_BUFFER, stream.try_clone()?);
        let welcome = match codec::read_frame_blocking(&mut reader, codec::DEFAULT_MAX_PAYLOAD) {
            Err(CodecError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ClientError::Timeout(WELCOME_TIMEOUT))
            }
            read => read?.map(codec::decode::<ToClient>).transpose()?,
        };
        stream.set_read_timeout(None)?;
        let (max_payload, instance) = welcomed(welcome)?;
        Ok(BlockingClient {
            stream,
            reader,
            out: BytesMut::with_capacity(1024),
            next_tag: 1,
            max_payload,
            instance,
            broken: false,
        })
    }

    /// The largest input the master accepts.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// This master run's job-id prefix.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Runs a job and waits for its answer (parts are skipped). A failure
    /// (`overload`, `timeout`, ...) is [`ClientError::Job`].
    pub fn submit(
        &mut self,
        module: &str,
        input: impl Into<Bytes>,
        context: impl Into<Bytes>,
    ) -> Result<Completed, ClientError> {
        self.submit_each(module, input, context, SubmitOptions::default(), |_| {})
    }

    /// Runs a job with options (a time limit, say) and waits for its
    /// answer, handing each part to `on_part` as it arrives. `detach` and
    /// `start_later` are ignored: this call always waits.
    pub fn submit_each(
        &mut self,
        module: &str,
        input: impl Into<Bytes>,
        context: impl Into<Bytes>,
        options: SubmitOptions,
        mut on_part: impl FnMut(Bytes),
    ) -> Result<Completed, ClientError> {
        if self.broken {
            return Err(ClientError::Disconnected);
        }
        let (input, context) = (input.into(), context.into());
        check_sizes(&input, &context, self.max_payload)?;
        let tag = self.next_tag;
        self.next_tag += 1;
        let msg = ToMaster::Submit {
            tag,
            module: module.to_owned(),
            context,
            options: SubmitOptions {
                detach: false,
                start_later: false,
                ..options
            },
            input,
        };
        self.out.clear();
        codec::encode(&msg, &mut self.out)?;
        let answer = self
            .stream
            .write_all(&self.out)
            .map_err(ClientError::from)
            .and_then(|()| self.answer(tag, &mut on_part));
        // A job's failure is an answer like any other; anything else left
        // the stream somewhere inside a frame.
        if answer
            .as_ref()
            .is_err_and(|e| !matches!(e, ClientError::Job(_)))
        {
            self.broken = true;
        }
        answer
    }

    /// Reads until job `tag`'s final answer, handing its parts on.
    fn answer(
        &mut self,
        tag: u64,
        on_part: &mut impl FnMut(Bytes),
    ) -> Result<Completed, ClientError> {
        loop {
            match self.next_event(tag)? {
                JobEvent::Part(data) => on_part(data),
                JobEvent::Completed(done) => return Ok(done),
                JobEvent::Failed(failure) => return Err(ClientError::Job(failure)),
            }
        }
    }

    /// The next frame about job `tag`; frames about anything else (there
    /// are none with one job in flight) are dropped.
    fn next_event(&mut self, tag: u64) -> Result<JobEvent, ClientError> {
        loop {
            let frame =
                codec::read_frame_blocking(&mut self.reader, answer_limit(self.max_payload))?
                    .ok_or(ClientError::Disconnected)?;
            match codec::decode::<ToClient>(frame)? {
                ToClient::Part { tag: t, data } if t == tag => return Ok(JobEvent::Part(data)),
                ToClient::Completed {
                    tag: t,
                    job,
                    context,
                    output,
                } if t == tag => {
                    return Ok(JobEvent::Completed(Completed {
                        job,
                        id: format_id(&self.instance, job),
                        output,
                        context,
                    }))
                }
                ToClient::Failed {
                    tag: t,
                    job,
                    reason,
                    message,
                    context,
                } if t == tag => {
                    return Ok(JobEvent::Failed(JobFailure {
                        job,
                        id: format_id(&self.instance, job),
                        reason,
                        message,
                        context,
                    }))
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_silent_peer_times_out_and_a_stranger_is_malformed() {
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let keep = std::thread::spawn(move || silent.accept().map(|(s, _)| s));
        assert!(matches!(
            BlockingClient::connect(addr, Some(String::new())),
            Err(ClientError::Timeout(_))
        ));
        drop(keep.join());

        // A peer that answers the hello with a frame that is no welcome.
        let stranger = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = stranger.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = stranger.accept().unwrap();
            let frame = codec::to_frame(&ToClient::Stats {
                tag: 1,
                json: "{}".into(),
            })
            .unwrap();
            s.write_all(&frame).unwrap();
            s
        });
        assert!(matches!(
            BlockingClient::connect(addr, Some(String::new())),
            Err(ClientError::Codec(CodecError::Malformed(_)))
        ));
        drop(peer.join());
    }

    #[test]
    fn after_a_bad_frame_every_call_is_disconnected() {
        // A peer that welcomes, then answers the first submit with a frame
        // that decodes as nothing, then would answer properly.
        let peer = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = peer.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = peer.accept().unwrap();
            let welcome = ToClient::Welcome {
                version: crate::messages::PROTOCOL_VERSION,
                max_payload: 1 << 20,
                instance: "t".into(),
            };
            s.write_all(&codec::to_frame(&welcome).unwrap()).unwrap();
            s.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).unwrap();
            let done = ToClient::Completed {
                tag: 2,
                job: 2,
                context: Bytes::new(),
                output: Bytes::from_static(b"late"),
            };
            s.write_all(&codec::to_frame(&done).unwrap()).unwrap();
            s
        });
        let mut client = BlockingClient::connect(addr, Some(String::new())).unwrap();
        assert!(matches!(
            client.submit("echo", "a", ""),
            Err(ClientError::Codec(_))
        ));
        assert!(matches!(
            client.submit("echo", "b", ""),
            Err(ClientError::Disconnected)
        ));
        drop(server.join());
    }
}
