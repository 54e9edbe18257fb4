//! Request targets with a control byte or a space in them (RFC 9112 3.2: a target is visible
//! ASCII), refused with a 400 as nginx refuses them. Pingora's HTTP/1 parser does not refuse
//! them: it percent-encodes the target (`/a\0b` becomes `/a%00b`) and parses the request again,
//! so that by the first hook such a request looks like one a client sent encoded, and would be
//! forwarded so. What the client sent is seen by the connection's watch
//! ([`super::connections`]): a [`RequestLines`] reads every line that passes and keeps the
//! target of each one Pingora would rewrite, as rewritten; [`target_rewritten`] then tells
//! whether the current request's target is one of them.

use super::connections;
use memchr::memmem::Finder;
use memchr::{memchr, memrchr};
use once_cell::sync::Lazy;
use percent_encoding::{percent_encode, AsciiSet, CONTROLS};
use pingora_core::protocols::http::v1::server::HttpSession;
use xxhash_rust::xxh3::xxh3_64;

/// What Pingora percent-encodes in a target it rewrites (pingora-core's `URI_ESC_CHARSET`;
/// bytes beyond ASCII are encoded too).
const REWRITTEN: &AsciiSet = &CONTROLS.add(b' ').add(b'<').add(b'>').add(b'"');

/// Rewritten targets remembered per connection, newest kept.
const KEPT: usize = 16;

/// Spaces after a method-like word taken, per line, for the one before the target: the first
/// one when the request line starts the line, a later one when it follows a body that did not
/// end one (a bound: each costs a pass over the line).
const STARTS: usize = 4;

/// What precedes the HTTP version in a request line.
static VERSION: Lazy<Finder<'static>> = Lazy::new(|| Finder::new(b" HTTP/"));

/// Whether `b` cannot be part of a target: a control byte, DEL or a space.
fn invalid(b: u8) -> bool {
    b <= b' ' || b == 0x7f
}

/// Whether `b` may be part of a method as Pingora's request-line pattern reads one (`\w`:
/// bytes beyond ASCII may belong to a Unicode letter).
fn word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Where the last ` HTTP/<digit>` of `line` starts: the end of the target.
fn version_at(line: &[u8]) -> Option<usize> {
    line.windows(7)
        .rposition(|w| w.starts_with(b" HTTP/") && w[6].is_ascii_digit())
}

/// The lines a client sent on one HTTP/1 connection, read for request lines whose target
/// Pingora rewrites. A request line starts a line, or follows a body that did not end one: the
/// first few spaces after a method-like word may be the one before the target.
#[derive(Debug)]
pub struct RequestLines {
    /// The start of a line not ended yet by the bytes read so far.
    partial: Vec<u8>,
    /// The line being read is longer than `max`: it is not looked at.
    overlong: bool,
    /// Lines longer than this are not looked at (their target could not pass the size limits).
    max: usize,
    /// Hashes of the rewritten targets found, oldest first.
    found: Vec<u64>,
}

impl RequestLines {
    /// Reading lines of at most `max` bytes.
    pub fn new(max: usize) -> RequestLines {
        RequestLines {
            partial: Vec::new(),
            overlong: false,
            max,
            found: Vec::new(),
        }
    }

    /// Read `bytes`, the next ones the client sent.
    pub fn feed(&mut self, bytes: &[u8]) {
        let Some(first) = memchr(b'\n', bytes) else {
            self.extend(bytes);
            return;
        };
        if self.partial.is_empty() && !self.overlong {
            self.line(&bytes[..first]);
        } else {
            // the end of a line begun in an earlier read
            self.extend(&bytes[..first]);
            if !self.overlong {
                let line = std::mem::take(&mut self.partial);
                self.line(&line);
                self.partial = line;
            }
            self.overlong = false;
            self.partial.clear();
            if self.partial.capacity() > 4096 {
                self.partial = Vec::new();
            }
        }
        let last = memrchr(b'\n', bytes).unwrap_or(first);
        // the lines after it: only those with an HTTP version can be request lines
        let whole = bytes.get(first + 1..last).unwrap_or_default();
        let mut from = 0;
        while let Some(at) = whole.get(from..).and_then(|rest| VERSION.find(rest)) {
            let at = from + at;
            let start = memrchr(b'\n', &whole[..at]).map_or(0, |i| i + 1);
            let end = memchr(b'\n', &whole[at..]).map_or(whole.len(), |i| at + i);
            self.line(&whole[start..end]);
            from = end + 1;
        }
        self.extend(&bytes[last + 1..]);
    }

