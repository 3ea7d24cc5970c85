//! The engine: one radix page table over a [`Format`], with the operations of
//! Linux's `iommu_domain_ops` (`map_pages`, `unmap_pages`, `iova_to_phys`)
//! and `iommu_dirty_ops` (`read_and_clear_dirty`).

use crate::error::{Error, Result};
use crate::format::{Entry, Format};
use crate::memory::{TableMemory, LEVEL_BITS, TABLE_ENTRIES};
use crate::prot::Prot;
use std::fmt;
use std::sync::{Mutex, MutexGuard};

/// Settings of one table tree beyond its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Page sizes the user of the table allows, ANDed with the format's own
    /// (Linux lets the core narrow a domain's `pgsize_bitmap` the same way).
    pub pgsize_mask: u64,
    /// Most tables (4 KiB each) the tree may hold at once; past it, map fails
    /// with [`Error::NoMemory`]. Caps what a caller can make us allocate.
    pub max_tables: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pgsize_mask: u64::MAX,
            // 1 GiB of tables: room for 512 GiB mapped in 4 KiB pages.
            max_tables: 1 << 18,
        }
    }
}

/// Whether [`PageTable::read_and_clear_dirty`] cleans what it reports
/// (Linux: the absence or presence of `IOMMU_DIRTY_NO_CLEAR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirtyMode {
    /// Report and clean.
    Clear,
    /// Report only (`IOMMU_DIRTY_NO_CLEAR`).
    Keep,
}

struct Inner {
    mem: TableMemory,
    /// Page number of the root table; fixed for the tree's life.
    root: usize,
}

/// A multi-level IOMMU page table in format `F`: Linux's `iommu_domain_ops`
/// (`map_pages`, `unmap_pages`, `iova_to_phys`) and `iommu_dirty_ops`
/// (`read_and_clear_dirty`) over tables in the engine's table memory.
///
/// # Model
/// All state lives in table memory: the root table and every lower table,
/// each a 512-entry array of PTEs in the format's bit layout. Nothing else
/// caches a translation, so what a test decodes from table memory is the
/// whole truth.
///
/// Vocabulary: `last` is inclusive, `len` is a byte count, `end` is never used
/// for addresses so that a range ending at `u64::MAX` needs no `+ 1`.
///
/// # Semantics (Linux's, from iommupt)
/// - **map** picks, for each step, the largest page size of the table's bitmap
///   that the IOVA, the output address and the remaining length allow (so
///   `pgsize` is a floor, not a promise). It fails with
///   [`Error::AlreadyMapped`] if any part of the range translates already;
///   empty lower tables under a new large leaf are freed. A failed map leaves
///   the translations as they were (the IOMMU core's `iommu_map()` undoes a
///   partial map; we do the same inside).
/// - **unmap** removes whole leaves from `iova` on and returns the bytes
///   removed. It stops at the first IOVA that does not translate, and refuses
///   (removes nothing further) a leaf whose start lies before `iova`. A leaf
///   that starts inside the range but ends after it is removed whole, so the
///   result may exceed the request. A lower table is freed when the unmapped
///   range covers its whole span; a table emptied by a smaller unmap stays
///   until a covering unmap, a larger leaf over it, or drop.
/// - **dirty**: a leaf is dirty if any of its PTE copies is; reading reports
///   the part of the leaf inside the range and, unless asked to keep it,
///   cleans every copy. (iommupt reports a leaf entered mid-way from the
///   range start for a whole leaf length, which the caller's bitmap then
///   clips; we clip at the leaf's end too.)
/// - Unlike iommupt, bad arguments to unmap are an `Err`, where Linux
///   answers "0 bytes unmapped".
///
/// # Locking
/// One mutex per table tree guards the table memory and the root; each
/// operation holds it from its first to its last PTE access, so `PageTable` is
/// `Send + Sync` and every operation is atomic with respect to the others.
/// Linux lets maps and unmaps of disjoint ranges run in parallel (the caller
/// holds range locks, new tables are installed with cmpxchg); serialising
/// them is a strict subset of those interleavings. Lock order: this mutex is
/// a leaf lock — nothing is called out while it is held except the dirty
/// callback, which must not re-enter the same table.
pub struct PageTable<F: Format> {
    format: F,
    pgsize_bitmap: u64,
    /// For each log2 page size in the bitmap, the level its leaves sit at.
    level_of_size: [u8; 64],
    inner: Mutex<Inner>,
}

