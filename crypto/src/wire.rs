//! Helpers for the compact binary encodings: a bounds-checked reader.

use crate::Error;

/// Version byte that starts every encoding in this crate.
pub const VERSION: u8 = 1;

/// Type bytes (the second byte of every encoding).
pub mod kind {
    /// A Double Ratchet message.
    pub const RATCHET_MESSAGE: u8 = 0x01;
    /// A prekey message: X3DH initial data plus a ratchet message.
    pub const PREKEY_MESSAGE: u8 = 0x02;
    /// A sender-key distribution message.
    pub const SENDER_KEY_DISTRIBUTION: u8 = 0x03;
    /// A sender-key group message.
    pub const SENDER_KEY_MESSAGE: u8 = 0x04;
    /// A sealed-sender envelope.
    pub const SEALED_ENVELOPE: u8 = 0x05;
    /// A public prekey bundle.
    pub const PREKEY_BUNDLE: u8 = 0x06;
    /// The inner plaintext of a sealed-sender envelope.
    pub const SEALED_CONTENT: u8 = 0x07;
}

/// A cursor over untrusted bytes; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.buf.len() < n {
            return Err(Error::Truncated {
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Reads the version and type bytes and checks them.
    pub(crate) fn header(&mut self, expected_kind: u8) -> Result<(), Error> {
        let version = self.u8()?;
        if version != VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let kind = self.u8()?;
        if kind != expected_kind {
            return Err(Error::UnexpectedType(kind));
        }
        Ok(())
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Fails if any bytes are left.
    pub(crate) fn finish(&self) -> Result<(), Error> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::TrailingBytes(self.buf.len()))
        }
    }
}