    /// Keep `bytes` as the start of the line being read (unless it grows past `max`).
    fn extend(&mut self, bytes: &[u8]) {
        if self.overlong || self.partial.len() + bytes.len() > self.max {
            self.overlong = true;
            self.partial = Vec::new();
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }

    /// Look at one whole line (without its LF).
    fn line(&mut self, line: &[u8]) {
        if line.len() > self.max {
            return;
        }
        let text = line.strip_suffix(b"\r").unwrap_or(line);
        // a well-formed request line (and any header line) has no control byte, and a request
        // line two spaces
        let mut spaces = 0;
        let clean = text.iter().all(|&b| {
            spaces += usize::from(b == b' ');
            b >= b' ' && b != 0x7f
        });
        if clean && spaces <= 2 {
            return;
        }
        let Some(end) = version_at(line) else {
            return;
        };
        let starts = (1..end)
            .filter(|&at| line[at] == b' ' && word(line[at - 1]))
            .take(STARTS);
        for at in starts {
            let target = &line[at + 1..end];
            if !target.is_empty() && target.iter().any(|&b| invalid(b)) {
                if self.found.len() == KEPT {
                    self.found.remove(0);
                }
                self.found.push(rewritten_hash(target));
            }
        }
    }

    /// Whether the request whose header Pingora parsed as `raw` had its target rewritten.
    pub fn rewrote(&self, raw: &[u8]) -> bool {
        if self.found.is_empty() {
            return false;
        }
        let line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
        let target = line
            .iter()
            .position(|&b| b == b' ')
            .zip(version_at(line))
            .and_then(|(start, end)| line.get(start + 1..end));
        target.is_some_and(|t| self.found.contains(&xxh3_64(t)))
    }
}

/// The hash of `target` as Pingora rewrites it.
fn rewritten_hash(target: &[u8]) -> u64 {
    xxh3_64(percent_encode(target, REWRITTEN).to_string().as_bytes())
}

/// Whether the current request of `h1` came with a target Pingora rewrote (a control byte or a
/// space in it, as the client sent it).
pub fn target_rewritten(h1: &HttpSession) -> bool {
    connections::request_lines(h1.stream())
        .is_some_and(|lines| !lines.found.is_empty() && lines.rewrote(&h1.get_headers_raw_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the first hook sees of a request line Pingora rewrote.
    fn as_parsed(line: &[u8]) -> Vec<u8> {
        let end = version_at(line).expect("a version");
        let start = line.iter().position(|&b| b == b' ').expect("a space") + 1;
        let mut out = line[..start].to_vec();
        out.extend(
            percent_encode(&line[start..end], REWRITTEN)
                .to_string()
                .bytes(),
        );
        out.extend_from_slice(&line[end..]);
        out
    }

    fn read(chunks: &[&[u8]]) -> RequestLines {
        let mut lines = RequestLines::new(1024);
        for c in chunks {
            lines.feed(c);
        }
        lines
    }

    #[test]
    fn a_target_with_a_control_byte_or_a_space_is_found_as_rewritten() {
        for byte in [0x00u8, 0x01, b'\t', b'\r', 0x1f, 0x7f, b' '] {
            let mut line = b"GET /a?q=".to_vec();
            line.push(byte);
            line.extend_from_slice(b"\xff HTTP/1.1\r\n");
            let lines = read(&[&line, b"Host: x\r\n\r\n"]);
            let parsed = as_parsed(&line);
            assert!(lines.rewrote(&parsed), "{}", line.escape_ascii());
            // the client's own encoding of the same target is not a rewrite
            assert!(!read(&[&parsed]).rewrote(&parsed));
        }
    }

    #[test]
    fn lines_split_across_reads_are_put_together() {
        let line = b"GET /a\x00b HTTP/1.1\r\n";
        let lines = read(&[b"GET /", b"a\x00", b"b HTTP/1.1", b"\r", b"\nHost: x\r\n"]);
        assert!(lines.rewrote(&as_parsed(line)));
    }

    #[test]
    fn every_request_line_of_a_read_is_looked_at() {
        let lines = read(&[
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b\x00 HTTP/1.1\r\nHost: x\r\n\r\nGET /c\x7f HTTP/1.1\r\n",
        ]);
        assert!(lines.rewrote(b"GET /b%00 HTTP/1.1\r\n"));
        assert!(lines.rewrote(b"GET /c%7F HTTP/1.1\r\n"));
        assert!(!lines.rewrote(b"GET /a HTTP/1.1\r\n"));
    }

    #[test]
    fn a_request_line_right_after_a_body_is_found() {
        let line = b"GET /a\x01 HTTP/1.1\r\n";
        for body in [&b"abc"[..], b"a!", b"x y"] {
            let mut sent = body.to_vec();
            sent.extend_from_slice(line);
            assert!(read(&[&sent]).rewrote(&as_parsed(line)), "{body:?}");
        }
    }

    #[test]
    fn ordinary_requests_and_other_lines_leave_nothing() {
        let lines = read(&[
            b"GET /a%00b?q=%20 HTTP/1.1\r\nHost: x\r\nX-Text: a \x01 b HTTP/1.1\r\n\r\n",
            b"some text with many spaces\n",
        ]);
        assert!(lines.found.len() <= 1, "{:?}", lines.found);
        assert!(!lines.rewrote(b"GET /a%00b?q=%20 HTTP/1.1\r\n"));
        assert!(read(&[b"GET /a b HTTP/1.1\r\n"]).rewrote(b"GET /a%20b HTTP/1.1\r\n"));
    }

    #[test]
    fn overlong_lines_are_skipped_and_reading_goes_on() {
        let mut lines = RequestLines::new(16);
        lines.feed(b"GET /a\x00b-very-long-target HTTP/1.1\r\n");
        assert!(lines.found.is_empty());
        lines.feed(b"GET /\x00 HTTP/1.1\r\n");
        assert!(lines.rewrote(b"GET /%00 HTTP/1.1\r\n"));
    }

    #[test]
    fn a_long_line_of_words_costs_a_few_passes() {
        let mut line = "a ".repeat(8000).into_bytes();
        line.extend_from_slice(b"\x00 HTTP/1.1\r\n");
        let mut lines = RequestLines::new(1 << 20);
        lines.feed(&line);
        assert_eq!(lines.found.len(), STARTS);
    }

    #[test]
    fn only_the_newest_targets_are_kept() {
        let mut lines = RequestLines::new(1024);
        for i in 0..KEPT + 4 {
            lines.feed(format!("GET /{i}\x00 HTTP/1.1\r\n").as_bytes());
        }
        assert_eq!(lines.found.len(), KEPT);
        assert!(!lines.rewrote(b"GET /0%00 HTTP/1.1\r\n"));
        assert!(lines.rewrote(format!("GET /{}%00 HTTP/1.1\r\n", KEPT + 3).as_bytes()));
    }
}
