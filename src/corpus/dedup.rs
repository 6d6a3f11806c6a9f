//! Near-duplicate detection with MinHash LSH: word shingles, a signature of `bands x rows`
//! minimum hashes per note, candidate pairs from identical bands, pairs kept when their
//! estimated Jaccard similarity reaches the threshold, clusters by union-find.
//!
//! Deterministic: the same texts and settings give the same clusters, whatever the thread
//! count. The build's sketches wait in a scratch file ([`SketchSpill`]), not in memory.

use std::path::{Path, PathBuf};

use foldhash::HashMap;
use foldhash::HashMapExt;

use ehrprep_data::rng::{GOLDEN, mix};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// MinHash LSH settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MinHashConfig {
    /// Words per shingle.
    pub shingle_words: usize,
    pub bands: usize,
    pub rows: usize,
    /// Minimum estimated Jaccard similarity for a candidate pair to count.
    pub threshold: f64,
    pub seed: u64,
}

impl Default for MinHashConfig {
    /// datatrove's shape: 5-word shingles, 14 bands of 8 rows (an S-curve centred near 0.72).
    fn default() -> Self {
        MinHashConfig {
            shingle_words: 5,
            bands: 14,
            rows: 8,
            threshold: 0.7,
            seed: 1,
        }
    }
}

/// FNV-1a hashes of the words of `text` (split at whitespace), each over its lower-cased
/// alphanumeric characters; words with none are skipped. ASCII text takes a byte path that
/// gives the same hashes as the `char` path.
fn word_hashes(text: &str, seed: u64) -> Vec<u64> {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let start = OFFSET ^ seed;
    let mut words = Vec::with_capacity(text.len() / 5);
    if text.is_ascii() {
        // char::is_whitespace on ASCII: space, \t, \n, \x0B, \x0C, \r.
        let (mut h, mut any) = (start, false);
        for &b in text.as_bytes() {
            if matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r') {
                if any {
                    words.push(h);
                }
                (h, any) = (start, false);
            } else if b.is_ascii_alphanumeric() {
                any = true;
                h ^= u64::from(b.to_ascii_lowercase());
                h = h.wrapping_mul(PRIME);
            }
        }
        if any {
            words.push(h);
        }
        return words;
    }
    for w in text.split_whitespace() {
        let mut h = start;
        let mut any = false;
        for c in w
            .chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
        {
            any = true;
            h ^= c as u64;
            h = h.wrapping_mul(PRIME);
        }
        if any {
            words.push(h);
        }
    }
    words
}

/// One hash per shingle of `text` (`words` consecutive words, in order, repeats included);
/// a text of fewer words is one shingle. Near-duplicate detection and the task-text guard
/// ([`super::overlap`]) hash text the same way.
pub(crate) fn shingles(text: &str, words: usize, seed: u64) -> Vec<u64> {
    let hashes = word_hashes(text, seed);
    let k = words.max(1).min(hashes.len().max(1));
    windows(&hashes, k)
}

/// Like [`shingles`], but a text of fewer than `words` words has none (not one shorter
/// shingle, which no longer text would ever contain).
pub(crate) fn full_shingles(text: &str, words: usize, seed: u64) -> Vec<u64> {
    let hashes = word_hashes(text, seed);
    windows(&hashes, words.max(1))
}

fn windows(hashes: &[u64], k: usize) -> Vec<u64> {
    hashes
        .windows(k)
        .map(|window| mix(window.iter().fold(k as u64, |h, &w| mix(h ^ w))))
        .collect()
}

/// `sig[i] = min(sig[i], mul[i] * base + add[i])` over every shingle hash in `bases`; with
/// AVX-512 (native 64-bit multiply and unsigned min) or AVX2 where the CPU has them: the same
/// arithmetic, so the same result on every machine.
fn min_hashes(sig: &mut [u64], mul: &[u64], add: &[u64], bases: &[u64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq")
    {
        #[allow(unsafe_code)] // a target-feature function; see SAFETY
        // SAFETY: the CPU supports AVX-512 F and DQ, checked just above.
        unsafe {
            min_hashes_avx512(sig, mul, add, bases)
        };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)] // a target-feature function; see SAFETY
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe {
            min_hashes_avx2(sig, mul, add, bases)
        };
        return;
    }
    min_hashes_portable(sig, mul, add, bases);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
