//! Table memory: the "physical" pages the engine's tables live in.
//!
//! Tables are 4 KiB arrays of 512 64-bit PTEs, addressed by a physical
//! address as hardware would see them: a table entry holds the physical
//! address of the next table, and a test walks the tree the way an IOMMU's
//! table walker reads memory, through
//! [`PageTable::read_phys`](crate::PageTable::read_phys). Freed tables are
//! zeroed and reused. The allocator never hands out physical address 0.

use crate::error::{Error, Result};

/// Entries per table: 4 KiB of 8-byte PTEs, the table size of every format here.
pub const TABLE_ENTRIES: usize = 512;
/// log2 of [`TABLE_ENTRIES`]: the IOVA bits one table level resolves.
pub const LEVEL_BITS: u32 = 9;
/// Bytes per table.
pub const TABLE_BYTES: u64 = (TABLE_ENTRIES * 8) as u64;
/// Physical address of the first table page (any 4 KiB-aligned non-zero value works).
pub const PHYS_BASE: u64 = 0x1000_0000;

/// A pool of table pages. Not shared: the [`PageTable`](crate::PageTable) that
/// owns it guards it with its lock.
pub(crate) struct TableMemory {
    /// All table pages back to back; page `n` starts at word `n * TABLE_ENTRIES`.
    words: Vec<u64>,
    /// Pages free for reuse (already zeroed).
    free: Vec<usize>,
    /// Pages in use.
    live: usize,
    /// Cap on pages in use, so a caller cannot grow memory without bound.
    limit: usize,
}

impl std::fmt::Debug for TableMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableMemory")
            .field("live", &self.live)
            .field("free", &self.free.len())
            .field("limit", &self.limit)
            .finish()
    }
}

impl TableMemory {
    /// An empty pool that will hold at most `limit` tables at once.
    pub(crate) fn new(limit: usize) -> Self {
        TableMemory {
            words: Vec::new(),
            free: Vec::new(),
            live: 0,
            limit,
        }
    }

    /// A zeroed table; returns its page number.
    pub(crate) fn alloc(&mut self) -> Result<usize> {
        if self.live >= self.limit {
            return Err(Error::NoMemory);
        }
        let page = match self.free.pop() {
            Some(page) => page,
            None => {
                let page = self.words.len() / TABLE_ENTRIES;
                self.words.resize(self.words.len() + TABLE_ENTRIES, 0);
                page
            }
        };
        self.live += 1;
        Ok(page)
    }

    /// Returns a table to the pool, zeroing it for its next user.
    pub(crate) fn free(&mut self, page: usize) {
        self.table_mut(page).fill(0);
        self.free.push(page);
        self.live -= 1;
    }

    /// Physical address of a table page.
    pub(crate) fn phys(page: usize) -> u64 {
        PHYS_BASE + page as u64 * TABLE_BYTES
    }

    /// Page number of the table at physical address `pa`.
    ///
    /// Table addresses come only from entries this engine wrote, so `pa` is
    /// always one of ours; `TableMemory::page_of` is not an input validator.
    pub(crate) fn page_of(pa: u64) -> usize {
        ((pa - PHYS_BASE) / TABLE_BYTES) as usize
    }

    #[inline]
    pub(crate) fn table(&self, page: usize) -> &[u64] {
        &self.words[page * TABLE_ENTRIES..(page + 1) * TABLE_ENTRIES]
    }

    #[inline]
    pub(crate) fn table_mut(&mut self, page: usize) -> &mut [u64] {
        &mut self.words[page * TABLE_ENTRIES..(page + 1) * TABLE_ENTRIES]
    }

    #[inline]
    pub(crate) fn get(&self, page: usize, index: usize) -> u64 {
        self.words[page * TABLE_ENTRIES + index]
    }

    #[inline]
    pub(crate) fn set(&mut self, page: usize, index: usize, pte: u64) {
        self.words[page * TABLE_ENTRIES + index] = pte;
    }

    /// Tables in use.
    pub(crate) fn live_tables(&self) -> usize {
        self.live
    }

    /// The 8-byte word at physical address `pa`, as a table walker would read
    /// it; `None` outside table memory or when `pa` is not 8-byte aligned.
    pub(crate) fn read_u64(&self, pa: u64) -> Option<u64> {
        if !pa.is_multiple_of(8) {
            return None;
        }
        let word = pa.checked_sub(PHYS_BASE)? / 8;
        self.words.get(usize::try_from(word).ok()?).copied()
    }
}