impl<F: Format> fmt::Debug for PageTable<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageTable")
            .field("format", &self.format)
            .field("pgsize_bitmap", &format_args!("{:#x}", self.pgsize_bitmap))
            .field("live_tables", &self.live_tables())
            .finish()
    }
}

impl<F: Format> PageTable<F> {
    /// An empty table tree: just a zeroed root table.
    ///
    /// # Errors
    /// [`Error::BadConfig`] if the format's geometry is inconsistent or no page
    /// size survives `config.pgsize_mask`; [`Error::NoMemory`] if
    /// `config.max_tables` is 0.
    pub fn new(format: F, config: Config) -> Result<Self> {
        let top = format.top_level();
        let granule = format.granule_lg2();
        if top >= 8 || granule < 9 || format.va_bits() > 64 || format.oa_bits() > 64 {
            return Err(Error::BadConfig("geometry out of range"));
        }
        if format.va_bits() > granule + LEVEL_BITS * (top + 1) {
            return Err(Error::BadConfig("va_bits exceeds what the levels resolve"));
        }
        let mut pgsize_bitmap = 0;
        let mut level_of_size = [u8::MAX; 64];
        for level in 0..=top {
            let item_lg2 = granule + LEVEL_BITS * level;
            let sizes = format.leaf_sizes(level);
            if sizes & !(below(item_lg2 + LEVEL_BITS) & !below(item_lg2)) != 0 {
                return Err(Error::BadConfig("a leaf size does not fit its level"));
            }
            let sizes = sizes & config.pgsize_mask;
            let sizes = sizes & below(format.va_bits()) & below(format.oa_bits());
            for (lg2, slot) in level_of_size.iter_mut().enumerate() {
                if sizes & (1 << lg2) != 0 {
                    *slot = level as u8;
                }
            }
            pgsize_bitmap |= sizes;
        }
        if pgsize_bitmap == 0 {
            return Err(Error::BadConfig("no page size left"));
        }
        let mut mem = TableMemory::new(config.max_tables);
        let root = mem.alloc()?;
        Ok(PageTable {
            format,
            pgsize_bitmap,
            level_of_size,
            inner: Mutex::new(Inner { mem, root }),
        })
    }

    /// The format this tree is written in.
    pub fn format(&self) -> &F {
        &self.format
    }

    /// Page sizes map and unmap accept (Linux: the domain's `pgsize_bitmap`).
    pub fn pgsize_bitmap(&self) -> u64 {
        self.pgsize_bitmap
    }

    /// Physical address of the root table, as a device table entry would hold it.
    pub fn root_phys(&self) -> u64 {
        TableMemory::phys(self.lock().root)
    }

    /// Tables currently allocated, the root included.
    pub fn live_tables(&self) -> usize {
        self.lock().mem.live_tables()
    }

    /// The 8-byte word of table memory at `pa`, as the IOMMU's walker reads it.
    pub fn read_phys(&self, pa: u64) -> Option<u64> {
        self.lock().mem.read_u64(pa)
    }

