//! A byte budget on the tar stream.
//!
//! Outside raw mode the tar crate reads GNU long names and PAX records whole
//! into memory, with no size limit; the unpack loop now reads them itself
//! (bounded, see `member`), and this budget stays as a backstop on what the
//! crate reads to find a header. The loop sets a small budget while the
//! crate parses headers and lifts it while entry data (which it copies in
//! bounded chunks and meters itself) is read.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

#[derive(Debug, Default)]
pub(super) struct Budget {
    left: Cell<u64>,
    tripped: Cell<bool>,
}

impl Budget {
    pub(super) fn set(&self, bytes: u64) {
        self.left.set(bytes);
    }

    /// Whether a read failed because the budget ran out.
    pub(super) fn tripped(&self) -> bool {
        self.tripped.get()
    }
}

pub(super) struct Guarded<R> {
    inner: R,
    budget: Rc<Budget>,
}

impl<R> Guarded<R> {
    pub(super) fn new(inner: R) -> (Self, Rc<Budget>) {
        let budget = Rc::new(Budget::default());
        budget.set(u64::MAX);
        let me = Self {
            inner,
            budget: Rc::clone(&budget),
        };
        (me, budget)
    }
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let left = self.budget.left.get();
        if left == 0 {
            // Only data beyond the budget is an offence; a stream that ends
            // exactly at it is fine, so probe for one more byte.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.budget.tripped.set(true);
            return Err(io::Error::other("tar stream byte budget exhausted"));
        }
        let cap = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..cap])?;
        self.budget.left.set(left - n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_at_the_budget() {
        let (mut r, budget) = Guarded::new(&[7u8; 100][..]);
        budget.set(10);
        let mut buf = [0u8; 64];
        assert_eq!(r.read(&mut buf).unwrap(), 10);
        assert!(r.read(&mut buf).is_err());
        assert!(budget.tripped());
        budget.set(u64::MAX);
        assert_eq!(r.read(&mut buf).unwrap(), 64);
    }

    #[test]
    fn a_stream_ending_at_the_budget_is_not_an_offence() {
        let (mut r, budget) = Guarded::new(&[7u8; 10][..]);
        budget.set(10);
        let mut buf = [0u8; 64];
        assert_eq!(r.read(&mut buf).unwrap(), 10);
        assert_eq!(r.read(&mut buf).unwrap(), 0);
        assert!(!budget.tripped());
    }
}
