//! The connections a side serves: an accept loop, a thread per connection, and a second
//! handle on each socket so that stopping closes them all.

use crate::connection::{ServeContext, Session, serve};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long an idle accept loop waits before looking at the stop flag again.
const ACCEPT_POLL: Duration = Duration::from_millis(2);

/// The connections being served, and the threads serving them.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    open: Mutex<HashMap<u64, TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next: AtomicU64,
}

impl Connections {
    /// Serves `stream` from `session` on a thread of its own; `first` runs there before
    /// (the first checkpoint of an accepted connection).
    pub(crate) fn serve(
        self: &Arc<Self>,
        stream: TcpStream,
        session: Session,
        context: ServeContext,
    ) {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            self.open.lock().insert(number, clone);
        }
        let connections = Arc::clone(self);
        let thread = std::thread::spawn(move || {
            match serve(stream, session, &context) {
                Ok(end) => {
                    tracing::debug!(connection = %end.id, replies = end.state.replies, "connection served")
                }
                Err(e) => tracing::warn!(error = %e, "connection ended"),
            }
            connections.open.lock().remove(&number);
        });
        self.threads.lock().push(thread);
    }

    /// Closes every connection and waits for the threads serving them.
    pub(crate) fn close_all(&self) {
        for (_, stream) in self.open.lock().drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let threads = std::mem::take(&mut *self.threads.lock());
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// Accepts connections on `listener` until the context's stop flag is set, handing each to
/// `accepted` (which serves it).
pub(crate) fn accept_loop(
    listener: TcpListener,
    context: ServeContext,
    mut accepted: impl FnMut(TcpStream, &ServeContext) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    Ok(std::thread::spawn(move || {
        while !context.stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(false).is_ok() {
                        accepted(stream, &context);
                    }
                }
                Err(_) => std::thread::sleep(ACCEPT_POLL),
            }
        }
    }))
}
