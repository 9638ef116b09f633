//! One gzip stream of the daemon's own text and a pass's containers, without compressing the
//! containers' part again for every scrape; and the daemon's one gzip of a whole text (the
//! page and its JSON, `http::views`).
use std::io::Write as _;

use bytes::Bytes;

/// A text compressed as raw deflate blocks that end a stream, with its CRC-32 and length: the
/// tail of a gzip response that any text can be put in front of.
pub struct Deflated {
    blocks: Bytes,
    /// The CRC-32 and length of the text.
    crc: flate2::Crc,
}

impl Deflated {
    pub fn new(text: &[u8]) -> Deflated {
        let mut enc = flate2::write::DeflateEncoder::new(
            Vec::with_capacity(text.len() / 8 + 64),
            flate2::Compression::fast(),
        );
        // Writing into a Vec cannot fail.
        let _ = enc.write_all(text);
        let mut crc = flate2::Crc::new();
        crc.update(text);
        Deflated {
            blocks: Bytes::from(enc.finish().unwrap_or_default()),
            crc,
        }
    }
}

/// A text compressed as it is written (`fmt::Write`), in pieces of `PIECE` bytes: the text is
/// never whole in memory, only its compressed blocks.
pub struct DeflateWriter {
    enc: flate2::write::DeflateEncoder<Vec<u8>>,
    crc: flate2::Crc,
    piece: String,
}

impl DeflateWriter {
    const PIECE: usize = 64 * 1024;

    /// `expected`: about how long the text will be (the output is sized for an eighth of it).
    pub fn new(expected: usize) -> DeflateWriter {
        DeflateWriter {
            enc: flate2::write::DeflateEncoder::new(
                Vec::with_capacity(expected / 8 + 64),
                flate2::Compression::fast(),
            ),
            crc: flate2::Crc::new(),
            piece: String::with_capacity(Self::PIECE + 1024),
        }
    }

    fn flush_piece(&mut self) {
        self.crc.update(self.piece.as_bytes());
        // Writing into a Vec cannot fail.
        let _ = self.enc.write_all(self.piece.as_bytes());
        self.piece.clear();
    }

    pub fn finish(mut self) -> Deflated {
        self.flush_piece();
        Deflated {
            blocks: Bytes::from(self.enc.finish().unwrap_or_default()),
            crc: self.crc,
        }
    }
}

impl std::fmt::Write for DeflateWriter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.piece.push_str(s);
        if self.piece.len() >= Self::PIECE {
            self.flush_piece();
        }
        Ok(())
    }
}

/// One gzip stream (a single member: some clients, curl among them, read only the first) of
/// `head` followed by `tail`'s text, without compressing the tail again: `head` goes in as
/// stored (uncompressed, byte-aligned) blocks, then the tail's blocks, then the CRC of both,
/// combined from their own. For each scrape: the daemon's few KB in front of the pass's
/// containers.
pub fn gzip_response(head: &[u8], tail: &Deflated) -> [Bytes; 3] {
    // A stored block holds at most 65535 bytes: header byte (BFINAL=0, BTYPE=00), LEN, NLEN.
    const MAX_BLOCK: usize = 0xffff;
    let mut front = Vec::with_capacity(head.len() + head.len() / MAX_BLOCK * 5 + 16);
    // ID1 ID2, CM=deflate, no flags, no mtime, XFL 0, OS unknown.
    front.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    for block in head.chunks(MAX_BLOCK) {
        let len = block.len() as u16;
        front.push(0);
        front.extend_from_slice(&len.to_le_bytes());
        front.extend_from_slice(&(!len).to_le_bytes());
        front.extend_from_slice(block);
    }
    let mut crc = flate2::Crc::new();
    crc.update(head);
    crc.combine(&tail.crc);
    let mut trailer = Vec::with_capacity(8);
    trailer.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE: the length modulo 2^32, as flate2 counts it.
    trailer.extend_from_slice(&crc.amount().to_le_bytes());
    [
        Bytes::from(front),
        tail.blocks.clone(),
        Bytes::from(trailer),
    ]
}

/// `text` as one gzip stream at the fastest level (text of numbers shrinks several times even
/// so): a scrape's stream with nothing in front.
pub fn gzip(text: &[u8]) -> Vec<u8> {
    gzip_response(&[], &Deflated::new(text)).concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_response_is_one_member_of_both_texts() {
        use std::io::Read as _;
        let big: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        for (head, tail) in [
            (&b""[..], &b"b 2\n"[..]),
            (b"a 1\n", b"b 2\n"),
            (&big, b"b 2\n"),
            (b"a 1\n", &big),
            (b"", b""),
        ] {
            let mut written = DeflateWriter::new(0);
            for piece in tail.chunks(1000) {
                std::fmt::Write::write_str(&mut written, std::str::from_utf8(piece).unwrap())
                    .unwrap();
            }
            let written = written.finish();
            assert_eq!(
                gzip_response(head, &written).concat(),
                gzip_response(head, &Deflated::new(tail)).concat(),
                "written piece by piece, the same stream"
            );
            let gz: Vec<u8> = gzip_response(head, &written).concat();
            // A single-member decoder (what curl uses) must see everything, and nothing may
            // follow the member.
            let mut dec = flate2::read::GzDecoder::new(&gz[..]);
            let mut out = Vec::new();
            dec.read_to_end(&mut out).unwrap();
            assert_eq!(out, [head, tail].concat());
            let mut rest = Vec::new();
            dec.into_inner().read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "{} bytes after the member", rest.len());
        }
    }

    #[test]
    fn gzip_of_a_whole_text() {
        use std::io::Read as _;
        let big: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        for text in [&b""[..], b"<html>\n", &big] {
            let gz = gzip(text);
            assert!(
                gz.len() < text.len() / 4 + 32,
                "{} of {}",
                gz.len(),
                text.len()
            );
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, text);
        }
    }
}
