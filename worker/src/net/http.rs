//! One HTTP/1.1 exchange on a connection of its own: connect (from a chosen local address, or
//! through the proxy), TLS for https, then hyper's connection with a small, fixed read buffer —
//! a player streams for minutes, and hyper's adaptive buffer would otherwise grow to 400 kB each.
//!
//! No pooling: a source request is a long streaming GET, and each one may leave from another
//! address. Redirects are followed by the caller.

use super::dns;
use bytes::Bytes;
use caldera_protocol::Proxy;
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// hyper's read buffer: what one read of the socket takes at most.
pub const READ_BUFFER: usize = 16 * 1024;
const USER_AGENT: &str = concat!("Caldera/", env!("CARGO_PKG_VERSION"));

/// Why an exchange failed.
#[derive(Debug)]
pub enum Failure {
    /// The local address cannot be used on this host.
    Bind(std::io::Error),
    /// Anything on the way to a response head.
    Connect(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bind(e) => write!(f, "cannot bind the local address: {e}"),
            Self::Connect(e) => f.write_str(e),
        }
    }
}

/// A response head and its body, with the connection that carries it (dropping the response
/// closes it).
pub struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: hyper::body::Incoming,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Response {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// How to reach the outside for one exchange.
pub struct Route<'a> {
    pub local: Option<IpAddr>,
    pub proxy: Option<&'a Proxy>,
    pub connect_timeout: Duration,
    /// Networks the request may not reach (the operator's proxy is exempt).
    pub deny: &'a [(IpAddr, u8)],
}

/// What the request asks besides the URL.
pub struct Ask<'a> {
    pub from: Option<u64>,
    /// The last byte wanted (inclusive), with `from`.
    pub to: Option<u64>,
    pub icy: bool,
    pub url: &'a url::Url,
    /// Extra headers (a platform's, from its extractor); they replace the defaults they name.
    pub headers: &'a [(String, String)],
}

/// One GET: the response head, or why there is none.
pub async fn get(ask: Ask<'_>, route: Route<'_>, dns: &dns::Cache, tls: &Arc<rustls::ClientConfig>) -> Result<Response, Failure> {
    let url = ask.url;
    let host = url.host_str().ok_or_else(|| Failure::Connect("the URL has no host".into()))?.trim_matches(['[', ']']).to_string();
    let https = match url.scheme() {
        "http" => false,
        "https" => true,
        other => return Err(Failure::Connect(format!("unsupported scheme `{other}`"))),
    };
    let port = url.port_or_known_default().unwrap_or(if https { 443 } else { 80 });
    let mut absolute = false;
    let tcp = match route.proxy {
        Some(proxy) => {
            let p = url::Url::parse(&proxy.url).map_err(|e| Failure::Connect(format!("proxy URL: {e}")))?;
            let (phost, pport) = (p.host_str().unwrap_or("").trim_matches(['[', ']']).to_string(), p.port_or_known_default().unwrap_or(3128));
            let mut tcp = connect_host(&phost, pport, None, route.connect_timeout, dns, &[]).await?;
            if https {
                tunnel(&mut tcp, &host, port, proxy, route.connect_timeout).await?;
            } else {
                absolute = true;
            }
            tcp
        }
        None => connect_host(&host, port, route.local, route.connect_timeout, dns, route.deny).await?,
    };
    let target = if absolute { url.as_str().to_string() } else { url[url::Position::BeforePath..url::Position::AfterQuery].to_string() };
    let mut request = http::Request::get(if target.is_empty() { "/" } else { &target }).header(http::header::HOST, host_header(url));
    let given = |name: &http::header::HeaderName| ask.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name.as_str()));
    for (name, default) in [(http::header::USER_AGENT, USER_AGENT), (http::header::ACCEPT, "*/*")] {
        if !given(&name) {
            request = request.header(name, default);
        }
    }
    for (name, value) in ask.headers {
        // Headers that would change the exchange itself are ours to set.
        let reserved = ["host", "range", "connection", "content-length", "transfer-encoding", "accept-encoding", "proxy-authorization"];
        if !reserved.iter().any(|r| name.eq_ignore_ascii_case(r)) {
            request = request.header(name.as_str(), value.as_str());
        }
    }
    match (ask.from, ask.to) {
        (Some(from), Some(to)) => request = request.header(http::header::RANGE, format!("bytes={from}-{to}")),
        (Some(from), None) => request = request.header(http::header::RANGE, format!("bytes={from}-")),
        _ => {}
    }
    if ask.icy {
        request = request.header("Icy-MetaData", "1");
    }
    if let (true, Some(auth)) = (absolute, route.proxy.and_then(basic_auth)) {
        request = request.header(http::header::PROXY_AUTHORIZATION, auth);
    }
    let request = request.body(Empty::<Bytes>::new()).map_err(|e| Failure::Connect(e.to_string()))?;
    let mut builder = http1::Builder::new();
    builder.max_buf_size(READ_BUFFER.max(8192)).read_buf_exact_size(Some(READ_BUFFER));
    let (mut sender, connection) = if https {
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| Failure::Connect(format!("{host}: {e}")))?;
        let stream = tokio::time::timeout(route.connect_timeout, tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp))
            .await
            .map_err(|_| Failure::Connect("TLS handshake timed out".into()))?
            .map_err(|e| Failure::Connect(format!("TLS: {e}")))?;
        start(&builder, stream).await?
    } else {
        start(&builder, tcp).await?
    };
    let response = sender.send_request(request).await.map_err(|e| {
        connection.abort();
        Failure::Connect(describe(&e))
    })?;
    let (parts, body) = response.into_parts();
    Ok(Response { status: parts.status.as_u16(), headers: parts.headers, body, connection })
}

