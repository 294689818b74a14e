//! Merkle tree hashing, inclusion proofs and consistency proofs of RFC 9162
//! (Certificate Transparency v2, §2.1), the tree behind the audit ledger.
//!
//! Leaves are hashed as `SHA-256(0x00 || data)` and interior nodes as
//! `SHA-256(0x01 || left || right)`, so a leaf can never pass for a node. A tree
//! of `n > 1` leaves splits at the largest power of two `k < n`; the last node
//! of a level is never duplicated. The empty tree hashes to `SHA-256("")`.
//!
//! Roots are computed bottom-up with a stack of complete subtrees, so no level
//! of the tree is ever held in memory. Above a grain of work, subtrees are
//! split at the same power-of-two boundaries as the tree itself and hashed on
//! rayon's pool: many small leaves are cut into a few large chunks, large
//! leaves are hashed one per task.

use rayon::join;
use sha2::{Digest, Sha256};

use crate::error::{CoreError, Result};

/// Length of every hash of the tree.
pub const HASH_LEN: usize = 32;

/// A SHA-256 digest: a leaf hash, a node hash or a root.
pub type Hash = [u8; HASH_LEN];

const LEAF_PREFIX: u8 = 0x00;
const NODE_PREFIX: u8 = 0x01;

/// Bytes of leaf data (plus a node's worth per leaf) below which a subtree is
/// hashed on the current thread: handing it to another one would cost more
/// than it saves.
const PARALLEL_GRAIN_BYTES: usize = 256 * 1024;

/// Hash of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([LEAF_PREFIX]);
    hasher.update(data);
    hasher.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    hash_children(left, right)
}

