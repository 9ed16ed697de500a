//! A service's listening socket, shared by the shim that owns it and the
//! hearthd that serves on it.
//!
//! # Contract
//!
//! * [`listen_in_netns`] binds a TCP listener inside a network namespace
//!   (a file such as `/proc/<pid>/ns/net`; empty: the caller's own), on a
//!   thread of its own that enters the namespace with `setns`, binds and
//!   ends, so no other thread of the caller changes namespace. The socket
//!   stays in the namespace it was bound in.
//! * The shim binds a service's listener at Create and keeps it until the
//!   task exits. hearthd serves on a duplicate it takes with
//!   [`take_listener`] (`pidfd_getfd(2)`, Linux 5.6+, which needs the right
//!   to ptrace the owner: root, or `CAP_SYS_PTRACE`). A hearthd that stops
//!   closes only its duplicate: the socket stays bound and connections that
//!   arrive before the next hearthd takes it wait in its backlog.
//! * [`take_listener`] refuses a descriptor that is not a listening
//!   TCP/IPv4 or TCP/IPv6 socket, naming what it is.

use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// The backlog of a function's listener: connections the kernel keeps
/// waiting while no hearthd accepts (during a hearthd restart). The
/// kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Binds `addr` inside the network namespace at `netns` (empty: the
/// caller's own), with [`LISTEN_BACKLOG`].
pub fn listen_in_netns(addr: SocketAddr, netns: &Path) -> io::Result<TcpListener> {
    if netns.as_os_str().is_empty() {
        return listen(addr);
    }
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open netns {}: {e}", netns.display()),
            )
        })?;
        // Changes only this thread, which ends after binding.
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot enter netns {}: {e}", netns.display()),
            )
        })?;
        listen(addr)
    })
    .join()
    .map_err(|_| io::Error::other("the netns thread panicked"))?
}

/// `socket`, `SO_REUSEADDR`, `bind`, `listen(LISTEN_BACKLOG)`.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let socket = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    sockopt::set_socket_reuseaddr(&socket, true)?;
    rustix::net::bind(&socket, &addr)?;
    rustix::net::listen(&socket, LISTEN_BACKLOG)?;
    Ok(TcpListener::from(socket))
}

/// A duplicate of descriptor `fd` of process `pid`, which must be a
/// listening TCP socket (see the module docs).
pub fn take_listener(pid: u32, fd: u32) -> io::Result<TcpListener> {
    let described = |error: io::Error, what: &str| {
        io::Error::new(
            error.kind(),
            format!("cannot take listener fd {fd} of process {pid}: {what}: {error}"),
        )
    };
    let target = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no process {pid}")))?;
    let raw_fd = i32::try_from(fd).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("fd {fd} out of range"))
    })?;
    let pidfd = rustix::process::pidfd_open(target, PidfdFlags::empty())
        .map_err(|e| described(e.into(), "pidfd_open"))?;
    // The kernel sets close-on-exec on the new descriptor.
    let taken: OwnedFd = rustix::process::pidfd_getfd(&pidfd, raw_fd, PidfdGetfdFlags::empty())
        .map_err(|e| described(e.into(), "pidfd_getfd"))?;
    let domain = sockopt::socket_domain(&taken).map_err(|e| described(e.into(), "not a socket"))?;
    let kind = sockopt::socket_type(&taken).map_err(|e| described(e.into(), "SO_TYPE"))?;
    let listening =
        sockopt::socket_acceptconn(&taken).map_err(|e| described(e.into(), "SO_ACCEPTCONN"))?;
    if !(domain == AddressFamily::INET || domain == AddressFamily::INET6)
        || kind != SocketType::STREAM
        || !listening
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "cannot take listener fd {fd} of process {pid}: not a listening TCP socket ({domain:?}, {kind:?}, listening: {listening})"
            ),
        ));
    }
    Ok(TcpListener::from(taken))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn a_listener_taken_from_a_process_accepts_what_waited_in_its_backlog() {
        let listener = listen_in_netns("127.0.0.1:0".parse().unwrap(), Path::new("")).unwrap();
        let addr = listener.local_addr().unwrap();
        // A client connects before anyone accepts: it waits in the backlog.
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        client.write_all(b"waited").unwrap();
        let taken = take_listener(std::process::id(), listener.as_raw_fd() as u32).unwrap();
        drop(listener);
        let (mut accepted, _) = taken.accept().unwrap();
        let mut said = [0; 6];
        accepted.read_exact(&mut said).unwrap();
        assert_eq!(&said, b"waited");
    }

    #[test]
    fn what_is_not_a_listening_tcp_socket_is_refused() {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let error = take_listener(std::process::id(), file.as_raw_fd() as u32).unwrap_err();
        assert!(error.to_string().contains("not a socket"), "{error}");
        let bound = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let error = take_listener(std::process::id(), bound.as_raw_fd() as u32).unwrap_err();
        assert!(
            error.to_string().contains("not a listening TCP socket"),
            "{error}"
        );
        let error = take_listener(std::process::id(), 999_999).unwrap_err();
        assert!(error.to_string().contains("pidfd_getfd"), "{error}");
    }
}
