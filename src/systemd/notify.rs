//! Sending to the service manager's notify socket (`NOTIFY_SOCKET`), never blocking.
//!
//! The socket is a datagram socket with a bounded queue. A blocking send to a full queue
//! would stop the thread that sends (the async runtime's), so every send is non-blocking:
//! when the queue is full the message is dropped and a warning logged. systemd drains its
//! socket promptly; a test that stops reading its notify socket only loses messages.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, sendmsg, socket,
};

/// Sends `message` (with `fds` attached, if any) to `NOTIFY_SOCKET`, if it is set.
pub(super) fn send(message: &str, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => send_to(&path.to_string_lossy(), message, fds),
        None => Ok(()),
    }
}

/// Sends `message` to the socket at `path` (`@name`: an abstract socket).
fn send_to(path: &str, message: &str, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    let addr = match path.strip_prefix('@') {
        Some(name) => UnixAddr::new_abstract(name.as_bytes())?,
        None => UnixAddr::new(std::path::Path::new(path))?,
    };
    let sock = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let raw: Vec<_> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    sendmsg(
        sock.as_raw_fd(),
        &[IoSlice::new(message.as_bytes())],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        Some(&addr),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    use super::*;

    #[test]
    fn messages_and_descriptors_arrive_and_a_full_queue_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let path = path.to_str().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        send_to(path, "FDSTORE=1\n", &[listener.as_fd()]).unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"FDSTORE=1\n");
        // Never read from now on: the queue fills, then sends fail at once.
        let errors = (0..1000)
            .filter(|_| send_to(path, "STATUS=x\n", &[]).is_err())
            .count();
        assert!(errors > 0, "a full queue must refuse, not block");
    }
}
