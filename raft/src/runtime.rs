//! Drover's openraft `AsyncRuntime`: tokio for tasks and time, and a random-number source
//! that the simulator can seed.
//!
//! openraft draws its election timeouts from `thread_rng()`. In production that is rand's
//! thread RNG. A thread that calls [`seed_thread_rng`] gets a ChaCha8 stream from that
//! seed instead, so a single-threaded simulation replays bit-identically; the simulator
//! runs every node on that one thread.
//!
//! Tasks spawned while running as a simulated node ([`as_node`]) carry the node's id, and
//! [`abort_node`] aborts all of them at once: that is how the simulator crashes a node.
//! Outside [`as_node`] (production), [`spawn`] is `tokio::spawn`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioInstant, TokioRuntime};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

thread_local! {
    static SEEDED: RefCell<Option<ChaCha8Rng>> = const { RefCell::new(None) };
    /// Abort handles of the tasks of each simulated node on this thread.
    static NODE_TASKS: RefCell<BTreeMap<u64, Vec<tokio::task::AbortHandle>>> =
        const { RefCell::new(BTreeMap::new()) };
}

tokio::task_local! {
    /// The simulated node the current task belongs to.
    static NODE: u64;
}

/// Run `future` as simulated node `node`: every task it spawns through [`spawn`] (and so
/// every openraft task) belongs to that node too.
pub fn as_node<F: Future>(node: u64, future: F) -> impl Future<Output = F::Output> {
    NODE.scope(node, future)
}

/// The simulated node the current task belongs to (`None` in production).
pub fn current_node() -> Option<u64> {
    NODE.try_with(|n| *n).ok()
}

/// Abort every task of simulated node `node` on this thread, as a crash would end them.
pub fn abort_node(node: u64) {
    let handles = NODE_TASKS.with(|t| t.borrow_mut().remove(&node)).unwrap_or_default();
    for h in handles {
        h.abort();
    }
}

/// Spawn a task that belongs to simulated node `node`, wherever it is spawned from (a
/// message in flight to `node`, for example).
pub fn spawn_on_node<F>(node: u64, future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    NODE.sync_scope(node, || spawn(future))
}

/// Spawn a task; inside [`as_node`] the task belongs to that node.
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match NODE.try_with(|n| *n) {
        Ok(node) => {
            let handle = tokio::spawn(NODE.scope(node, future));
            NODE_TASKS.with(|t| {
                let mut t = t.borrow_mut();
                let tasks = t.entry(node).or_default();
                tasks.retain(|h| !h.is_finished());
                tasks.push(handle.abort_handle());
            });
            handle
        }
        Err(_) => tokio::spawn(future),
    }
}

/// Make this thread's [`DroverRuntime::thread_rng`] a deterministic stream from `seed`.
pub fn seed_thread_rng(seed: u64) {
    SEEDED.with(|s| *s.borrow_mut() = Some(ChaCha8Rng::seed_from_u64(seed)));
}

/// Go back to the operating system's randomness on this thread.
pub fn unseed_thread_rng() {
    SEEDED.with(|s| *s.borrow_mut() = None);
}

/// The random source handed to openraft.
#[derive(Debug)]
pub enum DroverRng {
    Os(rand::rngs::ThreadRng),
    Seeded,
}

impl RngCore for DroverRng {
    fn next_u32(&mut self) -> u32 {
        match self {
            DroverRng::Os(r) => r.next_u32(),
            DroverRng::Seeded => SEEDED.with(|s| s.borrow_mut().as_mut().expect("seeded").next_u32()),
        }
    }

    fn next_u64(&mut self) -> u64 {
        match self {
            DroverRng::Os(r) => r.next_u64(),
            DroverRng::Seeded => SEEDED.with(|s| s.borrow_mut().as_mut().expect("seeded").next_u64()),
        }
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        match self {
            DroverRng::Os(r) => r.fill_bytes(dest),
            DroverRng::Seeded => SEEDED.with(|s| s.borrow_mut().as_mut().expect("seeded").fill_bytes(dest)),
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// Tokio underneath, Drover's RNG on top.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DroverRuntime;

impl AsyncRuntime for DroverRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = DroverRng;
    type OneshotSender<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <TokioRuntime as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        if SEEDED.with(|s| s.borrow().is_some()) {
            DroverRng::Seeded
        } else {
            DroverRng::Os(rand::thread_rng())
        }
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        TokioRuntime::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_streams_repeat() {
        let draw = || {
            let mut r = DroverRuntime::thread_rng();
            (r.next_u64(), r.next_u64())
        };
        seed_thread_rng(7);
        let a = draw();
        seed_thread_rng(7);
        assert_eq!(draw(), a);
        seed_thread_rng(8);
        assert_ne!(draw(), a);
        unseed_thread_rng();
        assert!(matches!(DroverRuntime::thread_rng(), DroverRng::Os(_)));
    }
}
