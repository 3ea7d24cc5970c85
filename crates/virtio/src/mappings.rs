//! A domain's translation structure: its mappings, each kept whole, in a B-tree keyed by IOVA.
//!
//! # Why a B-tree of mappings and not a radix page table
//! The spec's unit is the *mapping* (one MAP request), not the page: UNMAP must remove whole
//! mappings and refuse to split one, so the device has to remember every mapping's exact
//! boundaries whatever else it stores. A mapping may be any granule-aligned size up to the whole
//! 64-bit input range; a radix table would need up to about `2 * 511` entries per level to
//! describe one unaligned large mapping and would still need the mapping records beside it.
//! A `BTreeMap<virt_start, Mapping>` holds one entry per mapping, and because mappings never
//! overlap, the only candidate for any address is the last mapping starting at or below it:
//! translation, the overlap check of MAP and the boundary check of UNMAP are each one
//! `O(log n)` descent (a few cache lines per level, B = 11), with no page-sized bookkeeping.
//!
//! # Vocabulary
//! `end`/`last` are inclusive here, as in the spec (`virt_end`), so a mapping can end at
//! `u64::MAX`. Lengths are `end - start + 1` and only computed where they cannot overflow.

use std::collections::BTreeMap;

/// One MAP request's worth of translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First IOVA.
    pub virt_start: u64,
    /// Last IOVA (inclusive).
    pub virt_end: u64,
    /// Physical address of `virt_start`.
    pub phys_start: u64,
    /// `VIRTIO_IOMMU_MAP_F_*` flags as accepted by the device.
    pub flags: u32,
}

impl Mapping {
    /// Physical address of `iova`, which must lie inside the mapping.
    pub fn phys_of(&self, iova: u64) -> u64 {
        // Cannot overflow: MAP checked that phys_start + (virt_end - virt_start) fits.
        self.phys_start + (iova - self.virt_start)
    }
}

/// Why an UNMAP was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WouldSplit {
    /// Start of the mapping the range cuts through.
    pub mapping_start: u64,
}

/// The mappings of one domain, disjoint by construction.
#[derive(Clone, Debug, Default)]
pub struct Mappings {
    by_start: BTreeMap<u64, Mapping>,
}

