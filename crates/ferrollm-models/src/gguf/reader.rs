//! A bounds-checked little-endian cursor over the GGUF header bytes.
//!
//! Every read returns `Err` instead of panicking when the input runs out, so a truncated or
//! hostile file can only ever produce an error message.

/// Why a read failed; the parser turns it into `ModelError::BadGguf` with context.
pub(crate) type ReadResult<T> = Result<T, String>;

pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left after the cursor; used to reject counts that could not possibly fit.
    pub(crate) fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    pub(crate) fn bytes(&mut self, n: usize) -> ReadResult<&'a [u8]> {
        if n > self.remaining() {
            return Err(format!(
                "unexpected end of file at byte {}: need {n} more bytes, {} left",
                self.pos,
                self.remaining()
            ));
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> ReadResult<[u8; N]> {
        let b = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> ReadResult<u8> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn i8(&mut self) -> ReadResult<i8> {
        Ok(i8::from_le_bytes(self.array()?))
    }
    pub(crate) fn u16(&mut self) -> ReadResult<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub(crate) fn i16(&mut self) -> ReadResult<i16> {
        Ok(i16::from_le_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> ReadResult<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn i32(&mut self) -> ReadResult<i32> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> ReadResult<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(crate) fn i64(&mut self) -> ReadResult<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub(crate) fn f32(&mut self) -> ReadResult<f32> {
        Ok(f32::from_le_bytes(self.array()?))
    }
    pub(crate) fn f64(&mut self) -> ReadResult<f64> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    /// A GGUF bool is one byte; llama.cpp treats any non-zero value as true.
    pub(crate) fn bool(&mut self) -> ReadResult<bool> {
        Ok(self.u8()? != 0)
    }

    /// A count or length stored as u64, checked to fit `usize` and to need no more than the
    /// remaining bytes at `min_elem_size` bytes per element. This is what keeps a forged
    /// length from triggering a huge allocation or a long loop.
    pub(crate) fn count(&mut self, min_elem_size: usize, what: &str) -> ReadResult<usize> {
        let at = self.pos;
        let n = self.u64()?;
        let n = usize::try_from(n).map_err(|_| format!("{what} {n} at byte {at} does not fit in memory"))?;
        let need = n.checked_mul(min_elem_size.max(1));
        match need {
            Some(need) if need <= self.remaining() => Ok(n),
            _ => Err(format!("{what} {n} at byte {at} is larger than the {} bytes left in the file", self.remaining())),
        }
    }

    /// Length-prefixed bytes, not yet decoded.
    pub(crate) fn raw_string(&mut self) -> ReadResult<&'a [u8]> {
        let n = self.count(1, "string length")?;
        self.bytes(n)
    }

    /// A string that must be UTF-8: keys and tensor names, which we match exactly.
    pub(crate) fn strict_string(&mut self, what: &str) -> ReadResult<String> {
        let at = self.pos;
        let raw = self.raw_string()?;
        std::str::from_utf8(raw).map(str::to_owned).map_err(|_| format!("{what} at byte {at} is not valid UTF-8"))
    }

    /// A metadata string value. llama.cpp does not validate these, and some vocabularies carry
    /// stray bytes, so invalid sequences become U+FFFD instead of failing the whole file.
    pub(crate) fn lossy_string(&mut self) -> ReadResult<String> {
        Ok(String::from_utf8_lossy(self.raw_string()?).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_bounds() {
        let data = [1u8, 0, 0, 0, 2];
        let mut r = Reader::new(&data);
        assert_eq!(r.u32().unwrap(), 1);
        assert!(r.u32().is_err());
        assert_eq!(r.u8().unwrap(), 2);
        assert!(r.u8().is_err());
    }

    #[test]
    fn count_is_capped_by_remaining_bytes() {
        let mut data = u64::MAX.to_le_bytes().to_vec();
        data.extend_from_slice(&[0; 4]);
        assert!(Reader::new(&data).count(1, "n").is_err());
        let mut data = 4u64.to_le_bytes().to_vec();
        data.extend_from_slice(&[0; 4]);
        assert_eq!(Reader::new(&data).count(1, "n").unwrap(), 4);
        assert!(Reader::new(&data).count(2, "n").is_err());
    }
}
