//! The host's end of a VM's network port: the connections the agent
//! carries come out here, each one HTTP proxy request (`CONNECT host:port`
//! or a plain `GET http://host/...`), decided on the host name it asks
//! for against the VM's [`Egress`], resolved here, and connected only to
//! public addresses. Every connection is counted against the execution's
//! byte and connection limits and recorded for its result.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runner_protocol::net::{MAX_NET_PAYLOAD, NET_HEADER_LEN, NetFrame, NetKind};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, WriteHalf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use super::{Egress, check_name, is_public};

/// Largest request head (request line and headers) a program may send.
const MAX_HEAD: usize = 16 << 10;
/// Connections of one VM open at once.
const MAX_OPEN: usize = 256;
/// Connections listed in a result; more are only counted.
const MAX_LISTED: usize = 1000;
/// How long a connection to a server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub use runner_wire::{Connection, NetworkReport};

/// What the connections since the last report did.
#[derive(Default)]
struct Ledger {
    report: NetworkReport,
    /// Connections counted against the limit.
    opened: u32,
    /// Which report this is: a connection from an earlier one records no
    /// more in it.
    generation: u64,
}

struct Shared {
    egress: Egress,
    ledger: Mutex<Ledger>,
}

/// Where a connection's record is: its report's generation and index.
#[derive(Clone, Copy)]
struct Entry {
    generation: u64,
    index: Option<usize>,
}

impl Shared {
    /// Records a connection to `host:port`, allowed or not; refuses it
    /// (with the reason) past the connection or byte limit.
    fn open(&self, host: &str, port: u16, refused: Option<String>) -> (Entry, Option<String>) {
        let mut ledger = self.ledger.lock().unwrap();
        let refused = refused.or_else(|| {
            if ledger.opened >= self.egress.max_connections {
                Some(format!(
                    "the execution made its {} connections",
                    self.egress.max_connections
                ))
            } else if ledger.report.bytes >= self.egress.max_bytes {
                Some(byte_limit(self.egress.max_bytes))
            } else {
                None
            }
        });
        ledger.opened += 1;
        let generation = ledger.generation;
        let report = &mut ledger.report;
        let index = if report.connections.len() < MAX_LISTED {
            report.connections.push(Connection {
                host: host.to_string(),
                port,
                allowed: refused.is_none(),
                bytes_sent: 0,
                bytes_received: 0,
                message: refused.clone(),
            });
            Some(report.connections.len() - 1)
        } else {
            report.unlisted += 1;
            None
        };
        (Entry { generation, index }, refused)
    }

    /// Counts `n` bytes of a connection; the error says the limit is
    /// reached (the connection is then cut).
    fn count(&self, entry: Entry, sent: bool, n: usize) -> Result<(), String> {
        let mut ledger = self.ledger.lock().unwrap();
        ledger.report.bytes += n as u64;
        let over = ledger.report.bytes > self.egress.max_bytes;
        if ledger.generation == entry.generation {
            if let Some(record) = entry.index.map(|i| &mut ledger.report.connections[i]) {
                match sent {
                    true => record.bytes_sent += n as u64,
                    false => record.bytes_received += n as u64,
                }
                if over {
                    record.message = Some(byte_limit(self.egress.max_bytes));
                }
            }
        }
        match over {
            true => Err(byte_limit(self.egress.max_bytes)),
            false => Ok(()),
        }
    }

    /// Adds why connection `entry` failed to its record; `refused` if
    /// the rules said no (it was then never connected).
    fn note(&self, entry: Entry, message: String, refused: bool) {
        let mut ledger = self.ledger.lock().unwrap();
        if ledger.generation == entry.generation {
            if let Some(record) = entry.index.map(|i| &mut ledger.report.connections[i]) {
                record.message = Some(message);
                record.allowed &= !refused;
            }
        }
    }
}

fn byte_limit(max: u64) -> String {
    format!("the execution moved its {max} bytes through the network")
}

