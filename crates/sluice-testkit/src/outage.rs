//! A TCP proxy on a loopback port that can be taken down and brought back: an outage of the
//! service behind it as its clients see it (connections refused, open ones cut), while the
//! service keeps its state (moto keeps its objects only in memory, so stopping moto itself would
//! lose the very data a rerun must find).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Forwards a loopback port to `backend` until [`OutageProxy::down`]; stops when dropped.
pub struct OutageProxy {
    rt: tokio::runtime::Runtime,
    port: u16,
    backend: SocketAddr,
    /// The accept loop and every connection it forwards, aborted by `down`.
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl OutageProxy {
    /// Forwards a free loopback port to `backend`.
    pub fn start(backend: SocketAddr) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let proxy = OutageProxy {
            rt,
            port,
            backend,
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        proxy.up();
        proxy
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The URL `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Takes the service down: the port refuses connections and open ones are cut.
    pub fn down(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        // Let the aborted tasks drop their sockets (the listener first) before returning.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    /// Brings the service back on the same port.
    pub fn up(&self) {
        let (backend, tasks) = (self.backend, self.tasks.clone());
        let listener = {
            let _entered = self.rt.enter();
            let std = bind_retrying(self.port);
            std.set_nonblocking(true).expect("a non-blocking listener");
            tokio::net::TcpListener::from_std(std).expect("a tokio listener")
        };
        let accepting = self.rt.spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let task = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                    }
                });
                tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accepting.abort_handle());
    }
}

/// Binds the port again after an outage (the old listener may take a moment to close).
fn bind_retrying(port: u16) -> std::net::TcpListener {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => return l,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("binding port {port} again: {e}")
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

impl Drop for OutageProxy {
    fn drop(&mut self) {
        self.down();
    }
}