fn min_hashes_avx512(sig: &mut [u64], mul: &[u64], add: &[u64], bases: &[u64]) {
    min_hashes_portable(sig, mul, add, bases);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn min_hashes_avx2(sig: &mut [u64], mul: &[u64], add: &[u64], bases: &[u64]) {
    min_hashes_portable(sig, mul, add, bases);
}

#[inline(always)]
fn min_hashes_portable(sig: &mut [u64], mul: &[u64], add: &[u64], bases: &[u64]) {
    let n = sig.len().min(mul.len()).min(add.len());
    let (sig, mul, add) = (&mut sig[..n], &mul[..n], &add[..n]);
    for &base in bases {
        for i in 0..n {
            let h = mul[i].wrapping_mul(base).wrapping_add(add[i]);
            sig[i] = sig[i].min(h);
        }
    }
}

impl MinHashConfig {
    /// The signature of one text: `bands * rows` minimum hashes over its shingles.
    pub fn signature(&self, text: &str) -> Vec<u64> {
        // Words are hashed in place (lower-cased, alphanumerics only), shingles combine the
        // word hashes, and each of the `bands * rows` permutations is one multiply-add on
        // the mixed shingle hash (a bijection on u64 for odd multipliers): no allocation
        // per word or shingle.
        let n = self.bands * self.rows;
        let (mut mul, mut add) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n as u64 {
            let a = mix(self.seed ^ (2 * i + 1).wrapping_mul(GOLDEN)) | 1;
            mul.push(a);
            add.push(mix(a ^ 0xD6E8_FEB8_6659_FD93));
        }
        let mut sig = vec![u64::MAX; n];
        min_hashes(
            &mut sig,
            &mul,
            &add,
            &shingles(text, self.shingle_words, self.seed),
        );
        sig
    }

    /// Clusters near-duplicate texts. Returns, per text, the index of its cluster's first
    /// member (itself when it has no near duplicate earlier in the list).
    #[cfg(test)]
    pub fn clusters(&self, texts: &[&str]) -> Vec<usize> {
        let mut sketches = Sketches::new(self);
        for sketch in texts.par_iter().map(|t| self.sketch(t)).collect::<Vec<_>>() {
            sketches.push(&sketch);
        }
        sketches.clusters(self.threshold)
    }

    /// What the build keeps of one note: its band keys, and one byte of each minimum hash
    /// to check a candidate pair's similarity (b-bit MinHash).
    pub fn sketch(&self, text: &str) -> Sketch {
        let sig = self.signature(text);
        Sketch {
            keys: (0..self.bands)
                .map(|band| {
                    sig[band * self.rows..(band + 1) * self.rows]
                        .iter()
                        .fold(band as u64, |h, &r| mix(h ^ r))
                })
                .collect(),
            // A byte of the mixed value: a minimum's high bits are mostly zero.
            bits: sig.iter().map(|&h| mix(h) as u8).collect(),
        }
    }
}

/// One note's band keys and minimum-hash bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Sketch {
    pub keys: Vec<u64>,
    pub bits: Vec<u8>,
}

/// The sketches of many notes in memory, stored flat: `bands` keys and `bands * rows` bytes
/// a note (224 bytes with the default settings). The build uses [`SketchSpill`]; this is
/// the plain store the tests check it against.
#[cfg(test)]
#[derive(Debug, Clone)]
pub struct Sketches {
    bands: usize,
    hashes: usize,
    keys: Vec<u64>,
    bits: Vec<u8>,
}

/// Notes kept per band key to compare a newcomer with; bounds the work on keys that very
/// many templated notes share.
const REPRESENTATIVES: usize = 4;

#[cfg(test)]
impl Sketches {
    pub fn new(config: &MinHashConfig) -> Sketches {
        Sketches {
            bands: config.bands,
            hashes: config.bands * config.rows,
            keys: Vec::new(),
            bits: Vec::new(),
        }
    }

    pub fn push(&mut self, sketch: &Sketch) {
        assert_eq!(sketch.keys.len(), self.bands, "sketch of other settings");
        assert_eq!(sketch.bits.len(), self.hashes, "sketch of other settings");
        self.keys.extend_from_slice(&sketch.keys);
        self.bits.extend_from_slice(&sketch.bits);
    }

