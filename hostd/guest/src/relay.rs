//! A TCP relay for migration tests: it passes a source's stream on to its target until
//! told to black-hole the link.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The relay's receive buffer. Small, so that once the relay stops reading, the kernel's
/// window reopens by nothing worth a frame: with the default buffer it went on taking in
/// a little now and then (it compacts what it holds), and the copy crept on.
const RELAY_RECEIVE_BYTES: usize = 16 << 10;

/// A TCP relay from a source to its target that can black-hole the link: once `hole` is
/// set it moves nothing more either way and keeps both connections open, as a link that
/// drops every packet and sends no reset would. Dropping it closes them.
#[derive(Debug)]
pub struct Relay {
    /// Where the source connects.
    pub address: String,
    hole: Arc<AtomicBool>,
    gone: Arc<AtomicBool>,
}

impl Relay {
    /// A relay to `target` (`ip:port`), listening on loopback.
    pub fn to(target: &str) -> Relay {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        // Set before listening: what it accepts inherits it, and the window is sized by it.
        socket.set_recv_buffer_size(RELAY_RECEIVE_BYTES).unwrap();
        socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        socket.listen(1).unwrap();
        let listener = TcpListener::from(socket);
        let address = listener.local_addr().unwrap().to_string();
        let (hole, gone) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (h, g, target) = (hole.clone(), gone.clone(), target.to_owned());
        std::thread::spawn(move || {
            let (Ok((from, _)), Ok(to)) = (listener.accept(), TcpStream::connect(&target)) else { return };
            for (r, w) in [(from.try_clone().unwrap(), to.try_clone().unwrap()), (to, from)] {
                let (h, g) = (h.clone(), g.clone());
                std::thread::spawn(move || relay(r, w, &h, &g));
            }
        });
        Relay { address, hole, gone }
    }

    /// From now on, move nothing more either way and hold both connections open.
    pub fn black_hole(&self) {
        self.hole.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.gone.store(true, Ordering::SeqCst);
    }
}

/// Copy `r` to `w` until either end closes, or, once `hole` is set, hold both (silent)
/// until `gone`.
fn relay(mut r: TcpStream, mut w: TcpStream, hole: &AtomicBool, gone: &AtomicBool) {
    r.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    while !gone.load(Ordering::SeqCst) {
        if hole.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        match r.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if w.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}