    /// Maps `pgsize * pgcount` bytes at `iova` to `paddr`: Linux's
    /// `iommu_domain_ops::map_pages()` with the IOMMU core's all-or-nothing
    /// `iommu_map()` contract. Returns the bytes mapped (always the full length).
    ///
    /// # Errors
    /// In check order: [`Error::NoAccess`], [`Error::UnsupportedPageSize`],
    /// [`Error::ZeroLength`], [`Error::Overflow`], [`Error::Misaligned`],
    /// [`Error::IovaOutOfRange`], [`Error::PhysOutOfRange`], then
    /// [`Error::AlreadyMapped`] or [`Error::NoMemory`] from the walk.
    pub fn map_pages(
        &self,
        iova: u64,
        paddr: u64,
        pgsize: u64,
        pgcount: u64,
        prot: Prot,
    ) -> Result<u64> {
        if !prot.contains(Prot::READ) && !prot.contains(Prot::WRITE) {
            return Err(Error::NoAccess);
        }
        let len = self.checked_len(pgsize, pgcount)?;
        if (iova | paddr) & (pgsize - 1) != 0 {
            return Err(Error::Misaligned {
                iova,
                paddr,
                pgsize,
            });
        }
        self.check_iova_range(iova, len)?;
        let phys_last = paddr.checked_add(len - 1).ok_or(Error::Overflow)?;
        if phys_last & !below(self.format.oa_bits()) != 0 {
            return Err(Error::PhysOutOfRange {
                last: phys_last,
                oa_bits: self.format.oa_bits(),
            });
        }
        let mut inner = self.lock();
        let mut mapped = 0;
        match self.map_locked(&mut inner, iova, paddr, len, prot, &mut mapped) {
            Ok(()) => Ok(len),
            Err(err) => {
                if mapped > 0 {
                    let mut undone = 0;
                    let root = inner.root;
                    self.unmap_level(
                        &mut inner.mem,
                        self.format.top_level(),
                        root,
                        iova,
                        iova + (mapped - 1),
                        &mut undone,
                    );
                }
                Err(err)
            }
        }
    }

    /// Unmaps from `iova` on, up to `pgsize * pgcount` bytes: Linux's
    /// `iommu_domain_ops::unmap_pages()`. Returns the bytes unmapped, which is
    /// less when a hole (or a leaf starting before `iova`) stops it and more
    /// when the last leaf reaches past the range (see [`PageTable`]).
    ///
    /// # Errors
    /// [`Error::UnsupportedPageSize`], [`Error::ZeroLength`],
    /// [`Error::Overflow`], [`Error::Misaligned`], [`Error::IovaOutOfRange`]:
    /// Linux answers these by unmapping nothing.
    pub fn unmap_pages(&self, iova: u64, pgsize: u64, pgcount: u64) -> Result<u64> {
        let len = self.checked_len(pgsize, pgcount)?;
        if iova & (pgsize - 1) != 0 {
            return Err(Error::Misaligned {
                iova,
                paddr: 0,
                pgsize,
            });
        }
        let last = self.check_iova_range(iova, len)?;
        let mut inner = self.lock();
        let root = inner.root;
        let mut unmapped = 0;
        self.unmap_level(
            &mut inner.mem,
            self.format.top_level(),
            root,
            iova,
            last,
            &mut unmapped,
        );
        Ok(unmapped)
    }

    /// The output address `iova` translates to, with its offset inside the
    /// page: Linux's `iova_to_phys()` (which answers 0 where we answer `None`).
    pub fn iova_to_phys(&self, iova: u64) -> Option<u64> {
        if iova & !below(self.format.va_bits()) != 0 {
            return None;
        }
        let inner = self.lock();
        let (page, level, index) = self.find_leaf(&inner, iova)?;
        match self.format.decode(level, inner.mem.get(page, index)) {
            Entry::Leaf { oa, size_lg2 } => Some(oa + (iova & below(size_lg2))),
            _ => None,
        }
    }