    pub fn len(&self) -> usize {
        self.keys.len() / self.bands.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Estimated Jaccard similarity of notes `a` and `b`: the fraction of equal bytes,
    /// corrected for bytes that agree by chance (1 in 256).
    pub fn similarity(&self, a: usize, b: usize) -> f64 {
        byte_similarity(
            &self.bits[a * self.hashes..(a + 1) * self.hashes],
            &self.bits[b * self.hashes..(b + 1) * self.hashes],
        )
    }

    /// Clusters the notes: a pair sharing a band key is joined when its estimated
    /// similarity reaches `threshold` (the LSH candidates, checked). Returns each note's
    /// cluster root, the index of its cluster's first note.
    pub fn clusters(&self, threshold: f64) -> Vec<usize> {
        let band_keys = |band: usize| -> crate::Result<Vec<u64>> {
            Ok(self
                .keys
                .iter()
                .skip(band)
                .step_by(self.bands)
                .copied()
                .collect())
        };
        let shared = shared_keys(self.len(), self.bands, band_keys).expect("keys in memory");
        cluster(self.len(), threshold, &shared, band_keys, |a, b| {
            self.similarity(a, b)
        })
        .expect("keys in memory")
    }
}

/// Estimated Jaccard similarity from two notes' minimum-hash bytes: the fraction of equal
/// bytes, corrected for bytes that agree by chance (1 in 256).
fn byte_similarity(x: &[u8], y: &[u8]) -> f64 {
    let same = x.iter().zip(y).filter(|(p, q)| p == q).count() as f64;
    let chance = 1.0 / 256.0;
    ((same / x.len().max(1) as f64 - chance) / (1.0 - chance)).max(0.0)
}

/// Bands whose keys are looked at together in [`shared_keys`]. Each holds its keys and a
/// map over every note (about 40 bytes a note): all 14 bands at once on a 16-core host
/// raised a million-note build's peak by half.
const BANDS_AT_ONCE: usize = 2;

/// Per band, which notes have a key that another note has too: one bit per note. Only those
/// notes can ever be compared, so a note that shares no key needs no bytes in memory.
fn shared_keys(
    n: usize,
    bands: usize,
    band_keys: impl Fn(usize) -> crate::Result<Vec<u64>> + Sync,
) -> crate::Result<Vec<Vec<u64>>> {
    let shared_in = |band: usize| -> crate::Result<Vec<u64>> {
        let keys = band_keys(band)?;
        let mut shared = vec![0u64; n.div_ceil(64)];
        let mut first: HashMap<u64, u32> = HashMap::with_capacity(n);
        for (i, &key) in keys.iter().enumerate() {
            let j = *first.entry(key).or_insert(i as u32) as usize;
            if j != i {
                shared[j / 64] |= 1 << (j % 64);
                shared[i / 64] |= 1 << (i % 64);
            }
        }
        Ok(shared)
    };
    let mut out = Vec::with_capacity(bands);
    for first in (0..bands).step_by(BANDS_AT_ONCE) {
        let group = first..(first + BANDS_AT_ONCE).min(bands);
        out.extend(
            group
                .into_par_iter()
                .map(shared_in)
                .collect::<crate::Result<Vec<_>>>()?,
        );
    }
    Ok(out)
}

fn bit(set: &[u64], i: usize) -> bool {
    set[i / 64] & (1 << (i % 64)) != 0
}

/// The clustering rule, over any store of sketches: band by band, each key's first few
/// notes that joined nothing are its representatives, and every newcomer with that key is
/// compared with all of them. Notes whose key no other note has are skipped: they would
/// only become a representative nobody meets.
fn cluster(
    n: usize,
    threshold: f64,
    shared: &[Vec<u64>],
    band_keys: impl Fn(usize) -> crate::Result<Vec<u64>>,
    similarity: impl Fn(usize, usize) -> f64,
) -> crate::Result<Vec<usize>> {
    let mut uf = UnionFind::new(n);
    // Representatives inline (no allocation per key); one map reused across bands.
    let mut seen: HashMap<u64, Reps> = HashMap::new();
    for (band, shared) in shared.iter().enumerate() {
        let keys = band_keys(band)?;
        seen.clear();
        for (i, &key) in keys.iter().enumerate() {
            if !bit(shared, i) {
                continue;
            }
            let reps = seen.entry(key).or_default();
            // Every representative is checked: `i` may bridge two of them.
            let mut joined = false;
            // Stays `find(i)`: only `union` changes which set `i` is in.
            let mut root = uf.find(i);
            for &j in reps.as_slice() {
                let j = j as usize;
                if uf.find(j) == root {
                    joined = true;
                } else if similarity(j, i) >= threshold {
                    root = uf.union(j, i);
                    joined = true;
                }
            }
            if !joined {
                reps.push(i);
            }
        }
    }
    Ok((0..n).map(|i| uf.find(i)).collect())
}

/// The build's sketches, written to a scratch file as they come instead of held in memory
/// (224 bytes a kept note would be most of a large build's memory). The file is a run of
/// chunks of `chunk` notes (the last may be shorter), each laid out band by band (every
/// note's key for band 0, then band 1, ...) and then the notes' bytes, so clustering reads
/// one band's keys at a time and only the bytes of notes that share a key.
pub struct SketchSpill {
    path: PathBuf,
    file: std::fs::File,
    bands: usize,
    hashes: usize,
    chunk: usize,
    /// The chunk being filled, note by note.
    keys: Vec<u64>,
    bits: Vec<u8>,
    /// Notes pushed, written or not.
    len: usize,
}

/// Notes a chunk holds: 3.7 MB of sketches with the default settings.
const SPILL_CHUNK: usize = 16_384;

impl SketchSpill {
    /// Creates the scratch file at `path` (owner-only; replaced if it exists).
    pub fn create(config: &MinHashConfig, path: &Path) -> crate::Result<SketchSpill> {
        SketchSpill::with_chunk(config, path, SPILL_CHUNK)
    }

