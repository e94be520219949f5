//! The WebSocket upgrade without tungstenite's handshake buffer staying behind.
//!
//! tungstenite reads the upgrade response through a 4 KiB buffer and hands that
//! buffer (with whatever it read past the response) to the connection as its read
//! buffer, so every held connection keeps 4 KiB whatever `read_buffer_size` says.
//! [`HeadOnly`] lets the handshake read the response's head and not one byte more;
//! nothing is then buffered, and [`upgrade`] starts the connection over on the bare
//! stream with a read buffer of the configured size. tungstenite still builds the
//! request and checks the response (status, `Sec-WebSocket-Accept`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

/// The end of an HTTP head.
const END: &[u8; 4] = b"\r\n\r\n";

/// A TCP stream that reads no further than the end of the first HTTP head.
pub struct HeadOnly {
    inner: TcpStream,
    /// How many bytes of [`END`] the bytes read so far end with.
    matched: usize,
}

impl HeadOnly {
    pub fn new(inner: TcpStream) -> Self {
        Self { inner, matched: 0 }
    }

    /// Whether the whole head has been read.
    pub fn head_read(&self) -> bool {
        self.matched == END.len()
    }

    /// How many of `bytes` belong to the head (all of them if it does not end there),
    /// and the match state after them.
    fn head_part(&self, bytes: &[u8]) -> (usize, usize) {
        let mut matched = self.matched;
        for (i, &b) in bytes.iter().enumerate() {
            matched = if b == END[matched] {
                matched + 1
            } else if b == END[0] {
                1
            } else {
                0
            };
            if matched == END.len() {
                return (i + 1, matched);
            }
        }
        (bytes.len(), matched)
    }
}

impl AsyncRead for HeadOnly {
    /// Peeks, then reads only the bytes up to the end of the head; past it, reads
    /// nothing (end of stream, which the handshake never asks for).
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.head_read() {
            return Poll::Ready(Ok(()));
        }
        let mut scratch = [0u8; 512];
        let limit = buf.remaining().min(scratch.len());
        let mut peeked = ReadBuf::new(&mut scratch[..limit]);
        ready!(this.inner.poll_peek(cx, &mut peeked))?;
        let (take, _) = this.head_part(peeked.filled());
        let mut read = ReadBuf::new(&mut scratch[..take]);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
        let (n, matched) = this.head_part(read.filled());
        debug_assert_eq!(n, read.filled().len());
        this.matched = matched;
        buf.put_slice(read.filled());
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for HeadOnly {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The client handshake on `stream`, then a fresh client connection on the same
/// socket with `config`'s buffers.
pub async fn upgrade(
    request: impl IntoClientRequest + Unpin,
    stream: TcpStream,
    config: WebSocketConfig,
) -> Result<(WebSocketStream<TcpStream>, Response), tokio_tungstenite::tungstenite::Error> {
    let (ws, response) =
        client_async_with_config(request, HeadOnly::new(stream), Some(config)).await?;
    let head = ws.into_inner();
    // The handshake ends when the head has been parsed, so nothing past it was read:
    // dropping tungstenite's (empty) buffers loses no frame.
    debug_assert!(head.head_read());
    let ws = WebSocketStream::from_raw_socket(head.inner, Role::Client, Some(config)).await;
    Ok((ws, response))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A head split across writes, followed at once by frame bytes: the head is read
    /// to its last byte and the bytes after it stay in the socket.
    #[tokio::test]
    async fn reads_exactly_the_head() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"HTTP/1.1 101 OK\r\nA: \r\r\n").await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            s.write_all(b"B: 1\r\n\r\nafter").await.unwrap();
            s
        });
        let mut head = HeadOnly::new(TcpStream::connect(addr).await.unwrap());
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while !head.head_read() {
            let n = head.read(&mut buf).await.unwrap();
            assert!(n > 0, "the head ended early");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"HTTP/1.1 101 OK\r\nA: \r\r\nB: 1\r\n\r\n");
        assert_eq!(
            head.read(&mut buf).await.unwrap(),
            0,
            "nothing past the head"
        );
        let _server = server.await.unwrap();
        let mut rest = [0u8; 5];
        head.inner.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"after");
    }
}
