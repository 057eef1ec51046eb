//! [`Header`]: reads a frame header's fields by hand, as the codec's
//! bincode configuration writes them, for the few messages on every job's
//! path (`Message::decode_header`). A leaf: it imports nothing of ours, so
//! both the codec and the messages may use it.

/// Reads a header's fields as this codec's bincode configuration writes
/// them: little-endian fixed-width integers, a `u8` 0 or 1 for a bool or an
/// `Option`'s tag, a `u32` variant index, a `u64` length before bytes and
/// strings. Every read is `None` past the end.
pub struct Header<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Header<'a> {
    /// A reader at the start of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Header<'a> {
        Header { buf, at: 0 }
    }

    /// Bytes read so far: the header's length once a message is read.
    pub(crate) fn read(&self) -> usize {
        self.at
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())?;
        let bytes = &self.buf[self.at..end];
        self.at = end;
        Some(bytes)
    }

    /// A `u8`.
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    /// A `u32` (also an enum's variant index).
    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    /// A `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// A bool (0 or 1; bincode refuses anything else).
    pub fn bool(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    /// An `Option`'s tag: whether a value follows.
    pub fn some(&mut self) -> Option<bool> {
        self.bool()
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u64()?).ok()?;
        self.take(len)
    }

    /// A length-prefixed UTF-8 string.
    pub fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
}
