//! A guest's stdout or stderr: bounded memory that the host empties after each call, so an
//! instance kept across keys gives each key its own output and its own [`OUTPUT_CAPACITY`].
//! Writes beyond the capacity fail as WASI's memory pipe's do (the stream reports itself closed).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use super::OUTPUT_CAPACITY;

#[derive(Clone, Default)]
pub(crate) struct Pipe {
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl Pipe {
    fn buffer(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.buffer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What was written since the last take (lossy UTF-8), leaving the pipe empty.
    pub(crate) fn take(&self) -> String {
        let mut buffer = self.buffer();
        let text = String::from_utf8_lossy(&buffer).into_owned();
        buffer.clear();
        text
    }
}

#[async_trait::async_trait]
impl Pollable for Pipe {
    async fn ready(&mut self) {}
}

impl OutputStream for Pipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let mut buffer = self.buffer();
        if bytes.len() > OUTPUT_CAPACITY - buffer.len() {
            return Err(StreamError::Trap(wasmtime::format_err!(
                "write beyond the capacity of the output pipe"
            )));
        }
        buffer.extend_from_slice(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        let used = self.buffer().len();
        if used < OUTPUT_CAPACITY {
            Ok(OUTPUT_CAPACITY - used)
        } else {
            Err(StreamError::Closed)
        }
    }
}

impl tokio::io::AsyncWrite for Pipe {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, bytes: &[u8]) -> Poll<std::io::Result<usize>> {
        let mut buffer = self.buffer();
        let n = bytes.len().min(OUTPUT_CAPACITY - buffer.len());
        buffer.extend_from_slice(&bytes[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for Pipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Pipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}