/// A VM's network port, served for as long as this lives.
pub struct Proxy {
    shared: Arc<Shared>,
    task: Mutex<tokio::task::JoinHandle<()>>,
    /// The port, kept to serve it again if the serving task ends while the
    /// VM lives (see [`Proxy::revive`]); `None` if it could not be kept.
    port: Option<std::os::unix::net::UnixStream>,
}

impl Proxy {
    /// Serves `port` (a VM's network port) under `egress`.
    pub fn serve(port: UnixStream, egress: Egress) -> Self {
        let shared = Arc::new(Shared {
            egress,
            ledger: Mutex::default(),
        });
        let kept = port
            .into_std()
            .and_then(|std| Ok((std.try_clone()?, UnixStream::from_std(std)?)));
        let (port, kept) = match kept {
            Ok((kept, port)) => (port, Some(kept)),
            Err(error) => {
                tracing::warn!(target: "runner::net", %error, "cannot keep the network port; the proxy will not be restarted");
                return Self {
                    task: Mutex::new(tokio::spawn(async {})),
                    shared,
                    port: None,
                };
            }
        };
        let task = tokio::spawn(serve(port, shared.clone()));
        Self {
            shared,
            task: Mutex::new(task),
            port: kept,
        }
    }

    /// Serves the port again if its serving task ended (it failed, or the
    /// guest broke the port's protocol) while the VM lives: the
    /// connections it had are gone (their programs saw them fail), and new
    /// ones are served. Whether it had to.
    pub fn revive(&self) -> bool {
        let mut task = self.task.lock().unwrap();
        if !task.is_finished() {
            return false;
        }
        let Some(port) = self
            .port
            .as_ref()
            .and_then(|p| p.try_clone().ok())
            .and_then(|p| UnixStream::from_std(p).ok())
        else {
            return false;
        };
        tracing::warn!(target: "runner::net", "the network proxy had stopped; it serves again");
        *task = tokio::spawn(serve(port, self.shared.clone()));
        true
    }

    /// What the connections did since the last report (or since it began
    /// serving); the counts and limits start again.
    pub fn report(&self) -> NetworkReport {
        let mut ledger = self.shared.ledger.lock().unwrap();
        let generation = ledger.generation + 1;
        let old = std::mem::replace(
            &mut *ledger,
            Ledger {
                generation,
                ..Ledger::default()
            },
        );
        old.report
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Its connections are tasks of the serving task's, ended with it.
        self.task.lock().unwrap().abort();
    }
}

/// A connection the guest opened: where its bytes go, and its handler.
struct Open {
    to_proxy: WriteHalf<DuplexStream>,
    handler: AbortHandle,
}

