//! Tokenizing the corpus for packing, with a word cache.
//!
//! For ehrprep's own pipeline (NFKC, whitespace collapse, strip, lowercase if asked,
//! Metaspace with a prefix on every segment, punctuation and digits split off one character
//! at a time, `</s>` appended) and added tokens that match raw text
//! exactly, the ids of ASCII text decompose: split the text at added tokens, split the
//! pieces between them at whitespace, and each word's ids depend on the word alone (NFKC is
//! the identity on ASCII, and each word becomes `▁word` on its own). So each distinct word
//! is tokenized once, by the tokenizer itself, and looked up afterwards. Text that is not
//! ASCII, and any tokenizer whose pipeline differs (for example the original T5 one given
//! with `--tokenizer`), go through the tokenizer unchanged. Tests hold both paths to
//! identical ids.

use std::sync::Mutex;

use aho_corasick::{AhoCorasick, MatchKind};
use foldhash::HashMap;
use rayon::prelude::*;
use tokenizers::Tokenizer;

use crate::{Error, Result};

/// Cached words, across all shards; beyond this the cache stops growing (lookups go on).
const CACHE_WORDS: usize = 1 << 20;
/// Longer words are tokenized every time, not cached (a long run without whitespace is
/// rarely repeated).
const CACHE_WORD_BYTES: usize = 64;
const SHARDS: usize = 16;

/// Encodes texts to ids, each ending in `</s>`, exactly as `Tokenizer::encode` would.
pub struct Encoder<'a> {
    tok: &'a Tokenizer,
    fast: Option<FastPath>,
}

struct FastPath {
    /// Added tokens (raw-text matches), leftmost-longest as the tokenizer matches them.
    added: AhoCorasick,
    added_ids: Vec<u32>,
    eos: u32,
    cache: Vec<Mutex<HashMap<String, Vec<u32>>>>,
}

impl<'a> Encoder<'a> {
    pub fn new(tok: &'a Tokenizer) -> Encoder<'a> {
        Encoder {
            tok,
            fast: FastPath::for_tokenizer(tok),
        }
    }

    /// Whether the word cache is in use for ASCII text.
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// Encodes texts in parallel; each result ends in `</s>`.
    pub fn encode_batch(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        texts.par_iter().map(|t| self.encode(t)).collect()
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.fast {
            Some(fast) if text.is_ascii() => fast.encode(self.tok, text),
            _ => slow(self.tok, text, true),
        }
    }
}

fn slow(tok: &Tokenizer, text: &str, add_special: bool) -> Result<Vec<u32>> {
    tok.encode_fast(text, add_special)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| Error::Invalid(format!("tokenizing: {e}")))
}

impl FastPath {
    /// The fast path when `tok` is ehrprep's pipeline with plain added tokens, else `None`.
    fn for_tokenizer(tok: &Tokenizer) -> Option<FastPath> {
        fn json<T: serde::Serialize>(part: Option<&T>) -> Option<String> {
            part.and_then(|p| serde_json::to_string(p).ok())
        }
        // Cased or lowercased: both act on each word alone, so a word's ids do not depend
        // on its neighbours.
        let ours = [false, true].into_iter().any(|lowercase| {
            crate::pack::tokenizer::pipeline_parts(lowercase).is_ok_and(|own| {
                json(tok.get_normalizer()).is_some()
                    && json(tok.get_normalizer()) == json(own.get_normalizer())
                    && json(tok.get_pre_tokenizer()).is_some()
                    && json(tok.get_pre_tokenizer()) == json(own.get_pre_tokenizer())
            })
        });
        if !ours {
            return None;
        }
        let decoder = tok.get_added_tokens_decoder();
        let mut added: Vec<(String, u32)> = Vec::new();
        for (&id, token) in &decoder {
            if token.single_word || token.lstrip || token.rstrip || token.normalized {
                return None;
            }
            added.push((token.content.clone(), id));
        }
        added.sort();
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(added.iter().map(|(content, _)| content))
            .ok()?;
        // No truncation or padding, and the post-processor appends exactly `</s>`.
        if tok.get_truncation().is_some()
            || tok.get_padding().is_some()
            || tok.get_encode_special_tokens()
        {
            return None;
        }
        let eos = tok.token_to_id(crate::pack::tokenizer::EOS)?;
        let with = slow(tok, "a", true).ok()?;
        let without = slow(tok, "a", false).ok()?;
        if with.len() != without.len() + 1 || with[..without.len()] != without[..] {
            return None;
        }
        if with.last() != Some(&eos) || slow(tok, "", true).ok()? != [eos] {
            return None;
        }
        Some(FastPath {
            added: matcher,
            added_ids: added.into_iter().map(|(_, id)| id).collect(),
            eos,
            cache: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
        })
    }