/// hyper's side of a connection: the request sender, and the task driving the connection.
async fn start<S>(builder: &http1::Builder, stream: S) -> Result<(http1::SendRequest<Empty<Bytes>>, tokio::task::JoinHandle<()>), Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = builder.handshake(TokioIo::new(stream)).await.map_err(|e| Failure::Connect(describe(&e)))?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((sender, task))
}

/// `host[:port]` as the Host header wants it.
fn host_header(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

fn basic_auth(proxy: &Proxy) -> Option<String> {
    use base64::Engine;
    let user = proxy.user.as_deref()?;
    let pair = format!("{user}:{}", proxy.password.as_deref().unwrap_or(""));
    Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)))
}

/// Connects to `host:port` (its addresses in turn), from `local` when given: only addresses of
/// its family are tried.
async fn connect_host(host: &str, port: u16, local: Option<IpAddr>, timeout: Duration, dns: &dns::Cache, deny: &[(IpAddr, u8)]) -> Result<TcpStream, Failure> {
    let resolved = dns.lookup(host).await.map_err(|e| Failure::Connect(format!("{host}: {e}")))?;
    // Checked on the addresses themselves, after resolution: a name cannot smuggle one in.
    let allowed: Vec<IpAddr> = resolved.iter().copied().filter(|ip| !caldera_protocol::in_networks(*ip, deny)).collect();
    if allowed.is_empty() && !resolved.is_empty() {
        return Err(Failure::Connect(format!("{host} resolves only to addresses in denied networks (caldera.outbound.denyNetworks)")));
    }
    let addrs: Vec<SocketAddr> = allowed.iter().filter(|a| local.is_none_or(|l| l.is_ipv4() == a.is_ipv4())).map(|ip| SocketAddr::new(*ip, port)).collect();
    let mut last = Failure::Connect(format!("{host} has no address to connect to"));
    for addr in addrs {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(|e| Failure::Connect(e.to_string()))?;
        if let Some(local) = local {
            socket.bind(SocketAddr::new(local, 0)).map_err(Failure::Bind)?;
        }
        match tokio::time::timeout(timeout, socket.connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => return Err(Failure::Bind(e)),
            Ok(Err(e)) => last = Failure::Connect(format!("{addr}: {e}")),
            Err(_) => last = Failure::Connect(format!("{addr}: no connection within {} ms", timeout.as_millis())),
        }
    }
    Err(last)
}

/// Asks the proxy for a tunnel to `host:port` (for https).
async fn tunnel(tcp: &mut TcpStream, host: &str, port: u16, proxy: &Proxy, timeout: Duration) -> Result<(), Failure> {
    let mut ask = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n");
    if let Some(auth) = basic_auth(proxy) {
        ask.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    ask.push_str("\r\n");
    let exchange = async {
        tcp.write_all(ask.as_bytes()).await?;
        // The proxy's answer head, byte by byte (bounded), so nothing of the tunnel is read.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
            head.push(tcp.read_u8().await?);
        }
        Ok::<_, std::io::Error>(head)
    };
    let head = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Failure::Connect("the proxy did not answer the CONNECT".into()))?
        .map_err(|e| Failure::Connect(format!("proxy: {e}")))?;
    let status = String::from_utf8_lossy(&head).split_whitespace().nth(1).unwrap_or("").to_string();
    if status != "200" {
        return Err(Failure::Connect(format!("the proxy refused the tunnel (status {status})")));
    }
    Ok(())
}

/// The error and its causes in one line.
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The TLS settings of every https request: the public roots (compiled in).
pub fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