/// Aborts a task when dropped.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve(port: UnixStream, shared: Arc<Shared>) {
    // Not `into_split`: its write half shuts the socket down when dropped,
    // and a revived proxy writes on it again.
    let (mut from_guest, mut to_guest) = tokio::io::split(port);
    let (frames, mut outgoing) = mpsc::channel::<NetFrame>(64);
    let mut tasks = JoinSet::new();
    let writer = tokio::spawn(async move {
        let mut bytes = Vec::new();
        while let Some(frame) = outgoing.recv().await {
            bytes.clear();
            frame.encode(&mut bytes);
            if to_guest.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    // Ends the writer with this task (aborted, or returning).
    let _writer = AbortOnDrop(writer.abort_handle());
    let mut open: HashMap<u32, Open> = HashMap::new();
    loop {
        let frame = match read_frame(&mut from_guest).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(error) => {
                tracing::warn!(target: "runner::net", %error, "the guest broke the network port's protocol; its connections end");
                break;
            }
        };
        let id = frame.connection;
        match frame.kind {
            NetKind::Open => {
                open.retain(|_, o| !o.handler.is_finished());
                if open.len() >= MAX_OPEN || open.contains_key(&id) {
                    let _ = frames.send(NetFrame::close(id)).await;
                    continue;
                }
                let (proxy_side, mux_side) = tokio::io::duplex(MAX_NET_PAYLOAD as usize);
                let (mut from_proxy, to_proxy) = tokio::io::split(mux_side);
                let handler = tasks.spawn(handle(proxy_side, shared.clone()));
                let frames = frames.clone();
                tasks.spawn(async move {
                    let mut buf = vec![0u8; MAX_NET_PAYLOAD as usize];
                    while let Ok(n) = from_proxy.read(&mut buf).await {
                        if n == 0
                            || frames
                                .send(NetFrame::data(id, buf[..n].to_vec()))
                                .await
                                .is_err()
                        {
                            break;
                        }
                    }
                    let _ = frames.send(NetFrame::close(id)).await;
                });
                open.insert(id, Open { to_proxy, handler });
            }
            NetKind::Data => {
                if let Some(connection) = open.get_mut(&id) {
                    if connection.to_proxy.write_all(&frame.data).await.is_err() {
                        connection.handler.abort();
                        open.remove(&id);
                    }
                }
            }
            NetKind::Close => {
                if let Some(mut connection) = open.remove(&id) {
                    connection.handler.abort();
                    let _ = connection.to_proxy.shutdown().await;
                }
            }
        }
    }
    // The guest's connections end with the serving: it is told so, as far
    // as it listens.
    open.retain(|_, o| !o.handler.is_finished());
    tasks.abort_all();
    let closing = async {
        for id in open.into_keys() {
            let _ = frames.send(NetFrame::close(id)).await;
        }
        drop(frames);
        let _ = writer.await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
}

/// Reads one frame of the guest's; `None` once it hung up.
async fn read_frame(
    from_guest: &mut (impl AsyncRead + Unpin),
) -> Result<Option<NetFrame>, runner_protocol::ProtocolError> {
    let mut header = [0u8; NET_HEADER_LEN];
    match from_guest.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(runner_protocol::ProtocolError::Io(e)),
    }
    let (connection, kind, len) = NetFrame::header(&header)?;
    let mut data = vec![0; len as usize];
    from_guest
        .read_exact(&mut data)
        .await
        .map_err(|_| runner_protocol::ProtocolError::Truncated)?;
    Ok(Some(NetFrame {
        connection,
        kind,
        data,
    }))
}

/// What a program asked the proxy for.
#[derive(Debug, PartialEq)]
struct Request {
    host: String,
    port: u16,
    /// `CONNECT`: a tunnel. Else a plain HTTP request, whose head (in
    /// origin form, `Connection: close`) goes to the server.
    tunnel: bool,
    head: Vec<u8>,
}

/// Serves one connection: reads its request, decides, connects, and
/// carries its bytes both ways until either side ends.
async fn handle(client: DuplexStream, shared: Arc<Shared>) {
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (head, rest) = match read_head(&mut from_client).await {
        Ok(read) => read,
        Err(why) => return respond(&mut to_client, 400, &why).await,
    };
    let request = match parse(&head) {
        Ok(request) => request,
        Err(why) => return respond(&mut to_client, 400, &why).await,
    };
    let verdict = check_name(&request.host)
        .map_err(|why| {
            let bare = request.host.trim_start_matches('[').trim_end_matches(']');
            match bare.parse::<IpAddr>() {
                Ok(_) => format!(
                    "{} is an address, not a host name: the network is reached by name",
                    request.host
                ),
                Err(_) => format!("{} is not a host name: {why}", request.host),
            }
        })
        .and_then(|()| match shared.egress.allows(&request.host) {
            true => Ok(()),
            false => Err(format!(
                "{} is not in the execution's network.allow",
                request.host
            )),
        });
    let (entry, refused) = shared.open(&request.host, request.port, verdict.err());
    if let Some(why) = refused {
        tracing::info!(target: "runner::net", host = %request.host, port = request.port, reason = %why, "connection refused");
        return respond(&mut to_client, 403, &why).await;
    }
    let server = match connect(&shared.egress, &request.host, request.port).await {
        Ok(server) => server,
        Err(Failure { why, refused }) => {
            if refused {
                tracing::info!(target: "runner::net", host = %request.host, port = request.port, reason = %why, "connection refused");
            }
            shared.note(entry, why.clone(), refused);
            return respond(&mut to_client, if refused { 403 } else { 502 }, &why).await;
        }
    };
    let (mut from_server, mut to_server) = server.into_split();
    let mut first = rest;
    if request.tunnel {
        if to_client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        if let Err(why) = check_tls_name(&mut from_client, &mut first, &request.host).await {
            shared.note(entry, why, true);
            return;
        }
    } else {
        let mut head = request.head;
        head.append(&mut first);
        first = head;
    }
    if !first.is_empty() {
        if shared.count(entry, true, first.len()).is_err() {
            return;
        }
        if to_server.write_all(&first).await.is_err() {
            return;
        }
    }
    let up = carry(&mut from_client, &mut to_server, &shared, entry, true);
    let down = carry(&mut from_server, &mut to_client, &shared, entry, false);
    // A connection of the port has no half-close: when either side is
    // done, so is the connection (the guest is told by the Close that the
    // client side's end sends).
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Copies `from` to `to` counting the bytes, until `from` ends (then `to`
/// is shut down) or the byte limit is reached (an error: the connection is
/// cut).
async fn carry(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    shared: &Shared,
    entry: Entry,
    sent: bool,
) -> Result<(), String> {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        let n = from.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        shared.count(entry, sent, n)?;
        to.write_all(&buf[..n]).await.map_err(|e| e.to_string())?;
    }
}

/// Answers the program with `status` and why, and ends the connection.
async fn respond(to_client: &mut (impl AsyncWrite + Unpin), status: u16, why: &str) {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        _ => "Bad Gateway",
    };
    let body = format!("Runner Codes: {why}\n");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = to_client.write_all(response.as_bytes()).await;
    let _ = to_client.shutdown().await;
}

/// Reads a request head, up to its blank line: the head, and what the
/// client sent after it.
async fn read_head(from: &mut (impl AsyncRead + Unpin)) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(format!("a request head has at most {MAX_HEAD} bytes"));
        }
        let n = from.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection ended before its request did".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Parses a proxy request head.
