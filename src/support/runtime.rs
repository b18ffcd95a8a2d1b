//! A background runtime: one thread running its own single-threaded tokio
//! runtime, for work that must outlive any one test.
//!
//! Why: every `#[tokio::test]` has its own runtime, dropped when the test
//! ends, yet a process's connections to its stack (the lease, the admin
//! connections, the clone pool's jobs) live as long as the process, and
//! `Drop` of a test's database must reach them from synchronous code.
//! Statics hold only a [`Background`] (a channel sender: plain data), never a
//! handle bound to some test's runtime. This module knows nothing of stacks
//! or SQL: it runs futures there and waits for them ([`Background::run`],
//! [`Background::run_blocking`]), and runs hooks at process exit ([`at_exit`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{mpsc as std_mpsc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

type LocalFuture = Pin<Box<dyn Future<Output = ()> + 'static>>;

enum Message {
    /// Makes a future on the runtime's thread and runs it there as a task.
    Job(Box<dyn FnOnce() -> LocalFuture + Send>),
    /// Ends the thread (tasks still running are dropped).
    Stop,
}

/// A handle on a background runtime; cheap to clone. The thread ends with
/// [`Background::stop`] (or when every handle is gone).
#[derive(Clone)]
pub(crate) struct Background {
    tx: mpsc::UnboundedSender<Message>,
}

impl Background {
    /// Starts the thread and its runtime.
    pub(crate) fn start(thread_name: String) -> Result<Background> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Stack {
                reason: format!("cannot start a tokio runtime: {e}"),
            })?;
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                // A LocalSet: futures are made on this thread, so they need
                // not be `Send` (a stack's clean-up holds Docker handles).
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    while let Some(Message::Job(job)) = rx.recv().await {
                        tokio::task::spawn_local(job());
                    }
                });
            })
            .map_err(|e| Error::Stack {
                reason: format!("cannot spawn a background thread: {e}"),
            })?;
        Ok(Background { tx })
    }

    /// Runs the future `make` returns on the background runtime, detached:
    /// nothing waits for it. False when the runtime has stopped.
    pub(crate) fn spawn<F, Fut>(&self, make: F) -> bool
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let job = Box::new(move || Box::pin(make()) as LocalFuture);
        self.tx.send(Message::Job(job)).is_ok()
    }

    /// Runs the future `make` returns on the background runtime and waits
    /// for its output from any async context.
    pub(crate) async fn run<T, F, Fut>(&self, make: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (tx, rx) = oneshot::channel();
        if !self.spawn(move || async move {
            let _ = tx.send(make().await);
        }) {
            return Err(stopped());
        }
        rx.await.map_err(|_| stopped())
    }

    /// [`run`](Self::run) of a fallible future, within `limit`: past it, a
    /// timeout saying `what` was waited for, and `hint`.
    pub(crate) async fn run_within<T, F, Fut>(
        &self,
        limit: Duration,
        what: &str,
        hint: &str,
        make: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + 'static,
    {
        match tokio::time::timeout(limit, self.run(make)).await {
            Ok(result) => result?,
            Err(_) => Err(Error::Timeout {
                what: what.into(),
                after: limit,
                hint: hint.into(),
            }),
        }
    }

    /// [`run`](Self::run) from synchronous code (`Drop`, an exit hook),
    /// waiting at most `wait`: `None` when it did not finish in time or the
    /// runtime has stopped. Never call it from the background thread itself.
    pub(crate) fn run_blocking<T, F, Fut>(&self, wait: Duration, make: F) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (tx, rx) = std_mpsc::sync_channel(1);
        if !self.spawn(move || async move {
            let _ = tx.send(make().await);
        }) {
            return None;
        }
        rx.recv_timeout(wait).ok()
    }

    /// Ends the thread once the jobs sent before have started.
    pub(crate) fn stop(&self) {
        let _ = self.tx.send(Message::Stop);
    }
}

fn stopped() -> Error {
    Error::Stack {
        reason: "the stack's background runtime has stopped (the stack was shut down)".into(),
    }
}

type Hook = Box<dyn FnOnce() + Send>;

/// Hooks to run when the process exits normally.
static AT_EXIT: Mutex<Vec<Hook>> = Mutex::new(Vec::new());

/// Runs `hook` when the process exits normally (`exit`, or `main`
/// returning: how a test binary ends). A panic in a hook is contained.
pub(crate) fn at_exit(hook: impl FnOnce() + Send + 'static) {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        // libc's atexit, as std has no exit hook: a test binary ends by
        // returning from main, and statics (the stacks) are never dropped.
        // SAFETY: registering a plain `extern "C" fn` with libc's atexit.
        unsafe {
            libc::atexit(run_at_exit);
        }
    });
    if let Ok(mut hooks) = AT_EXIT.lock() {
        hooks.push(Box::new(hook));
    }
}

extern "C" fn run_at_exit() {
    let hooks = match AT_EXIT.lock() {
        Ok(mut h) => std::mem::take(&mut *h),
        Err(_) => return,
    };
    for hook in hooks {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(hook));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_outlive_the_callers_runtime_and_stop_ends_them() {
        let bg = Background::start("pgbf-test-bg".into()).unwrap();
        // A value made on the background thread, not `Send` while it runs.
        let got = bg
            .run(|| async {
                let local = std::rc::Rc::new(41);
                tokio::task::yield_now().await;
                *local + 1
            })
            .await
            .unwrap();
        assert_eq!(got, 42);
        let bg2 = bg.clone();
        let blocking = tokio::task::spawn_blocking(move || {
            bg2.run_blocking(Duration::from_secs(5), || async { "done" })
        })
        .await
        .unwrap();
        assert_eq!(blocking, Some("done"));
        bg.stop();
        // The thread ends: later calls say the runtime stopped.
        let mut ended = false;
        for _ in 0..100 {
            if bg.run(|| async {}).await.is_err() {
                ended = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ended, "the background thread did not stop");
    }
}