    fn with_chunk(config: &MinHashConfig, path: &Path, chunk: usize) -> crate::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(crate::Error::io(path))?;
        Ok(SketchSpill {
            path: path.to_path_buf(),
            file,
            bands: config.bands,
            hashes: config.bands * config.rows,
            chunk: chunk.max(1),
            keys: Vec::new(),
            bits: Vec::new(),
            len: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, sketch: &Sketch) -> crate::Result<()> {
        assert_eq!(sketch.keys.len(), self.bands, "sketch of other settings");
        assert_eq!(sketch.bits.len(), self.hashes, "sketch of other settings");
        self.keys.extend_from_slice(&sketch.keys);
        self.bits.extend_from_slice(&sketch.bits);
        self.len += 1;
        if self.len.is_multiple_of(self.chunk) {
            self.write_chunk()?;
        }
        Ok(())
    }

    /// Appends the buffered notes as one chunk, keys band by band.
    fn write_chunk(&mut self) -> crate::Result<()> {
        use std::io::Write;
        let m = self.keys.len() / self.bands.max(1);
        let mut out = Vec::with_capacity(m * (self.bands * 8 + self.hashes));
        for band in 0..self.bands {
            for note in 0..m {
                out.extend_from_slice(&self.keys[note * self.bands + band].to_le_bytes());
            }
        }
        out.extend_from_slice(&self.bits);
        self.file
            .write_all(&out)
            .map_err(crate::Error::io(&self.path))?;
        self.keys.clear();
        self.bits.clear();
        Ok(())
    }

    /// Chunk `c`'s notes and where it starts in the file.
    fn chunk_at(&self, c: usize) -> (usize, u64) {
        let m = self.chunk.min(self.len - c * self.chunk);
        let record = (self.bands * 8 + self.hashes) as u64;
        (m, (c * self.chunk) as u64 * record)
    }

    fn read_at(&self, offset: u64, len: usize) -> crate::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(crate::Error::io(&self.path))?;
        Ok(buf)
    }

    /// Every note's key for `band`, in push order.
    fn band_keys(&self, band: usize) -> crate::Result<Vec<u64>> {
        let mut keys = Vec::with_capacity(self.len);
        for c in 0..self.len.div_ceil(self.chunk) {
            let (m, at) = self.chunk_at(c);
            let bytes = self.read_at(at + (band * m * 8) as u64, m * 8)?;
            keys.extend(
                bytes
                    .chunks_exact(8)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))),
            );
        }
        Ok(keys)
    }

    /// Clusters the notes by the rule of [`cluster`], holding in memory only the bytes of
    /// the notes that share some band key; removes the file.
    pub fn clusters(mut self, threshold: f64) -> crate::Result<Vec<usize>> {
        if !self.keys.is_empty() {
            self.write_chunk()?;
        }
        let n = self.len;
        let shared = shared_keys(n, self.bands, |band| self.band_keys(band))?;
        let mut slot = vec![u32::MAX; n];
        let mut bits = Vec::new();
        for c in 0..n.div_ceil(self.chunk) {
            let (m, at) = self.chunk_at(c);
            let first = c * self.chunk;
            let wanted = |i: usize| shared.iter().any(|s| bit(s, first + i));
            if !(0..m).any(wanted) {
                continue;
            }
            let chunk = self.read_at(at + (self.bands * m * 8) as u64, m * self.hashes)?;
            for i in (0..m).filter(|&i| wanted(i)) {
                slot[first + i] = (bits.len() / self.hashes.max(1)) as u32;
                bits.extend_from_slice(&chunk[i * self.hashes..(i + 1) * self.hashes]);
            }
        }
        let h = self.hashes;
        let bytes = |i: usize| {
            let s = slot[i] as usize;
            &bits[s * h..(s + 1) * h]
        };
        cluster(
            n,
            threshold,
            &shared,
            |band| self.band_keys(band),
            |a, b| byte_similarity(bytes(a), bytes(b)),
        )
    }
}