fn parse(head: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(head).map_err(|_| "the request head is not text")?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("not an HTTP request line: {line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("{version} is not HTTP/1.x"));
    }
    if method == "CONNECT" {
        let (host, port) = authority(target, None)?;
        return Ok(Request {
            host,
            port,
            tunnel: true,
            head: Vec::new(),
        });
    }
    let Some(after) = target.strip_prefix("http://") else {
        return Err(format!(
            "{target} is not an absolute http:// URL: ask for https through CONNECT"
        ));
    };
    let (authority_part, path) = match after.find(['/', '?']) {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let (host, port) = authority(authority_part, Some(80))?;
    let mut out = format!("{method} {path} {version}\r\n");
    for header in lines.filter(|l| !l.is_empty()) {
        let name = header.split(':').next().unwrap_or_default().trim();
        let dropped = [
            "host",
            "connection",
            "proxy-connection",
            "proxy-authorization",
            "keep-alive",
        ];
        if !dropped.iter().any(|d| name.eq_ignore_ascii_case(d)) {
            out.push_str(header);
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!(
        "Host: {authority_part}\r\nConnection: close\r\n\r\n"
    ));
    Ok(Request {
        host,
        port,
        tunnel: false,
        head: out.into_bytes(),
    })
}

/// `host[:port]` (lowercased, without a final dot), with `default` as
/// the port when none is given (a `CONNECT` must give one).
fn authority(text: &str, default: Option<u16>) -> Result<(String, u16), String> {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{text}: {port} is not a port"))?;
            (host, port)
        }
        _ => (
            text,
            default.ok_or_else(|| format!("{text}: CONNECT needs host:port"))?,
        ),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err(format!("{text}: no host"));
    }
    Ok((host, port))
}

