//! The agent's end of the network: a listener on the guest's loopback at
//! [`PROXY_PORT`] whose connections it carries, byte for byte, over the
//! network port to the host's proxy (see [`runner_protocol::net`]). It
//! decides nothing: what a connection may reach is the host's to say.
//!
//! Started when the first request that may use the network comes, and kept
//! for the VM's life (a session's background processes use it between
//! executions). A thread reads the port and writes to the connections; one
//! per connection reads it and writes to the port. A program that stops
//! reading holds up the others' data: they are all its own.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};

use runner_protocol::net::{MAX_NET_PAYLOAD, NET_PORT_NAME, NetFrame, NetKind, PROXY_PORT};

use crate::error::{AgentError, Context};
use crate::platform::Platform;

/// The open connections, by number.
type Connections = Arc<Mutex<HashMap<u32, TcpStream>>>;

static STARTED: OnceLock<Result<(), String>> = OnceLock::new();

/// A gVisor sandbox's network port, from its start until the network is.
static GVISOR_PORT: Mutex<Option<File>> = Mutex::new(None);

/// In a gVisor sandbox, takes the network port off stdout at start, before
/// any program can inherit it.
pub fn take_gvisor_port() -> Result<(), AgentError> {
    *GVISOR_PORT.lock().unwrap() = Some(crate::port::take_stdio(1)?);
    Ok(())
}

/// Starts carrying connections, once; later calls say how the first went.
pub fn start() -> Result<(), AgentError> {
    STARTED
        .get_or_init(|| serve().map_err(|e| format!("network: {e}")))
        .clone()
        .map_err(AgentError::Failed)
}

/// The network port: a virtio-serial port, or in a gVisor sandbox the
/// agent's stdout (see [`runner_protocol::GVISOR_AGENT_ARG`]), taken at
/// start (see [`take_gvisor_port`]).
fn serve() -> Result<(), AgentError> {
    let port = match crate::platform::current() {
        Platform::Gvisor => GVISOR_PORT
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| AgentError::Failed("the network port was not kept".into()))?,
        Platform::Vm => {
            let path = crate::port::find_port(crate::consts::AGENT_DEVICES, NET_PORT_NAME)?;
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .context(|| format!("open {}", path.display()))?
        }
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, PROXY_PORT))
        .context(|| format!("listen on 127.0.0.1:{PROXY_PORT}"))?;
    let writer = Arc::new(Mutex::new(port.try_clone().context(|| "dup port".into())?));
    let connections = Connections::default();
    std::thread::spawn({
        let connections = connections.clone();
        let writer = writer.clone();
        move || from_host(port, &connections, &writer)
    });
    std::thread::spawn(move || accept(listener, &connections, &writer));
    Ok(())
}

fn send(writer: &Mutex<File>, frame: &NetFrame) -> bool {
    let mut bytes = Vec::with_capacity(frame.data.len() + 16);
    frame.encode(&mut bytes);
    writer.lock().unwrap().write_all(&bytes).is_ok()
}

/// Hands each connection to the host, and what it sends after it.
fn accept(listener: TcpListener, connections: &Connections, writer: &Arc<Mutex<File>>) {
    let mut next: u32 = 0;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let Ok(reader) = stream.try_clone() else {
            continue;
        };
        next = next.wrapping_add(1);
        let id = next;
        connections.lock().unwrap().insert(id, stream);
        if !send(writer, &NetFrame::open(id)) {
            return;
        }
        let connections = connections.clone();
        let writer = writer.clone();
        std::thread::spawn(move || to_host(id, reader, &connections, &writer));
    }
}

/// Sends what connection `id` reads to the host until it ends.
fn to_host(id: u32, mut reader: TcpStream, connections: &Connections, writer: &Mutex<File>) {
    let mut buf = vec![0u8; MAX_NET_PAYLOAD as usize];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !send(writer, &NetFrame::data(id, buf[..n].to_vec())) {
                    break;
                }
            }
        }
    }
    // Ended here (not by the host, which removed it already).
    if connections.lock().unwrap().remove(&id).is_some() {
        send(writer, &NetFrame::close(id));
    }
}

/// Writes what the host sends to its connections; ends them as it says.
fn from_host(mut port: File, connections: &Connections, writer: &Mutex<File>) {
    while let Ok(Some(frame)) = NetFrame::read(&mut port) {
        let id = frame.connection;
        match frame.kind {
            NetKind::Data => {
                let stream = connections
                    .lock()
                    .unwrap()
                    .get(&id)
                    .and_then(|s| s.try_clone().ok());
                if let Some(mut stream) = stream {
                    if stream.write_all(&frame.data).is_err()
                        && connections.lock().unwrap().remove(&id).is_some()
                    {
                        let _ = stream.shutdown(Shutdown::Both);
                        send(writer, &NetFrame::close(id));
                    }
                }
            }
            NetKind::Close => {
                if let Some(stream) = connections.lock().unwrap().remove(&id) {
                    let _ = stream.shutdown(Shutdown::Both);
                }
            }
            NetKind::Open => {}
        }
    }
    // The host is gone: so is every connection.
    for (_, stream) in connections.lock().unwrap().drain() {
        let _ = stream.shutdown(Shutdown::Both);
    }
}
