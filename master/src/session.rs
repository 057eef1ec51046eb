//! One client connection: submits go to the pool, answers come back through
//! a batched writer. The reader holds one permit per job in flight, so a
//! client that submits without reading answers is simply not read from
//! (backpressure), instead of making the master buffer without bound.

use crate::job::{Outgoing, Reply, Submission};
use crate::pool::PoolHandle;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use taskmaster_proto::codec::{self, FrameReader};
use taskmaster_proto::messages::{ClientHello, ToClient, ToMaster, PROTOCOL_VERSION};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, warn};

/// Jobs one connection may have in flight before the master stops reading
/// from it.
pub const MAX_IN_FLIGHT: usize = 16 * 1024;

/// Serves one client until it closes; in-flight jobs still get answered
/// after a half-close.
pub async fn serve(
    mut reader: FrameReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
    hello: ClientHello,
    peer: SocketAddr,
    pool: PoolHandle,
    max_payload: usize,
) {
    let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
    let writer = tokio::spawn(async move {
        let encode = |out: Outgoing, buf: &mut BytesMut| codec::encode(&out.msg, buf);
        if let Err(e) = codec::write_batched(write, rx, encode).await {
            debug!(%peer, error = %e, "client connection write failed");
        }
    });
    let say = |msg| {
        let _ = tx.send(Outgoing { msg, permit: None });
    };
    if hello.version != PROTOCOL_VERSION {
        warn!(%peer, version = hello.version, "client speaks another protocol version");
        say(ToClient::Refused {
            message: format!(
                "protocol version {} not supported (master speaks {PROTOCOL_VERSION})",
                hello.version
            ),
        });
        drop(tx);
        let _ = writer.await;
        return;
    }
    say(ToClient::Welcome {
        version: PROTOCOL_VERSION,
        max_payload: max_payload as u64,
    });
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        match codec::read_message::<ToMaster, _>(&mut reader).await {
            Ok(Some(ToMaster::Submit {
                tag,
                module,
                context,
                input,
            })) => {
                // The client knows both limits (Welcome, codec::MAX_CONTEXT):
                // a frame past them is a broken peer, like an oversized frame.
                if input.len() > max_payload || context.len() > codec::MAX_CONTEXT {
                    warn!(%peer, input = input.len(), context = context.len(), "submit over the size limits; closing");
                    break;
                }
                let permit = permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore never closed");
                pool.submit(Submission {
                    module,
                    input,
                    reply: Reply {
                        tx: tx.clone(),
                        tag,
                        context,
                        permit: Some(permit),
                    },
                });
            }
            Ok(Some(ToMaster::Stats { tag })) => {
                let Some(stats) = pool.stats().await else {
                    break;
                };
                let json = serde_json::to_string(&stats).expect("stats serialize");
                say(ToClient::Stats { tag, json });
            }
            Ok(None) => {
                debug!(%peer, "client closed");
                break;
            }
            Err(e) => {
                warn!(%peer, error = %e, "bad frame from client; closing");
                break;
            }
        }
    }
}