/// Connects to `host:port`: at its address in the operator's `hosts`
/// (whatever it is: the operator said so), else at one DNS gives, keeping
/// only public addresses (unless the operator allows private ones).
async fn connect(egress: &Egress, host: &str, port: u16) -> Result<TcpStream, Failure> {
    let addresses: Vec<SocketAddr> = match egress.hosts.get(host) {
        Some(address) => return connect_to(host, vec![SocketAddr::new(*address, port)]).await,
        None => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| Failure::failed(format!("cannot resolve {host}: {e}")))?
            .collect(),
    };
    let (usable, private): (Vec<SocketAddr>, Vec<SocketAddr>) = addresses
        .into_iter()
        .partition(|a| egress.allow_private_addresses || is_public(a.ip()));
    if usable.is_empty() {
        let listed: Vec<IpAddr> = private.iter().map(SocketAddr::ip).collect();
        return Err(match listed.is_empty() {
            true => Failure::failed(format!("{host} has no address")),
            false => Failure {
                why: format!(
                    "{host} resolves to {listed:?}: private, loopback, link-local and other non-public addresses are never connected to"
                ),
                refused: true,
            },
        });
    }
    connect_to(host, usable).await
}

/// Why a connection to a server was not made.
struct Failure {
    why: String,
    /// The rules said no (else the server could not be reached).
    refused: bool,
}

impl Failure {
    fn failed(why: String) -> Self {
        Self {
            why,
            refused: false,
        }
    }
}

/// Connects to the first of `addresses` (of `host`) that answers.
async fn connect_to(host: &str, addresses: Vec<SocketAddr>) -> Result<TcpStream, Failure> {
    let mut last = String::new();
    for address in addresses {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = format!("cannot connect to {host} ({address}): {e}"),
            Err(_) => last = format!("connecting to {host} ({address}) timed out"),
        }
    }
    Err(Failure::failed(last))
}

/// After a tunnel opened to `host`: if the program starts TLS, the server
/// name it asks for must be `host` (else a tunnel to an allowed name could
/// carry a handshake for another). What it read is left in `first`.
async fn check_tls_name(
    from_client: &mut (impl AsyncRead + Unpin),
    first: &mut Vec<u8>,
    host: &str,
) -> Result<(), String> {
    let mut chunk = [0u8; 4096];
    while first.len() < 5 {
        let n = from_client
            .read(&mut chunk)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        first.extend_from_slice(&chunk[..n]);
    }
    if first[0] != 0x16 {
        return Ok(());
    }
    let record = 5 + u16::from_be_bytes([first[3], first[4]]) as usize;
    while first.len() < record {
        let n = from_client
            .read(&mut chunk)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        first.extend_from_slice(&chunk[..n]);
    }
    match server_name(&first[5..first.len().min(record)]) {
        Some(name) if !name.eq_ignore_ascii_case(host) => Err(format!(
            "the TLS handshake asks for {name}, not {host}, the host the tunnel is for"
        )),
        _ => Ok(()),
    }
}