fn hash_children(left: &[u8], right: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([NODE_PREFIX]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// Largest power of two strictly below `n` (for `n >= 2`): where a tree of
/// `n` leaves splits into its left and right subtrees.
fn split_point(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// Root of the tree over `leaves` (RFC 9162 MTH).
pub fn root<L: AsRef<[u8]> + Sync>(leaves: &[L]) -> Hash {
    if leaves.is_empty() {
        return empty_root();
    }
    subtree_root(leaves, grain(leaves))
}

/// Number of leaves worth handing to another thread.
fn grain<L: AsRef<[u8]>>(leaves: &[L]) -> usize {
    let bytes: usize = leaves.iter().map(|leaf| leaf.as_ref().len()).sum();
    // A leaf costs its bytes plus about one 64-byte block of node hashing.
    let per_leaf = bytes / leaves.len() + 64;
    (PARALLEL_GRAIN_BYTES / per_leaf).max(1)
}

/// Root of a non-empty subtree; splits across threads while a half is still
/// more than `grain` leaves.
fn subtree_root<L: AsRef<[u8]> + Sync>(leaves: &[L], grain: usize) -> Hash {
    let n = leaves.len();
    if n <= grain {
        return sequential_root(leaves);
    }
    let (left, right) = leaves.split_at(split_point(n));
    let (left, right) = join(|| subtree_root(left, grain), || subtree_root(right, grain));
    node_hash(&left, &right)
}

/// Root of a non-empty subtree on the current thread.
///
/// Keeps one hash per complete subtree seen so far (at most one per bit of
/// the leaf count). After leaf `i` is pushed, the trailing one bits of `i`
/// say how many pairs it completes. Folding what is left from the right gives
/// the split-at-a-power-of-two shape of RFC 9162.
fn sequential_root<L: AsRef<[u8]>>(leaves: &[L]) -> Hash {
    let mut stack: Vec<Hash> = Vec::with_capacity(usize::BITS as usize);
    for (i, leaf) in leaves.iter().enumerate() {
        let mut hash = leaf_hash(leaf.as_ref());
        for _ in 0..i.trailing_ones() {
            let left = stack.pop().expect("a completed pair has a left half");
            hash = node_hash(&left, &hash);
        }
        stack.push(hash);
    }
    let mut hash = stack.pop().expect("subtree has at least one leaf");
    while let Some(left) = stack.pop() {
        hash = node_hash(&left, &hash);
    }
    hash
}

/// Audit path of leaf `index` (RFC 9162 §2.1.3.1), from the leaf's sibling up
/// to the root's child.
pub fn inclusion_proof<L: AsRef<[u8]> + Sync>(leaves: &[L], index: usize) -> Result<Vec<Hash>> {
    if index >= leaves.len() {
        return Err(CoreError::InvalidArgument(format!(
            "leaf index {index} is out of range for a tree of {} leaves",
            leaves.len()
        )));
    }
    let grain = grain(leaves);
    // Walk down from the root collecting the sibling of every subtree that
    // holds the leaf; the proof lists them bottom-up.
    let mut siblings = Vec::new();
    let (mut subtree, mut m) = (leaves, index);
    while subtree.len() > 1 {
        let k = split_point(subtree.len());
        let (left, right) = subtree.split_at(k);
        if m < k {
            siblings.push(subtree_root(right, grain));
            subtree = left;
        } else {
            siblings.push(subtree_root(left, grain));
            subtree = right;
            m -= k;
        }
    }
    siblings.reverse();
    Ok(siblings)
}

/// The root and every leaf's audit path ([`inclusion_proof`] of each index), from
/// one pass over the tree: O(n) hashes where n separate proofs take O(n log n)
/// (an aggregator that signs one root for a whole batch of messages hands each
/// recipient its path). Levels are built bottom-up, an unpaired last node moving
/// up a level unhashed, which gives RFC 9162's split-at-a-power-of-two tree.
pub fn root_and_inclusion_proofs<L: AsRef<[u8]>>(leaves: &[L]) -> (Hash, Vec<Vec<Hash>>) {
    if leaves.is_empty() {
        return (empty_root(), Vec::new());
    }
    let mut level: Vec<Hash> = leaves.iter().map(|l| leaf_hash(l.as_ref())).collect();
    let mut proofs: Vec<Vec<Hash>> = vec![Vec::new(); leaves.len()];
    // `pos[i]`: where leaf i's ancestor sits in the current level.
    let mut pos: Vec<usize> = (0..leaves.len()).collect();
    while level.len() > 1 {
        for (proof, p) in proofs.iter_mut().zip(pos.iter_mut()) {
            let sibling = *p ^ 1;
            if sibling < level.len() {
                proof.push(level[sibling]);
            }
            *p /= 2;
        }
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => node_hash(left, right),
                [single] => *single,
                _ => unreachable!("chunks of two"),
            })
            .collect();
    }
    (level[0], proofs)
}

/// Proof that the first `old_size` leaves form a prefix of `leaves` (RFC 9162
/// §2.1.4.1). Empty when `old_size` is 0 or the whole tree.
pub fn consistency_proof<L: AsRef<[u8]> + Sync>(
    leaves: &[L],
    old_size: usize,
) -> Result<Vec<Hash>> {
    if old_size > leaves.len() {
        return Err(CoreError::InvalidArgument(format!(
            "old tree size {old_size} exceeds the tree's {} leaves",
            leaves.len()
        )));
    }
    if old_size == 0 {
        return Ok(Vec::new());
    }
    let grain = grain(leaves);
    // SUBPROOF(m, D[n], b) walked down iteratively: `whole_old_tree` is b,
    // true while the subtree's prefix of m leaves is the old tree itself.
    let mut siblings = Vec::new();
    let (mut subtree, mut m, mut whole_old_tree) = (leaves, old_size, true);
    while m < subtree.len() {
        let k = split_point(subtree.len());
        let (left, right) = subtree.split_at(k);
        if m <= k {
            siblings.push(subtree_root(right, grain));
            subtree = left;
        } else {
            siblings.push(subtree_root(left, grain));
            subtree = right;
            m -= k;
            whole_old_tree = false;
        }
    }
    if !whole_old_tree {
        siblings.push(subtree_root(subtree, grain));
    }
    siblings.reverse();
    Ok(siblings)
}

/// Root that an inclusion proof leads to (RFC 9162 §2.1.3.2), or `None` when
/// the proof does not fit a leaf at `index` of a tree of `tree_size`.
pub fn root_from_inclusion_proof(
    leaf_hash: &Hash,
    index: u64,
    tree_size: u64,
    proof: &[Hash],
) -> Option<Hash> {
    if index >= tree_size {
        return None;
    }
    let (mut f, mut s) = (index, tree_size - 1);
    let mut hash = *leaf_hash;
    for sibling in proof {
        if s == 0 {
            return None;
        }
        if f & 1 == 1 || f == s {
            hash = node_hash(sibling, &hash);
            // A right-edge node with no sibling on this level moves up as is.
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        f >>= 1;
        s >>= 1;
    }
    (s == 0).then_some(hash)
}

/// Whether `proof` shows that `leaf_hash` is leaf `index` of the tree of
/// `tree_size` leaves with root `root`.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    tree_size: u64,
    proof: &[Hash],
    root: &Hash,
) -> bool {
    root_from_inclusion_proof(leaf_hash, index, tree_size, proof).as_ref() == Some(root)
}

/// Whether `proof` shows that the tree of `old_size` leaves with root
/// `old_root` is a prefix of the tree of `new_size` leaves with root
/// `new_root` (RFC 9162 §2.1.4.2).
///
/// Equal sizes need an empty proof and equal roots; the empty tree (size 0,
/// root `SHA-256("")`) is a prefix of every tree, with an empty proof.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    if old_size == 0 {
        return proof.is_empty() && *old_root == empty_root();
    }
    let mut path = proof.iter();
    // When the old tree is a complete subtree of the new one, the proof leaves
    // out its root: the verifier already has it.
    let start = if old_size.is_power_of_two() {
        if proof.is_empty() {
            return false;
        }
        *old_root
    } else {
        match path.next() {
            Some(hash) => *hash,
            None => return false,
        }
    };
    let (mut f, mut s) = (old_size - 1, new_size - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut old_hash, mut new_hash) = (start, start);
    for sibling in path {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            old_hash = node_hash(sibling, &old_hash);
            new_hash = node_hash(sibling, &new_hash);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            new_hash = node_hash(&new_hash, sibling);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && old_hash == *old_root && new_hash == *new_root
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::unhex;

    fn h(text: &str) -> Hash {
        unhex(text).try_into().unwrap()
    }

    #[test]
    fn all_proofs_at_once_equal_one_at_a_time() {
        for n in 0..=70usize {
            let leaves: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; i % 5]).collect();
            let (root_all, proofs) = root_and_inclusion_proofs(&leaves);
            assert_eq!(root_all, root(&leaves), "root of {n}");
            assert_eq!(proofs.len(), n);
            for (i, proof) in proofs.iter().enumerate() {
                assert_eq!(
                    *proof,
                    inclusion_proof(&leaves, i).unwrap(),
                    "proof {i} of {n}"
                );
            }
        }
    }

    // RFC 6962 test inputs and roots as published by google/certificate-transparency
    // and transparency-dev/merkle (`tests/data/rfc6962/rfc6962_merkle_vectors.json`).
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn leaves() -> Vec<Vec<u8>> {
        LEAVES.iter().map(|l| unhex(l)).collect()
    }

    /// MTH exactly as RFC 9162 §2.1.1 defines it, recursively.
    fn reference_root(leaves: &[Vec<u8>]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = split_point(n);
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    fn numbered_leaves(n: usize, len: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let mut leaf = vec![(i % 251) as u8; len];
                leaf[..8.min(len)].copy_from_slice(&(i as u64).to_le_bytes()[..8.min(len)]);
                leaf
            })
            .collect()
    }

    #[test]
    fn hasher_known_answers() {
        assert_eq!(empty_root(), h(ROOTS[0]));
        assert_eq!(
            leaf_hash(b"L123456"),
            h("395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56")
        );
        // The published node answer hashes two 4-byte children.
        assert_eq!(
            hash_children(b"N123", b"N456"),
            h("aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb")
        );
    }

    #[test]
    fn roots_of_every_prefix_match_published_roots() {
        let leaves = leaves();
        for (size, want) in ROOTS.iter().enumerate() {
            assert_eq!(root(&leaves[..size]), h(want), "tree of {size} leaves");
        }
    }

    #[test]
    fn split_point_is_largest_power_of_two_below() {
        let cases = [
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 4),
            (8, 4),
            (9, 8),
            (1 << 20, 1 << 19),
        ];
        for (n, k) in cases {
            assert_eq!(split_point(n), k, "n = {n}");
        }
    }

    #[test]
    fn published_inclusion_proofs() {
        let leaves = leaves();
        let cases: [(usize, usize, &[&str]); 5] = [
            (0, 1, &[]),
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                1,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (index, size, want) in cases {
            let want: Vec<Hash> = want.iter().map(|p| h(p)).collect();
            let proof = inclusion_proof(&leaves[..size], index).unwrap();
            assert_eq!(proof, want, "leaf {index} of {size}");
            let leaf = leaf_hash(&leaves[index]);
            let root = h(ROOTS[size]);
            assert!(verify_inclusion(
                &leaf,
                index as u64,
                size as u64,
                &proof,
                &root
            ));
        }
    }

    #[test]
    fn published_consistency_proofs() {
        let leaves = leaves();
        let cases: [(usize, usize, &[&str]); 5] = [
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
            (
                6,
                7,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (old, new, want) in cases {
            let want: Vec<Hash> = want.iter().map(|p| h(p)).collect();
            let proof = consistency_proof(&leaves[..new], old).unwrap();
            assert_eq!(proof, want, "{old} -> {new}");
            let (old_root, new_root) = (h(ROOTS[old]), h(ROOTS[new]));
            assert!(verify_consistency(
                old as u64, new as u64, &old_root, &new_root, &proof
            ));
        }
    }

    #[test]
    fn parallel_root_matches_reference_around_split_points() {
        // Small leaves cross the grain at a few thousand leaves, large ones at one.
        for (count, len) in [
            (4095, 32),
            (4097, 32),
            (10_001, 32),
            (5, 300_000),
            (33, 70_000),
        ] {
            let leaves = numbered_leaves(count, len);
            assert_eq!(root(&leaves), reference_root(&leaves), "{count} x {len} B");
        }
    }

    #[test]
    fn every_proof_up_to_33_leaves_verifies_and_rejects_a_changed_hash() {
        let leaves = numbered_leaves(33, 3);
        for n in 1..=leaves.len() {
            let tree = &leaves[..n];
            let root_n = root(tree);
            for index in 0..n {
                let proof = inclusion_proof(tree, index).unwrap();
                let leaf = leaf_hash(&tree[index]);
                assert!(verify_inclusion(
                    &leaf,
                    index as u64,
                    n as u64,
                    &proof,
                    &root_n
                ));
                let mut wrong_leaf = leaf;
                wrong_leaf[0] ^= 1;
                assert!(!verify_inclusion(
                    &wrong_leaf,
                    index as u64,
                    n as u64,
                    &proof,
                    &root_n
                ));
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i][31] ^= 0x80;
                    assert!(!verify_inclusion(
                        &leaf,
                        index as u64,
                        n as u64,
                        &bad,
                        &root_n
                    ));
                }
            }
            for old in 0..=n {
                let proof = consistency_proof(tree, old).unwrap();
                let old_root = root(&tree[..old]);
                assert!(verify_consistency(
                    old as u64, n as u64, &old_root, &root_n, &proof
                ));
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i][7] ^= 4;
                    assert!(!verify_consistency(
                        old as u64, n as u64, &old_root, &root_n, &bad
                    ));
                }
                if old < n {
                    let mut wrong_old = old_root;
                    wrong_old[3] ^= 1;
                    assert!(!verify_consistency(
                        old as u64, n as u64, &wrong_old, &root_n, &proof
                    ));
                }
            }
        }
    }

    #[test]
    fn rejects_out_of_range_index_and_size() {
        let leaves = leaves();
        assert!(matches!(
            inclusion_proof(&leaves, 8),
            Err(CoreError::InvalidArgument(_))
        ));
        assert!(matches!(
            inclusion_proof::<Vec<u8>>(&[], 0),
            Err(CoreError::InvalidArgument(_))
        ));
        assert!(matches!(
            consistency_proof(&leaves, 9),
            Err(CoreError::InvalidArgument(_))
        ));
    }

    #[test]
    fn verifiers_reject_impossible_claims() {
        let leaf = leaf_hash(&unhex(LEAVES[0]));
        // Index not below the size, or a proof with an extra or missing step.
        assert!(!verify_inclusion(&leaf, 1, 1, &[], &leaf));
        let leaves = leaves();
        let proof = inclusion_proof(&leaves, 5).unwrap();
        let root8 = h(ROOTS[8]);
        let leaf5 = leaf_hash(&leaves[5]);
        let mut longer = proof.clone();
        longer.push(root8);
        assert!(!verify_inclusion(&leaf5, 5, 8, &longer, &root8));
        assert!(!verify_inclusion(&leaf5, 5, 8, &proof[..2], &root8));
        // A shrinking log, a grown log with no proof, or an unequal root at equal size.
        let (root6, root7) = (h(ROOTS[6]), h(ROOTS[7]));
        assert!(!verify_consistency(7, 6, &root7, &root6, &[]));
        assert!(!verify_consistency(6, 7, &root6, &root7, &[]));
        assert!(!verify_consistency(4, 8, &h(ROOTS[4]), &root8, &[]));
        assert!(!verify_consistency(6, 6, &root6, &root7, &[]));
        assert!(verify_consistency(0, 6, &empty_root(), &root6, &[]));
        assert!(!verify_consistency(0, 6, &root7, &root6, &[]));
    }
}
