//! Pieces of an RFC 5322 message as stored in the queue (CRLF line ends).

/// The header section of `msg`: everything up to and including the empty line that ends it, or all of `msg`
/// when it has no empty line. Used for RET=HDRS in DSNs and for showing a queued message's headers.
pub fn header_section(msg: &[u8]) -> &[u8] {
    if msg.starts_with(b"\r\n") {
        return &msg[..2];
    }
    msg.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(msg, |i| &msg[..i + 4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_section_ends_with_the_empty_line() {
        assert_eq!(
            header_section(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"),
            b"A: 1\r\nB: 2\r\n\r\n"
        );
        assert_eq!(header_section(b"\r\nbody"), b"\r\n");
        assert_eq!(header_section(b"A: 1\r\n"), b"A: 1\r\n", "no body: all of it");
    }
}
