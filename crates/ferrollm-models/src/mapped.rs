//! Read-only file mappings behind the loaders' weight bytes.

use std::fs::File;

use ferrollm_kernels::Backing;

/// A whole file mapped read-only.
pub(crate) struct MappedFile(memmap2::Mmap);

impl MappedFile {
    /// Maps `file` read-only.
    pub(crate) fn map(file: &File) -> std::io::Result<MappedFile> {
        // SAFETY: the mapping is read-only and we never hand out mutable access. As with every
        // mmap-based loader (llama.cpp included), another process truncating or rewriting the
        // file while it is mapped is outside what we can defend against; model files must not
        // be modified while ferrollm runs.
        Ok(MappedFile(unsafe { memmap2::Mmap::map(file) }?))
    }
}

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Backing for MappedFile {
    /// Drops the whole pages inside `range` from this process (after a repack copied them).
    fn release(&self, range: std::ops::Range<usize>) {
        const PAGE: usize = 4096;
        let (start, end) = (range.start.next_multiple_of(PAGE), range.end / PAGE * PAGE);
        if end > start {
            // SAFETY: MADV_DONTNEED on a read-only file mapping only unmaps clean pages: the next
            // read of any byte faults the same file contents back in, so every slice handed out
            // stays valid and unchanged. The range lies inside the mapping (`range` came from a
            // `Bytes` over it). A failure only means the pages stay resident.
            let _ = unsafe { self.0.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
        }
    }
}