    /// Reports every dirty leaf in `[iova, iova + size)` to `record(iova, len)`
    /// (clipped to the range) and, with [`DirtyMode::Clear`], cleans it:
    /// Linux's `iommu_dirty_ops::read_and_clear_dirty()`.
    ///
    /// `record` runs under the table lock; it must not call back into this table.
    ///
    /// # Errors
    /// [`Error::DirtyUnsupported`], [`Error::ZeroLength`], [`Error::Overflow`],
    /// [`Error::IovaOutOfRange`].
    pub fn read_and_clear_dirty(
        &self,
        iova: u64,
        size: u64,
        mode: DirtyMode,
        mut record: impl FnMut(u64, u64),
    ) -> Result<()> {
        if !self.format.tracks_dirty() {
            return Err(Error::DirtyUnsupported);
        }
        if size == 0 {
            return Err(Error::ZeroLength);
        }
        let last = self.check_iova_range(iova, size)?;
        let mut inner = self.lock();
        let root = inner.root;
        self.dirty_level(
            &mut inner.mem,
            self.format.top_level(),
            root,
            iova,
            last,
            mode,
            &mut record,
        );
        Ok(())
    }

    /// Marks the leaf PTE translating `iova` dirty, as hardware does on a DMA
    /// write (iommupt's `set_dirty()`, used by the selftest's `DIRTY` test op).
    /// Only the PTE copy that covers `iova` changes.
    ///
    /// # Errors
    /// [`Error::DirtyUnsupported`] (format, or a leaf that cannot be written),
    /// [`Error::IovaOutOfRange`], [`Error::NotMapped`].
    pub fn set_dirty(&self, iova: u64) -> Result<()> {
        if !self.format.tracks_dirty() {
            return Err(Error::DirtyUnsupported);
        }
        self.check_iova_range(iova, 1)?;
        let mut inner = self.lock();
        let (page, _, index) = self.find_leaf(&inner, iova).ok_or(Error::NotMapped(iova))?;
        let pte = inner.mem.get(page, index);
        let dirty = self.format.dirtied(pte).ok_or(Error::DirtyUnsupported)?;
        inner.mem.set(page, index, dirty);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic never leaves a half-written tree (every write is one PTE or
        // a fill of one leaf group), so a poisoned lock still guards valid state.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `pgsize * pgcount`, after checking `pgsize` against the bitmap.
    fn checked_len(&self, pgsize: u64, pgcount: u64) -> Result<u64> {
        if !pgsize.is_power_of_two() || self.pgsize_bitmap & pgsize == 0 {
            return Err(Error::UnsupportedPageSize(pgsize));
        }
        if pgcount == 0 {
            return Err(Error::ZeroLength);
        }
        pgsize.checked_mul(pgcount).ok_or(Error::Overflow)
    }

    /// The last IOVA of a non-empty range, if it fits the input space.
    fn check_iova_range(&self, iova: u64, len: u64) -> Result<u64> {
        let last = iova.checked_add(len - 1).ok_or(Error::Overflow)?;
        if last & !below(self.format.va_bits()) != 0 {
            return Err(Error::IovaOutOfRange {
                last,
                va_bits: self.format.va_bits(),
            });
        }
        Ok(last)
    }

    #[inline]
    fn item_lg2(&self, level: u32) -> u32 {
        self.format.granule_lg2() + LEVEL_BITS * level
    }

    #[inline]
    fn index(&self, iova: u64, level: u32) -> usize {
        ((iova >> self.item_lg2(level)) as usize) & (TABLE_ENTRIES - 1)
    }

    /// IOVA translated by entry 0 of the table at `level` that covers `iova`.
    #[inline]
    fn table_base(&self, iova: u64, level: u32) -> u64 {
        iova & !below(self.item_lg2(level) + LEVEL_BITS)
    }

    /// The largest page size of the bitmap that `iova`, `oa` and `remaining` allow.
    #[inline]
    fn best_size(&self, iova: u64, oa: u64, remaining: u64) -> u32 {
        let align_lg2 = (iova | oa).trailing_zeros();
        let len_lg2 = 63 - remaining.leading_zeros();
        let fits = self.pgsize_bitmap & below(align_lg2.min(len_lg2) + 1);
        // Non-zero: the caller checked that pgsize (in the bitmap) divides all three.
        63 - fits.leading_zeros()
    }

    fn map_locked(
        &self,
        inner: &mut Inner,
        iova: u64,
        paddr: u64,
        len: u64,
        prot: Prot,
        mapped: &mut u64,
    ) -> Result<()> {
        let (mut va, mut oa, mut remaining) = (iova, paddr, len);
        loop {
            let mut size_lg2 = self.best_size(va, oa, remaining);
            let level = u32::from(self.level_of_size[size_lg2 as usize]);
            let page = self.walk_alloc(inner, va, level)?;
            let mut index = self.index(va, level);
            // Fill this table while the leaves stay at this level.
            loop {
                let copies = 1usize << (size_lg2 - self.item_lg2(level));
                let leaves = if copies == 1 {
                    self.fill_run(
                        &mut inner.mem,
                        page,
                        level,
                        index,
                        va,
                        oa,
                        size_lg2,
                        remaining,
                        prot,
                    )
                } else {
                    0
                };
                // An occupied slot (or a multi-entry leaf) takes the careful path.
                let leaves = if leaves == 0 {
                    self.install_leaf(
                        &mut inner.mem,
                        page,
                        level,
                        index,
                        copies,
                        va,
                        oa,
                        size_lg2,
                        prot,
                    )?;
                    1
                } else {
                    leaves
                };
                let bytes = leaves << size_lg2;
                *mapped += bytes;
                remaining -= bytes;
                if remaining == 0 {
                    return Ok(());
                }
                va += bytes;
                oa += bytes;
                index += leaves as usize * copies;
                if index >= TABLE_ENTRIES {
                    break;
                }
                size_lg2 = self.best_size(va, oa, remaining);
                if u32::from(self.level_of_size[size_lg2 as usize]) != level {
                    break;
                }
            }
        }
    }

    /// Writes single-entry leaves of `2^size_lg2` bytes into empty slots from
    /// `index` on, for as long as that stays the best size: until the range or
    /// the table ends, a slot is occupied, or `iova` reaches the alignment of
    /// the next larger page size. Returns the leaves written (0 if the first
    /// slot is occupied).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn fill_run(
        &self,
        mem: &mut TableMemory,
        page: usize,
        level: u32,
        index: usize,
        iova: u64,
        oa: u64,
        size_lg2: u32,
        remaining: u64,
        prot: Prot,
    ) -> u64 {
        let larger = self.pgsize_bitmap & !below(size_lg2 + 1);
        let mut leaves = remaining >> size_lg2;
        if larger != 0 {
            let next_lg2 = larger.trailing_zeros();
            let to_boundary = (below(next_lg2) - (iova & below(next_lg2))) + 1;
            leaves = leaves.min(to_boundary >> size_lg2);
        }
        let leaves = (leaves as usize).min(TABLE_ENTRIES - index);
        let slots = &mut mem.table_mut(page)[index..index + leaves];
        let mut written = 0;
        for slot in slots.iter_mut() {
            if *slot != 0 {
                break;
            }
            *slot = self
                .format
                .leaf_entry(level, oa + (written << size_lg2), size_lg2, prot);
            written += 1;
        }
        written
    }

    /// The table at `level` that translates `iova`, allocating missing tables.
    fn walk_alloc(&self, inner: &mut Inner, iova: u64, level: u32) -> Result<usize> {
        let mut page = inner.root;
        let mut at = self.format.top_level();
        while at > level {
            let index = self.index(iova, at);
            page = match self.format.decode(at, inner.mem.get(page, index)) {
                Entry::Table { pa } => TableMemory::page_of(pa),
                Entry::Empty => {
                    let new = inner.mem.alloc()?;
                    let pte = self.format.table_entry(at, TableMemory::phys(new));
                    inner.mem.set(page, index, pte);
                    new
                }
                Entry::Leaf { .. } => return Err(Error::AlreadyMapped(iova)),
            };
            at -= 1;
        }
        Ok(page)
    }

    /// Installs one leaf (all its copies) at `index`, first freeing lower
    /// tables under it that hold no leaf; anything mapped there is
    /// [`Error::AlreadyMapped`] and nothing is written.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn install_leaf(
        &self,
        mem: &mut TableMemory,
        page: usize,
        level: u32,
        index: usize,
        copies: usize,
        iova: u64,
        oa: u64,
        size_lg2: u32,
        prot: Prot,
    ) -> Result<()> {
        let item_lg2 = self.item_lg2(level);
        let mut has_tables = false;
        for (n, &pte) in mem.table(page)[index..index + copies].iter().enumerate() {
            if pte == 0 {
                continue;
            }
            let at = iova + ((n as u64) << item_lg2);
            match self.format.decode(level, pte) {
                Entry::Empty => {}
                Entry::Leaf { .. } => return Err(Error::AlreadyMapped(at)),
                Entry::Table { pa } => {
                    if let Some(found) =
                        self.first_leaf(mem, level - 1, TableMemory::page_of(pa), at)
                    {
                        return Err(Error::AlreadyMapped(found));
                    }
                    has_tables = true;
                }
            }
        }
        if has_tables {
            for n in index..index + copies {
                if let Entry::Table { pa } = self.format.decode(level, mem.get(page, n)) {
                    self.free_tree(mem, level - 1, TableMemory::page_of(pa));
                }
            }
        }
        let pte = self.format.leaf_entry(level, oa, size_lg2, prot);
        mem.table_mut(page)[index..index + copies].fill(pte);
        Ok(())
    }

