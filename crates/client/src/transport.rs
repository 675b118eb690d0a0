//! Opening the byte stream: TCP, TLS, WebSocket or WebSocket over TLS. Above
//! this module a connection is just `AsyncRead + AsyncWrite`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::error::ClientError;
use crate::options::{ConnectOptions, Transport};

/// Any byte stream a connection can run over.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Opens the transport `options` name; `tls` is the configuration built
/// once by [`crate::Client::connect`] for TLS transports.
pub(crate) async fn open(
    options: &ConnectOptions,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<Box<dyn Io>, ClientError> {
    let target = format!("{}:{}", options.host, options.port);
    let tcp = TcpStream::connect((options.host.as_str(), options.port))
        .await
        .map_err(|e| ClientError::io(format!("cannot connect to {target}"), e))?;
    // MQTT packets are small and latency matters more than segment count.
    let _ = tcp.set_nodelay(true);
    match &options.transport {
        Transport::Tcp => Ok(Box::new(tcp)),
        Transport::Tls(_) => Ok(Box::new(tls_handshake(options, tls, tcp).await?)),
        Transport::WebSocket { path } => Ok(Box::new(websocket("ws", options, path, tcp).await?)),
        Transport::WebSocketTls { path, .. } => {
            let stream = tls_handshake(options, tls, tcp).await?;
            Ok(Box::new(websocket("wss", options, path, stream).await?))
        }
    }
}

async fn tls_handshake(
    options: &ConnectOptions,
    tls: Option<&Arc<ClientConfig>>,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
    let config = tls.ok_or_else(|| ClientError::TlsConfig("no TLS configuration".into()))?;
    let name = ServerName::try_from(options.host.clone())
        .map_err(|e| ClientError::TlsConfig(format!("{:?} is not a valid server name: {e}", options.host)))?;
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| ClientError::io(format!("TLS handshake with {}:{}", options.host, options.port), e))
}

async fn websocket<S: Io + 'static>(
    scheme: &str,
    options: &ConnectOptions,
    path: &str,
    stream: S,
) -> Result<WsIo<S>, ClientError> {
    let host = if options.host.contains(':') { format!("[{}]", options.host) } else { options.host.clone() };
    let url = format!("{scheme}://{host}:{}{path}", options.port);
    let mut request = url.as_str().into_client_request().map_err(|e| ClientError::WebSocket(format!("{url}: {e}")))?;
    // MQTT over WebSocket requires the `mqtt` subprotocol [MQTT-6.0.0-3].
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (ws, _response) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| ClientError::WebSocket(format!("{url}: {e}")))?;
    Ok(WsIo { ws, read: Bytes::new() })
}

/// A WebSocket seen as a byte stream: MQTT bytes travel in binary frames,
/// which need not line up with packets [MQTT-6.0.0-2].
pub(crate) struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// The rest of the last binary frame, not yet read.
    read: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.read.is_empty() {
                let n = self.read.len().min(buf.remaining());
                let chunk = self.read.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(WsMessage::Binary(data))) => self.read = data,
                // Close, or end of stream: end of file for MQTT.
                Some(Ok(WsMessage::Close(_))) | None => return Poll::Ready(Ok(())),
                // Pings are answered by tungstenite itself; text frames are not MQTT.
                Some(Ok(WsMessage::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "text WebSocket frame")));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io::Error::other)?;
        Pin::new(&mut self.ws).start_send(WsMessage::Binary(Bytes::copy_from_slice(buf))).map_err(io::Error::other)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(io::Error::other)
    }
}