/// The server name (SNI) of a TLS ClientHello handshake message, if it
/// has one.
fn server_name(hello: &[u8]) -> Option<String> {
    let mut at = Reader(hello);
    if at.u8()? != 1 {
        return None; // not a ClientHello
    }
    at.skip(3 + 2 + 32)?; // length, version, random
    let session = at.u8()? as usize;
    at.skip(session)?;
    let suites = at.u16()? as usize;
    at.skip(suites)?;
    let compressions = at.u8()? as usize;
    at.skip(compressions)?;
    let mut extensions = Reader(at.block()?);
    while let Some(kind) = extensions.u16() {
        let body = extensions.block()?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(body);
        let mut names = Reader(list.block()?);
        while let Some(name_type) = names.u8() {
            let name = names.block()?;
            if name_type == 0 {
                return String::from_utf8(name.to_vec()).ok();
            }
        }
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    /// A 16-bit length, then that many bytes.
    fn block(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()? as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_into_host_port_and_the_head_to_send() {
        let connect = parse(b"CONNECT Pypi.Example.:443 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(
            (connect.host.as_str(), connect.port, connect.tunnel),
            ("pypi.example", 443, true)
        );
        let get = parse(
            b"GET http://pkgs.test:8080/simple/x/?a=1 HTTP/1.1\r\nHost: other\r\nProxy-Connection: keep-alive\r\nAccept: */*\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (get.host.as_str(), get.port, get.tunnel),
            ("pkgs.test", 8080, false)
        );
        assert_eq!(
            String::from_utf8(get.head).unwrap(),
            "GET /simple/x/?a=1 HTTP/1.1\r\nAccept: */*\r\nHost: pkgs.test:8080\r\nConnection: close\r\n\r\n"
        );
        let bare = parse(b"GET http://a.test HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(bare.port, 80);
        assert!(
            String::from_utf8(bare.head)
                .unwrap()
                .starts_with("GET / HTTP/1.0\r\n")
        );
        for bad in [
            &b"CONNECT a.test HTTP/1.1\r\n\r\n"[..],
            b"GET /relative HTTP/1.1\r\n\r\n",
            b"GET https://a.test/ HTTP/1.1\r\n\r\n",
            b"CONNECT a.test:0 HTTP/1.1\r\n\r\n",
            b"CONNECT a.test:443 SPDY/3\r\n\r\n",
            b"nonsense\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// A ClientHello as a TLS library writes it, naming `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let mut sni = Vec::new();
        sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name.as_bytes());
        let mut extensions = vec![0x00, 0x17, 0x00, 0x00]; // another, empty
        extensions.extend_from_slice(&[0x00, 0x00]);
        extensions.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        extensions.extend_from_slice(&sni);
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&[0]); // no session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(&extensions);
        let mut hello = vec![1];
        hello.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hello.extend_from_slice(&body);
        hello
    }

    #[test]
    fn the_tls_server_name_is_found_or_nothing_is() {
        assert_eq!(
            server_name(&client_hello("a.test")).as_deref(),
            Some("a.test")
        );
        let hello = client_hello("a.test");
        for cut in 0..hello.len() - 1 {
            assert_eq!(server_name(&hello[..cut]), None);
        }
        assert_eq!(server_name(&[2, 0, 0, 0]), None);
    }

    /// A server on this machine answering every request with `body`, and
    /// its port.
    async fn web_server(body: &'static [u8]) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = read_head(&mut stream).await;
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(body).await;
                });
            }
        });
        port
    }

    fn egress(private: bool, max_bytes: u64) -> Egress {
        let config = crate::net::NetworkConfig {
            allow: vec!["*.test".into(), "localhost".into()],
            hosts: vec!["pkgs.test=127.0.0.1".into()],
            allow_private_addresses: private,
            max_bytes,
            ..Default::default()
        };
        config
            .grant(&crate::net::NetworkRequest {
                allow: vec!["pkgs.test".into(), "localhost".into()],
            })
            .unwrap()
    }

    /// The guest's end of a network port: sends `request` on connection
    /// `id` and returns all that comes back before the host closes it.
    async fn ask(guest: &mut UnixStream, id: u32, request: &[u8]) -> String {
        let mut bytes = Vec::new();
        NetFrame::open(id).encode(&mut bytes);
        NetFrame::data(id, request.to_vec()).encode(&mut bytes);
        guest.write_all(&bytes).await.unwrap();
        let mut answer = Vec::new();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), read_frame(guest))
                .await
                .expect("the host answers")
                .unwrap()
                .expect("the port stays open");
            assert_eq!(frame.connection, id);
            match frame.kind {
                NetKind::Data => answer.extend_from_slice(&frame.data),
                NetKind::Close => return String::from_utf8_lossy(&answer).into_owned(),
                NetKind::Open => panic!("the host opens no connection"),
            }
        }
    }

    #[tokio::test]
    async fn the_proxy_carries_allowed_names_only_and_records_each_connection() {
        let port = web_server(b"hello from the index").await;
        let (mut guest, host) = UnixStream::pair().unwrap();
        let proxy = Proxy::serve(host, egress(true, 1 << 20));
        let get =
            format!("GET http://pkgs.test:{port}/simple/ HTTP/1.1\r\nHost: pkgs.test\r\n\r\n");
        let answer = ask(&mut guest, 1, get.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello from the index"),
            "{answer}"
        );
        let tunnel = format!("CONNECT pkgs.test:{port} HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        let answer = ask(&mut guest, 2, tunnel.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK"),
            "{answer}"
        );
        for (id, request, expected) in [
            (
                3,
                "GET http://other.example/ HTTP/1.1\r\n\r\n",
                "not in the execution's network.allow",
            ),
            (
                4,
                "CONNECT 127.0.0.1:443 HTTP/1.1\r\n\r\n",
                "is an address, not a host name",
            ),
            (
                5,
                "CONNECT [::1]:443 HTTP/1.1\r\n\r\n",
                "is an address, not a host name",
            ),
            (
                6,
                "CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n",
                "is an address",
            ),
            (7, "nonsense\r\n\r\n", "not an HTTP request line"),
        ] {
            let answer = ask(&mut guest, id, request.as_bytes()).await;
            assert!(answer.contains(expected), "{request}: {answer}");
            assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
        }
        let report = proxy.report();
        let hosts: Vec<(&str, bool)> = report
            .connections
            .iter()
            .map(|c| (c.host.as_str(), c.allowed))
            .collect();
        assert_eq!(
            hosts,
            [
                ("pkgs.test", true),
                ("pkgs.test", true),
                ("other.example", false),
                ("127.0.0.1", false),
                ("[::1]", false),
                ("169.254.169.254", false)
            ]
        );
        assert!(report.connections[0].bytes_received > 20, "{report:?}");
        assert_eq!(
            report.bytes,
            report
                .connections
                .iter()
                .map(|c| c.bytes_sent + c.bytes_received)
                .sum::<u64>()
        );
        assert_eq!(
            proxy.report().connections,
            [],
            "a report starts the count again"
        );
    }

    #[tokio::test]
    async fn private_addresses_are_refused_and_the_byte_limit_cuts() {
        let port = web_server(&[b'x'; 100_000]).await;
        // localhost is what DNS (the hosts file) says: refused, unless the
        // operator allows private addresses.
        let local = format!("GET http://localhost:{port}/ HTTP/1.1\r\n\r\n");
        let (mut guest, host) = UnixStream::pair().unwrap();
        let proxy = Proxy::serve(host, egress(false, 1 << 20));
        let answer = ask(&mut guest, 1, local.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 403") && answer.contains("never connected to"),
            "{answer}"
        );
        assert!(!proxy.report().connections[0].allowed);
        drop(proxy);
        let (mut guest, host) = UnixStream::pair().unwrap();
        let proxy = Proxy::serve(host, egress(true, 1 << 20));
        let answer = ask(&mut guest, 1, local.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        drop(proxy);
        // pkgs.test is the operator's: its address is used as it is.
        let (mut guest, host) = UnixStream::pair().unwrap();
        let proxy = Proxy::serve(host, egress(false, 10_000));
        let get = format!("GET http://pkgs.test:{port}/ HTTP/1.1\r\n\r\n");
        let answer = ask(&mut guest, 1, get.as_bytes()).await;
        assert!(
            answer.len() < 10_000,
            "cut at the limit: {} bytes",
            answer.len()
        );
        let answer = ask(&mut guest, 2, get.as_bytes()).await;
        assert!(
            answer.contains("403") && answer.contains("10000 bytes"),
            "{answer}"
        );
        let report = proxy.report();
        assert!(
            report.connections[0]
                .message
                .as_deref()
                .unwrap_or_default()
                .contains("10000 bytes"),
            "{report:?}"
        );
        assert!(!report.connections[1].allowed);
    }

    #[tokio::test]
    async fn a_guest_that_breaks_the_port_protocol_loses_its_connections() {
        let port = web_server(b"slow").await;
        let (mut guest, host) = UnixStream::pair().unwrap();
        let proxy = Proxy::serve(host, egress(true, 1 << 20));
        let get = format!("GET http://pkgs.test:{port}/ HTTP/1.1\r\n\r\n");
        assert!(ask(&mut guest, 1, get.as_bytes()).await.contains("slow"));
        // A connection left open, then a frame past the limit: the host
        // reads no further, ends the connection and stops serving.
        let mut bad = Vec::new();
        NetFrame::open(2).encode(&mut bad);
        bad.extend_from_slice(&1u32.to_le_bytes());
        bad.push(NetKind::Data as u8);
        bad.extend_from_slice(&(MAX_NET_PAYLOAD + 1).to_le_bytes());
        guest.write_all(&bad).await.unwrap();
        let closed = async {
            loop {
                let frame = read_frame(&mut guest).await.unwrap().expect("a frame");
                if (frame.connection, frame.kind) == (2, NetKind::Close) {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .expect("the open connection is closed");
        tokio::time::timeout(Duration::from_secs(5), async {
            while !proxy.task.lock().unwrap().is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("it stopped serving");
    }

    #[tokio::test]
    async fn a_proxy_that_stopped_serves_again_when_revived() {
        let port = web_server(b"back").await;
        let (mut guest, host) = UnixStream::pair().unwrap();
        let proxy = Proxy::serve(host, egress(true, 1 << 20));
        let get = format!("GET http://pkgs.test:{port}/ HTTP/1.1\r\n\r\n");
        assert!(ask(&mut guest, 1, get.as_bytes()).await.contains("back"));
        assert!(!proxy.revive(), "a proxy that serves is left alone");
        // It dies (as a panic would end it) with a connection open: the
        // program's connection ends, not its VM.
        let mut open = Vec::new();
        NetFrame::open(2).encode(&mut open);
        guest.write_all(&open).await.unwrap();
        proxy.task.lock().unwrap().abort();
        while !proxy.task.lock().unwrap().is_finished() {
            tokio::task::yield_now().await;
        }
        assert!(proxy.revive());
        assert!(ask(&mut guest, 3, get.as_bytes()).await.contains("back"));
        let hosts: Vec<_> = proxy
            .report()
            .connections
            .into_iter()
            .map(|c| c.host)
            .collect();
        assert_eq!(hosts, ["pkgs.test", "pkgs.test"]);
    }

    #[tokio::test]
    async fn a_handshake_for_another_name_is_refused() {
        let mut record = vec![0x16, 3, 1];
        let hello = client_hello("evil.test");
        record.extend_from_slice(&(hello.len() as u16).to_be_bytes());
        record.extend_from_slice(&hello);
        let mut first = Vec::new();
        let error = check_tls_name(&mut &record[..], &mut first, "good.test")
            .await
            .unwrap_err();
        assert!(error.contains("evil.test"), "{error}");
        let mut first = Vec::new();
        assert!(
            check_tls_name(&mut &record[..], &mut first, "evil.test")
                .await
                .is_ok()
        );
        assert_eq!(first, record, "what was read is sent on");
        let mut first = Vec::new();
        let plain = b"SSH-2.0-x\r\n";
        assert!(
            check_tls_name(&mut &plain[..], &mut first, "a.test")
                .await
                .is_ok()
        );
        assert_eq!(first, plain);
    }
}