    fn encode(&self, tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3);
        let mut last = 0;
        for m in self.added.find_iter(text) {
            self.words(tok, &text[last..m.start()], &mut ids)?;
            ids.push(self.added_ids[m.pattern().as_usize()]);
            last = m.end();
        }
        self.words(tok, &text[last..], &mut ids)?;
        ids.push(self.eos);
        Ok(ids)
    }

    /// Appends the ids of the whitespace-separated words of an ASCII piece.
    fn words(&self, tok: &Tokenizer, piece: &str, ids: &mut Vec<u32>) -> Result<()> {
        let words = piece
            .split(crate::pack::tokenizer::ASCII_WHITESPACE)
            .filter(|w| !w.is_empty());
        for word in words {
            let shard = &self.cache[shard_of(word)];
            if let Some(hit) = shard.lock().expect("cache lock").get(word) {
                ids.extend_from_slice(hit);
                continue;
            }
            let word_ids = slow(tok, word, false)?;
            ids.extend_from_slice(&word_ids);
            if word.len() > CACHE_WORD_BYTES {
                continue;
            }
            let mut map = shard.lock().expect("cache lock");
            if map.len() < CACHE_WORDS / SHARDS {
                map.insert(word.to_string(), word_ids);
            }
        }
        Ok(())
    }
}

fn shard_of(word: &str) -> usize {
    let h = word.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % SHARDS as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        use crate::pack::tokenizer::tests::{corpus, small};
        crate::pack::tokenizer::train(&corpus(), &small()).unwrap()
    }

    fn lowercased() -> Tokenizer {
        use crate::pack::tokenizer::tests::{corpus, small};
        let config = crate::pack::tokenizer::TokenizerConfig {
            lowercase: true,
            ..small()
        };
        crate::pack::tokenizer::train(&corpus(), &config).unwrap()
    }

    const TRICKY: &[&str] = &[
        "",
        " ",
        "\n\n\t \x0B\x0C\r",
        "a",
        "  leading and trailing  ",
        "Seen by [Name] at [Company].",
        "[Name][Name]x[LOC]  [MISC]",
        "x[Name]y z[#]9",
        "ends with a tag [Name]",
        "[Name] starts with a tag",
        "literal </s> and <pad> and <unk> and <extra_id_0> and <extra_id_99>x",
        "</s>",
        "digits 2151-7-16 10:45 120/80 0.5mg 1,000 x2 3x",
        "punctuation!!! ... ,,, ;; -- (paren) [bracket] {brace} \"quote\" 'single' `tick`",
        "Zebra QUIXOTIC jq vwx -- words the model never saw: qqqq zzzz",
        "tabs\tand\nnew\r\nlines\x0Band\x0Cfeeds",
        "control \x01\x02 chars \x7f stay",
        "separators\x1cfile\x1dgroup\x1erecord\x1funit \x1c \x1f",
        "  [Name]  ",
        "[Nam e] [name] [NAME] [Name",
        "mixed ascii and non-ascii: café naïve Straße ﬁne ①",
        "non-breaking\u{a0}space",
    ];

    #[test]
    fn fast_path_gives_the_tokenizers_ids() {
        fast_path_matches(&tokenizer());
        // `--lowercase` keeps the fast path: lowercasing acts on each word alone.
        fast_path_matches(&lowercased());
    }

    fn fast_path_matches(tok: &Tokenizer) {
        let tok = tok.clone();
        let encoder = Encoder::new(&tok);
        assert!(
            encoder.is_fast(),
            "ehrprep's own tokenizer takes the fast path"
        );
        let mut texts: Vec<String> = TRICKY.iter().map(|s| s.to_string()).collect();
        let mut rng = ehrprep_data::rng::Rng::new(3);
        let alphabet: Vec<String> = " \t\n\x0B\x0C\r\x1c\x1fabc XYZ019.,-/[]<>#_:;'\"()!?"
            .chars()
            .map(String::from)
            .collect();
        let alphabet: Vec<&str> = alphabet.iter().map(String::as_str).collect();
        for _ in 0..2000 {
            let len = rng.range(0, 60);
            let mut s: String = (0..len).map(|_| rng.pick(&alphabet)).collect();
            if rng.range(0, 3) == 0 {
                let at = rng.range(0, s.len() as u64) as usize;
                s.insert_str(at, rng.pick(&crate::corpus::normalize::TAGS));
            }
            texts.push(s);
        }
        // Twice: the second pass reads every word from the cache.
        for _ in 0..2 {
            let fast = encoder.encode_batch(&texts).unwrap();
            for (text, ids) in texts.iter().zip(fast) {
                let want = tok.encode(text.as_str(), true).unwrap().get_ids().to_vec();
                assert_eq!(ids, want, "{text:?}");
            }
        }
    }

    #[test]
    fn other_pipelines_take_the_tokenizer_path() {
        let mut tok = tokenizer();
        tok.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
        let encoder = Encoder::new(&tok);
        assert!(!encoder.is_fast());
        let text = "Seen by [Name] at 10:45";
        assert_eq!(
            encoder.encode(text).unwrap(),
            tok.encode(text, true).unwrap().get_ids().to_vec()
        );
    }
}