impl Drop for SketchSpill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Up to `REPRESENTATIVES` note indices, inline. Indices are `u32`: 2^32 kept notes would
/// need a terabyte of sketches first.
#[derive(Default, Clone, Copy)]
struct Reps {
    len: u32,
    notes: [u32; REPRESENTATIVES],
}

impl Reps {
    fn as_slice(&self) -> &[u32] {
        &self.notes[..self.len as usize]
    }

    /// Adds `i` unless full.
    fn push(&mut self, i: usize) {
        if (self.len as usize) < REPRESENTATIVES {
            self.notes[self.len as usize] = u32::try_from(i).expect("fewer than 2^32 notes");
            self.len += 1;
        }
    }
}

/// Records the near-duplicate clusters of a build's kept notes in `dedup_clusters`, and with
/// `remove` moves all but each cluster's first note out of the corpus with reason
/// `near_duplicate`. `roots` are [`Sketches::clusters`] of the kept notes (note `seq` at
/// index `seq`) and `chars` their characters. Returns how many notes are near duplicates of
/// an earlier one, and their characters.
pub fn run(
    conn: &duckdb::Connection,
    build_id: &str,
    roots: &[usize],
    chars: &[u64],
    remove: bool,
) -> crate::Result<(u64, u64)> {
    use crate::Error;
    use crate::catalog::sql::DEDUP;
    conn.execute_batch(DEDUP.get("schema"))
        .map_err(Error::catalog("creating dedup tables"))?;
    let mut size = vec![0u32; roots.len()];
    for &r in roots {
        size[r] += 1;
    }
    conn.execute_batch(DEDUP.get("stage"))
        .map_err(Error::catalog("staging clusters"))?;
    let mut app = conn
        .appender("stage_dedup")
        .map_err(Error::catalog("staging clusters"))?;
    let (mut near, mut near_chars) = (0, 0);
    for (i, &r) in roots.iter().enumerate() {
        if size[r] > 1 {
            app.append_row([i as i64, r as i64])
                .map_err(Error::catalog("staging clusters"))?;
            if i != r {
                near += 1;
                near_chars += chars[i];
            }
        }
    }
    app.flush().map_err(Error::catalog("staging clusters"))?;
    drop(app);
    conn.execute(DEDUP.get("members"), [build_id])
        .map_err(Error::catalog("recording clusters"))?;
    if remove {
        conn.execute(DEDUP.get("drop_near_duplicates"), [build_id])
            .map_err(Error::catalog("dropping near duplicates"))?;
        conn.execute_batch(DEDUP.get("remove_near_duplicates"))
            .map_err(Error::catalog("dropping near duplicates"))?;
    }
    conn.execute_batch(DEDUP.get("drop_stage"))
        .map_err(Error::catalog("dropping staging tables"))?;
    Ok((near, near_chars))
}

/// Estimated Jaccard similarity: the share of equal signature slots.
pub fn similarity(a: &[u64], b: &[u64]) -> f64 {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / a.len().max(1) as f64
}

/// Union-find whose root is always the smallest index, so clusters are named by their
/// first member.
struct UnionFind {
    parent: Vec<usize>,
}

