//! Finding the rules whose globs match a path without trying every glob.
//!
//! One `GlobSet` over all globs is linear in the globs that share a path's
//! extension (10,000 `**/*.log` rules cost about a millisecond per `.log`
//! path), so globs are grouped by their literal directory prefix
//! (`/srv/app7` for `/srv/app7/**/*.log`), one `GlobSet` per group. A path
//! consults only the groups of its own ancestors: a handful of hash
//! lookups, then only globs that can possibly match.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

use globset::{GlobSet, GlobSetBuilder};

use crate::policy::compile_glob;

/// Glob metacharacters: where the literal part of a glob ends.
const META: &[char] = &['*', '?', '[', '{', '\\'];

/// The directory a glob is rooted in: everything before the component
/// that holds its first metacharacter (the whole glob if it has none).
pub fn literal_prefix(glob: &str) -> &str {
    let Some(meta) = glob.find(META) else {
        return glob;
    };
    match glob[..meta].rfind('/') {
        Some(0) | None => "/",
        Some(slash) => &glob[..slash],
    }
}

/// True when the glob has no metacharacter: it names one path.
pub fn is_literal(glob: &str) -> bool {
    !glob.contains(META)
}

#[derive(Debug, Clone)]
struct Bucket {
    globs: GlobSet,
    /// Rule index of each glob in `globs`.
    rule_of: Vec<usize>,
}

/// All globs of a policy, grouped by literal prefix.
#[derive(Debug, Clone, Default)]
pub struct PathIndex {
    buckets: HashMap<Box<[u8]>, Bucket, BuildHasherDefault<PrefixHasher>>,
}

/// Hashes a prefix a word at a time: every request looks up each of its
/// path's ancestors, and SipHash's defence against chosen keys buys
/// nothing here, the keys being the policy's own. The final mix spreads
/// every input bit over the bits the table uses.
#[derive(Debug, Default)]
struct PrefixHasher(u64);

impl PrefixHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for PrefixHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.add(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        // MurmurHash3's finaliser.
        let mut k = self.0;
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    }
}

impl PathIndex {
    /// Indexes `(glob, rule index)` pairs; the globs must be valid.
    pub fn build<'a>(globs: impl IntoIterator<Item = (&'a str, usize)>) -> PathIndex {
        let mut groups: HashMap<&str, (GlobSetBuilder, Vec<usize>)> = HashMap::new();
        for (glob, rule) in globs {
            let (builder, rules) = groups
                .entry(literal_prefix(glob))
                .or_insert_with(|| (GlobSetBuilder::new(), Vec::new()));
            builder.add(compile_glob(glob).expect("globs are validated before indexing"));
            rules.push(rule);
        }
        let buckets = groups
            .into_iter()
            .map(|(prefix, (builder, rule_of))| {
                let globs = builder.build().expect("validated globs compile");
                (prefix.as_bytes().into(), Bucket { globs, rule_of })
            })
            .collect();
        PathIndex { buckets }
    }

    /// Appends to `out` the index of every rule with a glob matching the
    /// (normalised, absolute) `path`: unsorted, possibly repeated.
    pub fn matching_rules(&self, path: &Path, scratch: &mut Vec<usize>, out: &mut Vec<usize>) {
        let bytes = path.as_os_str().as_encoded_bytes();
        let candidate = globset::Candidate::new(path);
        let ancestors = std::iter::once(1)
            .chain(
                bytes
                    .iter()
                    .enumerate()
                    .skip(1)
                    .filter(|&(_, &b)| b == b'/')
                    .map(|(i, _)| i),
            )
            .chain(std::iter::once(bytes.len()).filter(|&n| n > 1));
        for end in ancestors {
            if let Some(bucket) = self.buckets.get(&bytes[..end]) {
                bucket.globs.matches_candidate_into(&candidate, scratch);
                out.extend(scratch.iter().map(|&g| bucket.rule_of[g]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_prefixes() {
        assert_eq!(literal_prefix("/var/log/app/**/*.log"), "/var/log/app");
        assert_eq!(literal_prefix("/var/log/a*.log"), "/var/log");
        assert_eq!(literal_prefix("/etc/passwd"), "/etc/passwd");
        assert_eq!(literal_prefix("/**"), "/");
        assert_eq!(literal_prefix("/*.txt"), "/");
        assert_eq!(literal_prefix("/a/{b,c}/d"), "/a");
    }

    fn rules(index: &PathIndex, path: &str) -> Vec<usize> {
        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        index.matching_rules(Path::new(path), &mut scratch, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    #[test]
    fn finds_globs_of_every_ancestor() {
        let index = PathIndex::build([
            ("/**/*.key", 0),
            ("/srv/**", 1),
            ("/srv/app/*.log", 2),
            ("/srv/app/exact.log", 3),
            ("/srv/other/*.log", 4),
            ("/", 5),
        ]);
        assert_eq!(rules(&index, "/srv/app/exact.log"), vec![1, 2, 3]);
        assert_eq!(rules(&index, "/srv/app/x.key"), vec![0, 1]);
        assert_eq!(rules(&index, "/srv/app/deeper/x.log"), vec![1]);
        assert_eq!(rules(&index, "/home/a.key"), vec![0]);
        assert_eq!(rules(&index, "/srvx/app/a.log"), Vec::<usize>::new());
        assert_eq!(rules(&index, "/"), vec![5]);
    }
}