impl Mappings {
    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.by_start.len()
    }

    /// Whether there are no mappings.
    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }

    /// The mapping containing `iova`, if any.
    pub fn lookup(&self, iova: u64) -> Option<&Mapping> {
        self.by_start
            .range(..=iova)
            .next_back()
            .map(|(_, m)| m)
            .filter(|m| m.virt_end >= iova)
    }

    /// Whether any mapping intersects `[start, end]`.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        // Mappings are disjoint, so the last one starting at or below `end` reaches furthest.
        self.by_start
            .range(..=end)
            .next_back()
            .is_some_and(|(_, m)| m.virt_end >= start)
    }

    /// Adds `mapping`; the caller has checked [`Mappings::overlaps`] first.
    pub fn insert(&mut self, mapping: Mapping) {
        debug_assert!(!self.overlaps(mapping.virt_start, mapping.virt_end));
        self.by_start.insert(mapping.virt_start, mapping);
    }

    /// Removes every mapping inside `[start, end]`, or none if the range would split one.
    ///
    /// Returns how many mappings were removed; a range covering nothing removes nothing and
    /// succeeds, as the spec's UNMAP examples (1), (6) and (7) require.
    pub fn unmap(&mut self, start: u64, end: u64) -> Result<usize, WouldSplit> {
        if let Some(m) = self.lookup(start) {
            if m.virt_start < start {
                return Err(WouldSplit {
                    mapping_start: m.virt_start,
                });
            }
        }
        if let Some(m) = self.lookup(end) {
            if m.virt_end > end {
                return Err(WouldSplit {
                    mapping_start: m.virt_start,
                });
            }
        }
        let doomed: Vec<u64> = self.by_start.range(start..=end).map(|(&k, _)| k).collect();
        for key in &doomed {
            self.by_start.remove(key);
        }
        Ok(doomed.len())
    }

    /// Removes and returns every mapping that starts inside `[start, end]`, whole, even when it
    /// reaches past `end` (a driver cannot ask the device to split it, so it unmaps all of it,
    /// as Linux's driver does). Fails without removing anything if a mapping starts before
    /// `start` and covers it.
    pub fn take_starting_in(&mut self, start: u64, end: u64) -> Result<Vec<Mapping>, WouldSplit> {
        if let Some(m) = self.lookup(start) {
            if m.virt_start < start {
                return Err(WouldSplit {
                    mapping_start: m.virt_start,
                });
            }
        }
        let keys: Vec<u64> = self.by_start.range(start..=end).map(|(&k, _)| k).collect();
        Ok(keys
            .iter()
            .filter_map(|k| self.by_start.remove(k))
            .collect())
    }

    /// Every mapping, in IOVA order.
    pub fn iter(&self) -> impl Iterator<Item = &Mapping> {
        self.by_start.values()
    }

    /// Mappings intersecting `[start, end]`, in IOVA order.
    pub fn intersecting(&self, start: u64, end: u64) -> impl Iterator<Item = &Mapping> {
        let first = self.lookup(start).map_or(start, |m| m.virt_start);
        self.by_start.range(first..=end).map(|(_, m)| m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(table: &mut Mappings, start: u64, end: u64) -> bool {
        if table.overlaps(start, end) {
            return false;
        }
        let phys_start = (start & 0xffff_ffff_ffff) + 0x1000_0000;
        table.insert(Mapping {
            virt_start: start,
            virt_end: end,
            phys_start,
            flags: 3,
        });
        true
    }

    // The spec's UNMAP examples, each from a blank address space.
    #[test]
    fn spec_unmap_example_1_unmapping_nothing_succeeds() {
        let mut t = Mappings::default();
        assert_eq!(t.unmap(0, 4), Ok(0));
    }

    #[test]
    fn spec_unmap_example_2_exact_range_unmaps() {
        let mut t = Mappings::default();
        assert!(map(&mut t, 0, 9));
        assert_eq!(t.unmap(0, 9), Ok(1));
        assert!(t.is_empty());
    }

    #[test]
    fn spec_unmap_example_3_two_adjacent_mappings_unmap_together() {
        let mut t = Mappings::default();
        assert!(map(&mut t, 0, 4) && map(&mut t, 5, 9));
        assert_eq!(t.unmap(0, 9), Ok(2));
    }

    #[test]
    fn spec_unmap_example_4_partial_unmap_fails_and_keeps_mapping() {
        let mut t = Mappings::default();
        assert!(map(&mut t, 0, 9));
        assert_eq!(t.unmap(0, 4), Err(WouldSplit { mapping_start: 0 }));
        assert_eq!(t.len(), 1);
        assert!(t.lookup(7).is_some());
    }

    #[test]
    fn spec_unmap_example_5_unmaps_only_first_of_two() {
        let mut t = Mappings::default();
        assert!(map(&mut t, 0, 4) && map(&mut t, 5, 9));
        assert_eq!(t.unmap(0, 4), Ok(1));
        assert!(t.lookup(2).is_none());
        assert!(t.lookup(5).is_some());
    }

    #[test]
    fn spec_unmap_example_6_range_may_spill_past_mapping() {
        let mut t = Mappings::default();
        assert!(map(&mut t, 0, 4));
        assert_eq!(t.unmap(0, 9), Ok(1));
    }

    #[test]
    fn spec_unmap_example_7_range_may_cover_gaps() {
        let mut t = Mappings::default();
        assert!(map(&mut t, 0, 4) && map(&mut t, 10, 14));
        assert_eq!(t.unmap(0, 14), Ok(2));
        assert!(t.is_empty());
    }

    #[test]
    fn unmap_ending_inside_a_mapping_fails() {
        let mut t = Mappings::default();
        assert!(map(&mut t, 10, 19));
        assert_eq!(t.unmap(0, 15), Err(WouldSplit { mapping_start: 10 }));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn mapping_may_end_at_the_top_of_the_address_space() {
        let mut t = Mappings::default();
        assert!(map(&mut t, u64::MAX - 0xfff, u64::MAX));
        assert!(t.lookup(u64::MAX).is_some());
        assert!(!map(&mut t, u64::MAX, u64::MAX));
        assert_eq!(t.unmap(0, u64::MAX), Ok(1));
    }

    #[test]
    fn intersecting_includes_mapping_straddling_the_start() {
        let mut t = Mappings::default();
        assert!(map(&mut t, 0, 9) && map(&mut t, 10, 19) && map(&mut t, 30, 39));
        let starts: Vec<u64> = t.intersecting(5, 30).map(|m| m.virt_start).collect();
        assert_eq!(starts, vec![0, 10, 30]);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Map(u64, u64),
        Unmap(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Page numbers in a small window so operations collide often.
        let range = (0u64..64, 1u64..8).prop_map(|(p, n)| (p * 0x1000, (p + n) * 0x1000 - 1));
        prop_oneof![
            range.clone().prop_map(|(s, e)| Op::Map(s, e)),
            range.prop_map(|(s, e)| Op::Unmap(s, e)),
        ]
    }

    proptest! {
        // The model: a map from page number to (mapping start, phys page), plus mapping extents.
        #[test]
        fn map_unmap_sequences_match_page_model(ops in proptest::collection::vec(op(), 1..80)) {
            let mut table = Mappings::default();
            let mut model: BTreeMap<u64, (u64, u64)> = BTreeMap::new(); // start -> (end, phys)
            for op in ops {
                match op {
                    Op::Map(s, e) => {
                        let clash = model.iter().any(|(&ms, &(me, _))| ms <= e && me >= s);
                        prop_assert_eq!(map(&mut table, s, e), !clash);
                        if !clash {
                            model.insert(s, (e, s + 0x1000_0000));
                        }
                    }
                    Op::Unmap(s, e) => {
                        let splits = model.iter().any(|(&ms, &(me, _))| {
                            ms <= e && me >= s && (ms < s || me > e)
                        });
                        let result = table.unmap(s, e);
                        prop_assert_eq!(result.is_err(), splits);
                        if !splits {
                            let before = model.len();
                            model.retain(|&ms, &mut (me, _)| !(ms >= s && me <= e));
                            prop_assert_eq!(result, Ok(before - model.len()));
                        }
                    }
                }
                for page in 0..72u64 {
                    let iova = page * 0x1000 + 0x123;
                    let expected = model
                        .iter()
                        .find(|(&ms, &(me, _))| ms <= iova && iova <= me)
                        .map(|(&ms, &(_, phys))| phys + (iova - ms));
                    prop_assert_eq!(table.lookup(iova).map(|m| m.phys_of(iova)), expected);
                }
            }
        }
    }
}
