//! Sending bytes of a file to a client socket with `sendfile(2)`: the kernel hands the file's
//! page-cache pages to the socket without copying them through the process (nginx's
//! `sendfile on`). The lean hit path sends disk hits' bodies this way
//! (`policy::connections`); whatever cannot go at once is written from memory as any body.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// Send up to `len` bytes of `file` from `offset` to the non-blocking `socket`, until they are
/// all sent, the socket's buffer is full or the file ends: the bytes sent. An error only if
/// nothing could be sent (the caller writes the bytes another way).
pub fn send_file(socket: RawFd, file: &File, offset: u64, len: u64) -> io::Result<u64> {
    let mut at = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    let mut sent = 0u64;
    while sent < len {
        let want = usize::try_from(len - sent).unwrap_or(usize::MAX);
        // SAFETY: `socket` and `file` are open descriptors for the duration of the call (the
        // caller holds the connection and the file), and `at` is a valid `off_t` the kernel
        // advances by the bytes it sends.
        let n = unsafe { libc::sendfile(socket, file.as_raw_fd(), &mut at, want) };
        match n {
            // the file ends
            0 => break,
            n if n > 0 => sent += n as u64,
            _ => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    _ if sent > 0 => break,
                    io::ErrorKind::WouldBlock => break,
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        File::create(&path)
            .and_then(|mut f| f.write_all(bytes))
            .expect("write");
        (dir, File::open(&path).expect("open"))
    }

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("nonblocking");
        (server, client)
    }

    #[test]
    fn sends_the_span_asked_for() {
        let bytes = pattern(3 << 20);
        let (_dir, file) = file_with(&bytes);
        let (server, mut client) = pair();
        let want = 2 << 20;
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; want];
            client.read_exact(&mut got).map(|_| got)
        });
        let mut sent = 0u64;
        while sent < want as u64 {
            let at = 1000 + sent;
            sent += send_file(server.as_raw_fd(), &file, at, want as u64 - sent).expect("send");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(sent, want as u64);
        let got = reader.join().expect("reader").expect("read");
        assert!(got == bytes[1000..1000 + want], "bytes differ");
    }

    #[test]
    fn stops_where_the_file_ends() {
        let bytes = pattern(10_000);
        let (_dir, file) = file_with(&bytes);
        let (server, mut client) = pair();
        let sent = send_file(server.as_raw_fd(), &file, 9_000, 5_000).expect("send");
        assert_eq!(sent, 1_000);
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).expect("read");
        assert_eq!(got, bytes[9_000..]);
    }

    #[test]
    fn stops_when_the_socket_is_full_and_the_rest_can_follow() {
        let bytes = pattern(32 << 20);
        let (_dir, file) = file_with(&bytes);
        let (mut server, mut client) = pair();
        let len = bytes.len() as u64;
        let sent = send_file(server.as_raw_fd(), &file, 0, len).expect("send");
        assert!(
            sent > 0 && sent < len,
            "sent {sent} of {len} to a reader not reading"
        );
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            client.read_to_end(&mut got).map(|_| got)
        });
        server.set_nonblocking(false).expect("blocking");
        server.write_all(&bytes[sent as usize..]).expect("rest");
        drop(server);
        let got = reader.join().expect("reader").expect("read");
        assert!(got == bytes, "bytes differ");
    }

    #[test]
    fn a_descriptor_that_is_no_socket_is_an_error() {
        let (_dir, file) = file_with(&pattern(10));
        assert!(send_file(-1, &file, 0, 10).is_err());
    }
}
