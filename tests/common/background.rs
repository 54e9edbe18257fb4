//! Servers of the test harness (the test origin, latency links) run on their own thread with
//! their own tokio runtime, stopped (connections and all) when the handle is dropped.

use std::future::Future;
use std::thread::JoinHandle;
use std::time::Duration;

/// A server loop running on its own thread and runtime until dropped.
pub struct Background {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Run the future `serve()` makes (inside the runtime: it may create tokio listeners) on a
    /// thread named `name` with `workers` runtime threads.
    pub fn spawn<F, Fut>(name: String, workers: usize, serve: F) -> Background
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("{name}: runtime: {e}"));
                rt.block_on(async move {
                    tokio::select! {
                        _ = serve() => {}
                        _ = rx => {}
                    }
                });
                // Dropping the runtime cancels every connection task and closes the sockets.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("spawn a server thread");
        Background {
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