    /// IOVA of the first leaf under the table at `level` whose entry 0 is at `base`.
    fn first_leaf(&self, mem: &TableMemory, level: u32, page: usize, base: u64) -> Option<u64> {
        let item_lg2 = self.item_lg2(level);
        mem.table(page).iter().enumerate().find_map(|(n, &pte)| {
            let at = base + ((n as u64) << item_lg2);
            match self.format.decode(level, pte) {
                Entry::Empty => None,
                Entry::Leaf { .. } => Some(at),
                Entry::Table { pa } => {
                    self.first_leaf(mem, level - 1, TableMemory::page_of(pa), at)
                }
            }
        })
    }

    /// Frees the table at `level` and every table below it.
    fn free_tree(&self, mem: &mut TableMemory, level: u32, page: usize) {
        if level > 0 {
            for n in 0..TABLE_ENTRIES {
                if let Entry::Table { pa } = self.format.decode(level, mem.get(page, n)) {
                    self.free_tree(mem, level - 1, TableMemory::page_of(pa));
                }
            }
        }
        mem.free(page);
    }

    /// (table page, level, index) of the leaf PTE translating `iova`.
    fn find_leaf(&self, inner: &Inner, iova: u64) -> Option<(usize, u32, usize)> {
        let mut page = inner.root;
        let mut level = self.format.top_level();
        loop {
            let index = self.index(iova, level);
            match self.format.decode(level, inner.mem.get(page, index)) {
                Entry::Empty => return None,
                Entry::Leaf { .. } => return Some((page, level, index)),
                Entry::Table { pa } if level > 0 => page = TableMemory::page_of(pa),
                Entry::Table { .. } => return None,
            }
            level -= 1;
        }
    }

