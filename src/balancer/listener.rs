//! The balancer's accept loop: one thread per client, up to `--max-clients`.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::balancer::{session, Balancer};
use crate::error::Error;
use crate::gauge::Held;

/// Stack of a client thread. A session keeps its buffers on the heap, so a small stack is
/// enough, and ten thousand clients fit in little memory.
pub const CLIENT_STACK: usize = 128 * 1024;

/// Accepts clients until the balancer stops.
pub fn accept_loop(lb: &Arc<Balancer>, listener: TcpListener) {
    for stream in listener.incoming() {
        if lb.stopping.load(Ordering::SeqCst) {
            break;
        }
        match stream {
            Ok(stream) => admit(lb, stream),
            Err(e) => {
                log::warn!("accept failed: {e}");
                // Out of file descriptors, say: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn admit(lb: &Arc<Balancer>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let max = lb.config.max_clients;
    // Counted here, in the accept thread, so that no burst of connections slips past the limit.
    if lb.clients.fetch_add(1, Ordering::SeqCst) >= max {
        lb.clients.fetch_sub(1, Ordering::SeqCst);
        log::warn!("refused a client: {max} clients already connected (--max-clients)");
        let e = Error::Busy(format!("too many clients ({max}); try again later"));
        let _ = stream.write_all(e.header_line().as_bytes());
        return;
    }
    let session_lb = Arc::clone(lb);
    let spawned = std::thread::Builder::new()
        .name("client".into())
        .stack_size(CLIENT_STACK)
        .spawn(move || {
            let _client = Held::adopt(&session_lb.clients);
            session::serve_client(&session_lb, stream);
        });
    if let Err(e) = spawned {
        // The closure, and the unit it would have adopted, never ran.
        lb.clients.fetch_sub(1, Ordering::SeqCst);
        log::error!("cannot start a thread for a client: {e}");
    }
}
