//! A domain's serial console as this host keeps it, served to the control replicas
//! (`drover.host.v1.HostAgent`, beside the host's learner replica), which forward it to
//! whoever calls `Domains.Console`.
//!
//! The process drivers capture each VM's console to `<run_dir>/<domain>/console.log`
//! (`vmm_control::control::CONSOLE_FILE`), capped in size: when it passes its cap the
//! file starts again empty (the earlier part kept as `.old`). A reader sends what is there
//! (or its last `tail_bytes`), then, following, what is appended, starting again from the
//! top when the file shrinks; it ends when the caller hangs up or, not following, at the
//! end of the file.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use proto::api as pb;
use proto::host::host_agent_server::HostAgent;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use vmm_control::control::CONSOLE_FILE;

use crate::vm_dir;

/// The most bytes one chunk carries.
pub const CHUNK_BYTES_MAX: usize = 64 * 1024;
/// How often a follower looks for more.
pub const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Chunks read ahead of a slow caller.
const CHUNKS_QUEUED_MAX: usize = 16;

/// A console as it streams, from a host to a replica and from a replica to its caller.
pub type ConsoleStream = Pin<Box<dyn Stream<Item = Result<pb::ConsoleChunk, Status>> + Send>>;

/// Serves the consoles of the VMs under `run_dir`; `None`: the driver keeps no consoles
/// (the fake).
#[derive(Debug, Clone)]
pub struct ConsoleService {
    pub run_dir: Option<PathBuf>,
}

#[tonic::async_trait]
impl HostAgent for ConsoleService {
    type ConsoleStream = ConsoleStream;

    async fn console(
        &self,
        request: Request<pb::ConsoleRequest>,
    ) -> Result<Response<Self::ConsoleStream>, Status> {
        let r = request.into_inner();
        let run_dir = self.run_dir.as_ref().ok_or_else(|| {
            Status::failed_precondition("this host's driver keeps no consoles (fake driver)")
        })?;
        let path = vm_dir::dir_for(run_dir, &r.name).map_err(Status::invalid_argument)?.join(CONSOLE_FILE);
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Status::not_found(format!("domain {} has no console here", r.name))
            }
            _ => Status::internal(format!("{}: {e}", path.display())),
        })?;
        let len = file.metadata().await.map_err(|e| Status::internal(e.to_string()))?.len();
        let mut at = if r.tail_bytes > 0 { len.saturating_sub(r.tail_bytes) } else { 0 };
        file.seek(SeekFrom::Start(at)).await.map_err(|e| Status::internal(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_QUEUED_MAX);
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK_BYTES_MAX];
            loop {
                let n = match file.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(format!("{}: {e}", path.display())))).await;
                        return;
                    }
                };
                if n > 0 {
                    at += n as u64;
                    if tx.send(Ok(pb::ConsoleChunk { data: buf[..n].to_vec() })).await.is_err() {
                        return; // the caller hung up
                    }
                    continue;
                }
                if !r.follow {
                    return;
                }
                tokio::time::sleep(FOLLOW_POLL).await;
                if tx.is_closed() {
                    return;
                }
                // Shorter than what was read: the log passed its cap and started again.
                let now = tokio::fs::metadata(&path).await.map(|m| m.len()).unwrap_or(0);
                if now < at {
                    match tokio::fs::File::open(&path).await {
                        Ok(f) => {
                            file = f;
                            at = 0;
                        }
                        Err(_) => continue, // between the rotation's two steps
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use tokio_stream::StreamExt;

    use super::*;

    async fn next(stream: &mut <ConsoleService as HostAgent>::ConsoleStream) -> String {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a chunk within 10 s")
            .expect("the stream goes on")
            .expect("a chunk, not an error");
        String::from_utf8(chunk.data).unwrap()
    }

    fn request(name: &str, follow: bool, tail_bytes: u64) -> Request<pb::ConsoleRequest> {
        Request::new(pb::ConsoleRequest { name: name.into(), follow, tail_bytes })
    }

    #[tokio::test]
    async fn a_console_is_read_whole_or_its_tail_and_followed_across_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let vm = dir.path().join("web");
        std::fs::create_dir_all(&vm).unwrap();
        let log = vm.join(CONSOLE_FILE);
        std::fs::write(&log, "booting\nready\n").unwrap();
        let service = ConsoleService { run_dir: Some(dir.path().to_owned()) };

        let mut whole = service.console(request("web", false, 0)).await.unwrap().into_inner();
        assert_eq!(next(&mut whole).await, "booting\nready\n");
        assert!(whole.next().await.is_none(), "not following: it ends at the end of the log");
        let mut tail = service.console(request("web", false, 6)).await.unwrap().into_inner();
        assert_eq!(next(&mut tail).await, "ready\n");

        let mut follow = service.console(request("web", true, 0)).await.unwrap().into_inner();
        assert_eq!(next(&mut follow).await, "booting\nready\n");
        std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"tick 1\n").unwrap();
        assert_eq!(next(&mut follow).await, "tick 1\n");
        // The log passes its cap: the VMM moves it aside and starts a new one.
        std::fs::rename(&log, vm.join(format!("{CONSOLE_FILE}.old"))).unwrap();
        std::fs::write(&log, "tick 2\n").unwrap();
        assert_eq!(next(&mut follow).await, "tick 2\n");
    }

    #[tokio::test]
    async fn what_cannot_be_read_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let fake = ConsoleService { run_dir: None };
        let code = |r: Result<_, Status>| r.err().map(|s| s.code());
        assert_eq!(code(fake.console(request("web", false, 0)).await), Some(tonic::Code::FailedPrecondition));
        let service = ConsoleService { run_dir: Some(dir.path().to_owned()) };
        assert_eq!(code(service.console(request("web", false, 0)).await), Some(tonic::Code::NotFound));
        assert_eq!(
            code(service.console(request("../etc", false, 0)).await),
            Some(tonic::Code::InvalidArgument)
        );
    }
}
