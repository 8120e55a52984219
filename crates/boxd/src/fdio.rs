//! Non-blocking reads and writes on a child's pipe ends and on a pseudo-terminal master, driven
//! by tokio's reactor through its (safe) `unix::pipe` wrappers, which do not care whether the
//! descriptor really is a pipe.

use std::io;
use std::os::fd::OwnedFd;

use rustix::io::Errno;
use tokio::net::unix::pipe;

/// Where boxd reads a child's output: a pipe or a terminal master.
pub(crate) type Reader = pipe::Receiver;

/// Where boxd writes a child's input: a pipe or a terminal master.
pub(crate) type Writer = pipe::Sender;

/// Makes `fd` non-blocking and registers it for reading.
pub(crate) fn reader(fd: OwnedFd) -> io::Result<Reader> {
    rustix::io::ioctl_fionbio(&fd, true)?;
    pipe::Receiver::from_owned_fd_unchecked(fd)
}

/// Makes `fd` non-blocking and registers it for writing.
pub(crate) fn writer(fd: OwnedFd) -> io::Result<Writer> {
    rustix::io::ioctl_fionbio(&fd, true)?;
    pipe::Sender::from_owned_fd_unchecked(fd)
}

/// Waits until `reader` may be read; pends forever for `None`, so it fits `select!`.
pub(crate) async fn readable(reader: Option<&Reader>) -> io::Result<()> {
    match reader {
        Some(reader) => reader.readable().await,
        None => std::future::pending().await,
    }
}

/// Reads into `buf` after [`readable`]: `Some(Ok(0))` is the end of the stream (a terminal
/// master's `EIO` once every slave is closed counts as that), `None` a spurious wakeup.
pub(crate) fn try_read(reader: &Reader, buf: &mut [u8]) -> Option<io::Result<usize>> {
    match reader.try_read(buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) if e.raw_os_error() == Some(Errno::IO.raw_os_error()) => Some(Ok(0)),
        result => Some(result),
    }
}

/// Writes all of `data`, waiting while the pipe or terminal is full.
pub(crate) async fn write_all(writer: &Writer, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        writer.writable().await?;
        match writer.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