impl UnionFind {
    fn new(n: usize) -> UnionFind {
        UnionFind {
            parent: (0..n).collect(),
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    /// Joins the sets of `a` and `b`; returns the joined set's root.
    fn union(&mut self, a: usize, b: usize) -> usize {
        let (ra, rb) = (self.find(a), self.find(b));
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        self.parent[hi] = lo;
        lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ehrprep_data::rng::Rng;

    fn random_text(rng: &mut Rng, words: usize) -> String {
        const VOCAB: &[&str] = &[
            "patient", "stable", "pain", "chest", "normal", "left", "right", "effusion", "no",
            "acute", "seen", "plan", "continue", "daily", "mg", "history", "denies", "fever",
            "cough", "lungs", "clear", "heart", "rate", "rhythm", "abdomen", "soft",
        ];
        (0..words)
            .map(|_| format!("{}{}", rng.pick(VOCAB), rng.below(50)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn near_copies_cluster_and_unrelated_texts_do_not() {
        let mut rng = Rng::new(5);
        let mut texts: Vec<String> = Vec::new();
        for i in 0..200 {
            texts.push(random_text(&mut rng, 150));
            if i % 10 == 0 {
                // A copy with two words changed (Jaccard of 5-shingles about 0.88).
                let mut words: Vec<String> =
                    texts.last().unwrap().split(' ').map(String::from).collect();
                words[40] = "changed".into();
                words[100] = "edited".into();
                texts.push(words.join(" "));
            }
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let clusters = MinHashConfig::default().clusters(&refs);
        let dups: Vec<usize> = (0..texts.len()).filter(|&i| clusters[i] != i).collect();
        assert_eq!(dups.len(), 20, "{dups:?}");
        for &d in &dups {
            assert_eq!(texts[d].split(' ').count(), 150);
            assert!(texts[d].contains("changed") && texts[d].contains("edited"));
            assert_eq!(clusters[d], d - 1, "a copy joins the note right before it");
        }
    }

    #[test]
    fn shared_band_keys_join_only_similar_notes() {
        let cfg = MinHashConfig {
            shingle_words: 1,
            bands: 2,
            rows: 2,
            threshold: 0.7,
            seed: 1,
        };
        let mut sketches = Sketches::new(&cfg);
        let sketch = |keys: [u64; 2], bits: [u8; 4]| Sketch {
            keys: keys.to_vec(),
            bits: bits.to_vec(),
        };
        sketches.push(&sketch([1, 2], [1, 2, 3, 4]));
        // Shares band 0 but agrees on 2 of 4 bytes: a band collision, not a near copy.
        sketches.push(&sketch([1, 3], [1, 2, 9, 9]));
        // Shares band 1 with note 0 and agrees on every byte.
        sketches.push(&sketch([4, 2], [1, 2, 3, 4]));
        // Shares band 0 with notes 0 and 1; close to note 1 only.
        sketches.push(&sketch([1, 5], [1, 2, 9, 9]));
        assert!(sketches.similarity(0, 1) < 0.7 && sketches.similarity(0, 2) == 1.0);
        assert_eq!(sketches.clusters(0.7), [0, 1, 0, 1]);
        assert_eq!(sketches.clusters(0.4), [0, 0, 0, 0]);

        // A note already joined to one representative of a key still joins another it is
        // close to: note 2 bridges notes 0 and 1 through band 1.
        let mut sketches = Sketches::new(&cfg);
        sketches.push(&sketch([1, 5], [1, 2, 3, 4]));
        sketches.push(&sketch([2, 5], [1, 2, 9, 9]));
        sketches.push(&sketch([1, 5], [1, 2, 3, 9]));
        assert!(sketches.similarity(0, 1) < 0.7);
        assert!(sketches.similarity(0, 2) >= 0.7 && sketches.similarity(1, 2) >= 0.7);
        assert_eq!(sketches.clusters(0.7), [0, 0, 0]);
    }

    /// The clustering rule written plainly: band by band, each key's first few notes that
    /// joined nothing are its representatives, and every newcomer is compared with all of
    /// them.
    fn clusters_plainly(s: &Sketches, threshold: f64) -> Vec<usize> {
        let n = s.len();
        let mut parent: Vec<usize> = (0..n).collect();
        fn root(parent: &[usize], mut x: usize) -> usize {
            while parent[x] != x {
                x = parent[x];
            }
            x
        }
        for band in 0..s.bands {
            let mut reps: std::collections::HashMap<u64, Vec<usize>> = Default::default();
            for i in 0..n {
                let list = reps.entry(s.keys[i * s.bands + band]).or_default();
                let mut joined = false;
                for &j in list.iter() {
                    let (a, b) = (root(&parent, j), root(&parent, i));
                    if a == b {
                        joined = true;
                    } else if s.similarity(j, i) >= threshold {
                        parent[a.max(b)] = a.min(b);
                        joined = true;
                    }
                }
                if !joined && list.len() < REPRESENTATIVES {
                    list.push(i);
                }
            }
        }
        (0..n).map(|i| root(&parent, i)).collect()
    }

    /// Minimum-hash bytes from a template, each replaced by a random byte 30% of the time,
    /// so that some pairs pass a threshold and some fail.
    fn noisy_bits(rng: &mut Rng, template: u8, hashes: usize) -> Vec<u8> {
        (0..hashes)
            .map(|k| {
                if rng.chance(0.3) {
                    rng.below(256) as u8
                } else {
                    template * 16 + k as u8
                }
            })
            .collect()
    }

    #[test]
    fn clusters_follow_the_plain_rule_on_crowded_keys() {
        let cfg = MinHashConfig {
            shingle_words: 1,
            bands: 3,
            rows: 4,
            threshold: 0.5,
            seed: 1,
        };
        let mut rng = Rng::new(9);
        for round in 0..20 {
            let mut sketches = Sketches::new(&cfg);
            // Few keys, so keys hold many more notes than representatives; bytes from a
            // few templates with some noise, so that some pairs pass and some fail.
            for _ in 0..400 {
                let template = rng.below(6) as u8;
                let keys = (0..cfg.bands).map(|_| rng.below(5)).collect();
                let bits = noisy_bits(&mut rng, template, cfg.bands * cfg.rows);
                sketches.push(&Sketch { keys, bits });
            }
            for threshold in [0.3, 0.5, 0.8] {
                let want = clusters_plainly(&sketches, threshold);
                assert_eq!(
                    sketches.clusters(threshold),
                    want,
                    "round {round}, threshold {threshold}"
                );
            }
            let joined = clusters_plainly(&sketches, 0.5)
                .iter()
                .enumerate()
                .filter(|(i, r)| i != *r)
                .count();
            assert!(joined > 0 && joined < 400, "round {round}: {joined} joined");
        }
    }

    #[test]
    fn spilled_sketches_cluster_as_sketches_in_memory() {
        use std::os::unix::fs::PermissionsExt;
        let cfg = MinHashConfig {
            shingle_words: 1,
            bands: 3,
            rows: 4,
            threshold: 0.5,
            seed: 1,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sketches");
        let mut rng = Rng::new(13);
        for (round, chunk) in [1, 7, 64, 333, 1000].into_iter().enumerate() {
            let (mut memory, mut spill) = (
                Sketches::new(&cfg),
                SketchSpill::with_chunk(&cfg, &path, chunk).unwrap(),
            );
            // Each band key either one of a few crowded ones or the note's own (most notes
            // of a real corpus share no key), so some notes meet others in one band only;
            // bytes from a few templates with noise.
            for i in 0..400u64 {
                let keys = (0..cfg.bands as u64)
                    .map(|b| {
                        if rng.chance(0.4) {
                            rng.below(4)
                        } else {
                            1000 + i * 8 + b
                        }
                    })
                    .collect();
                let template = rng.below(5) as u8;
                let bits = noisy_bits(&mut rng, template, cfg.bands * cfg.rows);
                let sketch = Sketch { keys, bits };
                memory.push(&sketch);
                spill.push(&sketch).unwrap();
            }
            assert_eq!(spill.len(), 400);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "round {round}");
            let want = clusters_plainly(&memory, 0.5);
            let joined = want.iter().enumerate().filter(|(i, r)| i != *r).count();
            assert!(joined > 20, "round {round}: {joined} joined");
            assert_eq!(memory.clusters(0.5), want, "round {round}");
            assert_eq!(spill.clusters(0.5).unwrap(), want, "chunks of {chunk}");
            assert!(!path.exists(), "the scratch file goes with the clustering");
        }
        // Nothing pushed: nothing to cluster.
        let spill = SketchSpill::create(&cfg, &path).unwrap();
        assert!(spill.is_empty());
        assert_eq!(spill.clusters(0.5).unwrap(), Vec::<usize>::new());
    }

    #[test]
    fn shared_keys_mark_the_notes_that_meet_another() {
        // Band 0: notes 0 and 2 share key 5; band 1: every key is its own; bands 2-4 (more
        // than one group of BANDS_AT_ONCE, the last one short) each mark other notes.
        let keys = [
            [5u64, 1, 8, 0, 1],
            [6, 2, 9, 0, 2],
            [5, 3, 8, 1, 1],
            [7, 4, 8, 0, 3],
        ];
        let shared = shared_keys(4, 5, |band| Ok(keys.iter().map(|k| k[band]).collect())).unwrap();
        let marked = |band: usize| {
            (0..4)
                .filter(|&i| bit(&shared[band], i))
                .collect::<Vec<_>>()
        };
        assert_eq!(shared.len(), 5);
        assert_eq!(marked(0), [0, 2]);
        assert_eq!(marked(1), Vec::<usize>::new());
        assert_eq!(marked(2), [0, 2, 3]);
        assert_eq!(marked(3), [0, 1, 3]);
        assert_eq!(marked(4), [0, 2]);
    }

    #[test]
    fn byte_similarity_tracks_jaccard() {
        let cfg = MinHashConfig::default();
        let mut rng = Rng::new(11);
        let base: Vec<String> = (0..400)
            .map(|i| format!("w{}", rng.range(0, 1_000_000) + i))
            .collect();
        let mut sketches = Sketches::new(&cfg);
        sketches.push(&cfg.sketch(&base.join(" ")));
        // Replacing every 20th word leaves about 3/4 of the 5-word shingles shared; every
        // 4th, none.
        for step in [20, 4] {
            let edited: Vec<String> = base
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    if i % step == 0 {
                        format!("x{i}")
                    } else {
                        w.clone()
                    }
                })
                .collect();
            sketches.push(&cfg.sketch(&edited.join(" ")));
        }
        let (close, far) = (sketches.similarity(0, 1), sketches.similarity(0, 2));
        assert!((0.55..0.9).contains(&close), "{close}");
        assert!(far < 0.1, "{far}");
    }

    /// The signature as first written (char path only, one loop): the fast paths must give
    /// the same values.
    fn signature_reference(cfg: &MinHashConfig, text: &str) -> Vec<u64> {
        let words: Vec<u64> = text
            .split_whitespace()
            .filter_map(|w| {
                let mut h = 0xcbf2_9ce4_8422_2325u64 ^ cfg.seed;
                let mut any = false;
                for c in w
                    .chars()
                    .filter(|c| c.is_alphanumeric())
                    .flat_map(char::to_lowercase)
                {
                    any = true;
                    h ^= c as u64;
                    h = h.wrapping_mul(0x0000_0100_0000_01b3);
                }
                any.then_some(h)
            })
            .collect();
        let n = cfg.bands * cfg.rows;
        let mut sig = vec![u64::MAX; n];
        let k = cfg.shingle_words.max(1).min(words.len().max(1));
        for window in words.windows(k) {
            let base = mix(window.iter().fold(k as u64, |h, &w| mix(h ^ w)));
            for (i, slot) in sig.iter_mut().enumerate() {
                let a = mix(cfg.seed ^ (2 * i as u64 + 1).wrapping_mul(GOLDEN)) | 1;
                let b = mix(a ^ 0xD6E8_FEB8_6659_FD93);
                *slot = (*slot).min(a.wrapping_mul(base).wrapping_add(b));
            }
        }
        sig
    }

    #[test]
    fn fast_paths_give_the_reference_signature() {
        let texts = [
            "",
            "   \n\t ",
            "one",
            "a b",
            "Pt is a 67 y.o. M w/ HTN, DM2 -- admitted [Name] on 2151-7-16.\n\n  Vitals: BP 120/80",
            "tabs\tand\x0Bvertical\x0Ctabs\r\nand -- ... ,,, punctuation-only words !!",
            "Ünïcode wörds: Straße, ΣΙΓΜΑ, İstanbul, ﬁne, 'quoted' and ascii MIXED Case",
            "non-breaking\u{a0}space and ideographic\u{3000}space split words too",
        ];
        for cfg in [
            MinHashConfig::default(),
            MinHashConfig {
                shingle_words: 1,
                bands: 3,
                rows: 5,
                threshold: 0.5,
                seed: 9,
            },
            MinHashConfig {
                shingle_words: 3,
                bands: 7,
                rows: 3,
                threshold: 0.5,
                seed: 2,
            },
        ] {
            for text in texts {
                assert_eq!(
                    cfg.signature(text),
                    signature_reference(&cfg, text),
                    "{text:?}"
                );
            }
        }
        let (mul, add) = ([3u64, 5, 7, 9, 11], [1u64, 2, 3, 4, u64::MAX]);
        let bases = [0u64, 1, u64::MAX, 0x1234_5678_9abc_def0];
        let (mut fast, mut plain) = (vec![u64::MAX; 5], vec![u64::MAX; 5]);
        min_hashes(&mut fast, &mul, &add, &bases);
        min_hashes_portable(&mut plain, &mul, &add, &bases);
        assert_eq!(fast, plain);
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)] // each path only where the CPU has it
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                let mut avx2 = vec![u64::MAX; 5];
                // SAFETY: checked just above.
                unsafe { min_hashes_avx2(&mut avx2, &mul, &add, &bases) };
                assert_eq!(avx2, plain);
            }
        }
    }

    #[test]
    fn signatures_are_deterministic_and_similarity_tracks_jaccard() {
        let cfg = MinHashConfig::default();
        let a = "the quick brown fox jumps over the lazy dog near the river bank today";
        assert_eq!(cfg.signature(a), cfg.signature(a));
        let b = "completely different words appear in this sentence about hospital notes";
        assert!(similarity(&cfg.signature(a), &cfg.signature(b)) < 0.1);
        // Case and punctuation do not matter.
        let c = "The quick brown fox, jumps over the lazy dog near the river bank today.";
        assert_eq!(similarity(&cfg.signature(a), &cfg.signature(c)), 1.0);
    }

    #[test]
    fn union_find_names_clusters_by_first_member() {
        let mut uf = UnionFind::new(5);
        uf.union(4, 2);
        uf.union(2, 3);
        uf.union(3, 1);
        assert_eq!(
            (0..5).map(|i| uf.find(i)).collect::<Vec<_>>(),
            [0, 1, 1, 1, 1]
        );
    }
}