    /// Unmaps `[iova, last]` inside the table at `level`; adds the bytes
    /// removed to `unmapped`. Returns false where unmapping had to stop.
    fn unmap_level(
        &self,
        mem: &mut TableMemory,
        level: u32,
        page: usize,
        iova: u64,
        last: u64,
        unmapped: &mut u64,
    ) -> bool {
        let item_lg2 = self.item_lg2(level);
        let first = self.index(iova, level);
        let end = self.index(last, level);
        let base = self.table_base(iova, level);
        let mut index = first;
        while index <= end {
            let entry_start = base + ((index as u64) << item_lg2);
            let from = if index == first { iova } else { entry_start };
            match self.format.decode(level, mem.get(page, index)) {
                Entry::Empty => return false,
                Entry::Leaf { size_lg2, .. } => {
                    if from & below(size_lg2) != 0 {
                        // The leaf began before the range: Linux never splits it.
                        return false;
                    }
                    // Clear this leaf and the leaves right after it in one pass;
                    // each of those starts on its own boundary.
                    let table = mem.table_mut(page);
                    let mut size_lg2 = size_lg2;
                    loop {
                        let copies = 1usize << (size_lg2 - item_lg2);
                        if copies == 1 {
                            table[index] = 0;
                        } else {
                            table[index..index + copies].fill(0);
                        }
                        *unmapped += 1u64 << size_lg2;
                        index += copies;
                        if index > end {
                            break;
                        }
                        match self.format.decode(level, table[index]) {
                            Entry::Leaf { size_lg2: next, .. } => size_lg2 = next,
                            _ => break,
                        }
                    }
                }
                Entry::Table { pa } => {
                    let child = TableMemory::page_of(pa);
                    let entry_last = entry_start + below(item_lg2);
                    let child_last = last.min(entry_last);
                    if level == 0
                        || !self.unmap_level(mem, level - 1, child, from, child_last, unmapped)
                    {
                        return false;
                    }
                    if from == entry_start && child_last == entry_last {
                        mem.set(page, index, 0);
                        mem.free(child);
                    }
                    index += 1;
                }
            }
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn dirty_level(
        &self,
        mem: &mut TableMemory,
        level: u32,
        page: usize,
        iova: u64,
        last: u64,
        mode: DirtyMode,
        record: &mut dyn FnMut(u64, u64),
    ) {
        let item_lg2 = self.item_lg2(level);
        let first = self.index(iova, level);
        let end = self.index(last, level);
        let base = self.table_base(iova, level);
        let mut index = first;
        while index <= end {
            let pte = mem.get(page, index);
            if pte == 0 {
                index += 1;
                continue;
            }
            match self.format.decode(level, pte) {
                Entry::Empty => index += 1,
                Entry::Table { pa } => {
                    let entry_start = base + ((index as u64) << item_lg2);
                    let from = iova.max(entry_start);
                    let to = last.min(entry_start + below(item_lg2));
                    if level > 0 {
                        self.dirty_level(
                            mem,
                            level - 1,
                            TableMemory::page_of(pa),
                            from,
                            to,
                            mode,
                            record,
                        );
                    }
                    index += 1;
                }
                Entry::Leaf { size_lg2, .. } => {
                    let copies = 1usize << (size_lg2 - item_lg2);
                    let group = index & !(copies - 1);
                    let ptes = &mut mem.table_mut(page)[group..group + copies];
                    if ptes.iter().any(|&pte| self.format.is_dirty(pte)) {
                        let leaf_start = base + ((group as u64) << item_lg2);
                        let from = iova.max(leaf_start);
                        let to = last.min(leaf_start + below(size_lg2));
                        record(from, to - from + 1);
                        if mode == DirtyMode::Clear {
                            for pte in ptes.iter_mut() {
                                *pte = self.format.cleaned(*pte);
                            }
                        }
                    }
                    index = group + copies;
                }
            }
        }
    }
}

/// All bits below bit `lg2` (`u64::MAX` for 64 and up).
#[inline]
pub(crate) const fn below(lg2: u32) -> u64 {
    if lg2 >= 64 {
        u64::MAX
    } else {
        (1u64 << lg2) - 1
    }
}
