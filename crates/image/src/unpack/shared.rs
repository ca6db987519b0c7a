//! The layer stream, shared by the tar crate's raw reader and the unpacker.
//!
//! In raw mode the crate advances by each header's size field. Two valid
//! layouts put data where that field does not say: Go's archive/tar writes
//! files over 8 GiB with size 0 in the header and the real size in a PAX
//! `size` record, and GNU sparse members are followed by extra sparse-map
//! blocks. The unpacker reads those bytes through this handle, beside the
//! crate, which only counts positions relative to its own reads and so
//! finds the next header right after them.

use std::cell::RefCell;
use std::io::{self, Read};
use std::rc::Rc;

/// A cheap handle to one reader; single-threaded, and the crate never holds
/// a read across calls, so the borrows never overlap.
pub(super) struct Shared<R>(Rc<RefCell<R>>);

impl<R> Shared<R> {
    pub(super) fn new(inner: R) -> Self {
        Self(Rc::new(RefCell::new(inner)))
    }
}

impl<R> Clone for Shared<R> {
    fn clone(&self) -> Self {
        Self(Rc::clone(&self.0))
    }
}

impl<R: Read> Read for Shared<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.borrow_mut().read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_read_one_stream_in_turn() {
        let mut a = Shared::new(&b"abcdef"[..]);
        let mut b = a.clone();
        let mut buf = [0u8; 2];
        a.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ab");
        b.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"cd");
        a.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ef");
    }
}
