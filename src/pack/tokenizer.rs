//! The tokenizer: a SentencePiece-style Unigram model trained with Hugging Face `tokenizers`
//! in T5's layout (pad 0, `</s>` 1, `<unk>` 2, `<extra_id_99>` ... `<extra_id_0>` after the
//! pieces, so `<extra_id_0>` is the last sentinel id), plus the de-identification tags as
//! added tokens so each is one id.
//!
//! The result is written as `tokenizer.json` plus the Hugging Face config files, so
//! `tokenizers.Tokenizer.from_file` and `transformers.T5TokenizerFast` load it and produce
//! the ids ehrprep produces.

use std::collections::BTreeMap;
use std::path::Path;

use foldhash::HashMap;
use rayon::prelude::*;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::normalizers::{
    Lowercase, NFKC, NormalizerWrapper, Replace, Sequence as NormalizerSequence, Strip,
};
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::punctuation::Punctuation;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizedString,
    PreTokenizer, SplitDelimiterBehavior, Tokenizer,
};

use crate::corpus::normalize::TAGS;
use crate::fsutil::hex;
use crate::{Error, Result};

pub const PAD: &str = "<pad>";
pub const EOS: &str = "</s>";
pub const UNK: &str = "<unk>";
/// Number of `<extra_id_N>` sentinels.
pub const SENTINELS: u32 = 100;

/// Tokenizer training settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenizerConfig {
    /// Pieces of the Unigram model, special tokens included (T5: 32,000).
    pub vocab_size: u32,
    /// Characters of corpus text to train on, taken evenly across the corpus.
    pub sample_chars: usize,
    /// Characters seen fewer times than this in the sample are dropped before training:
    /// the trainer forces every character it sees into the vocabulary.
    pub min_char_count: u64,
    /// Lowercase before everything else, as the paper's Clinical-T5-Base was trained (by a
    /// mistake in its script; its Large model and its advice are cased). Off by default.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub lowercase: bool,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        TokenizerConfig {
            vocab_size: 32_000,
            sample_chars: 200_000_000,
            min_char_count: 50,
            lowercase: false,
        }
    }
}

fn tk_error(doing: &str) -> impl FnOnce(tokenizers::Error) -> Error + '_ {
    move |e| Error::Invalid(format!("tokenizer: {doing}: {e}"))
}

/// A fresh pipeline, the paper's: NFKC (lowercased on request) and whitespace collapse;
/// Metaspace, then punctuation and digits split off one character at a time; `</s>` at the
/// end of every sequence.
fn pipeline(model: Unigram, lowercase: bool) -> Result<Tokenizer> {
    let mut tok = Tokenizer::new(model);
    let case: Vec<NormalizerWrapper> = if lowercase {
        vec![Lowercase.into()]
    } else {
        Vec::new()
    };
    tok.with_normalizer(Some(NormalizerSequence::new(
        [
            case,
            vec![
                NFKC.into(),
                Replace::new(
                    tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
                    " ",
                )
                .map_err(tk_error("building the normalizer"))?
                .into(),
                Strip::new(true, true).into(),
            ],
        ]
        .concat(),
    )));
    tok.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        Metaspace::new('▁', PrependScheme::Always, true).into(),
        Punctuation::new(SplitDelimiterBehavior::Isolated).into(),
        Digits::new(true).into(),
    ])));
    tok.with_decoder(Some(MetaspaceDecoder::new(
        '▁',
        PrependScheme::Always,
        true,
    )));
    Ok(tok)
}

/// ehrprep's pipeline around an empty model, cased or lowercased, to compare a loaded
/// tokenizer's parts with.
pub(crate) fn pipeline_parts(lowercase: bool) -> Result<Tokenizer> {
    pipeline(Unigram::default(), lowercase)
}

/// Removes characters rarer than `min_count` from the training texts (and the tags, which
/// become added tokens and need no pieces).
pub fn clean_sample(texts: &[String], min_count: u64) -> Vec<String> {
    let mut counts: BTreeMap<char, u64> = BTreeMap::new();
    for t in texts {
        for c in t.chars() {
            *counts.entry(c).or_default() += 1;
        }
    }
    texts
        .iter()
        .map(|t| {
            let mut t = t.clone();
            for tag in TAGS {
                t = t.replace(tag, " ");
            }
            t.chars()
                .filter(|c| counts.get(c).copied().unwrap_or(0) >= min_count)
                .collect()
        })
        .collect()
}

/// Trains a tokenizer on `texts` (already sampled) and lays it out like T5's.
pub fn train(texts: &[String], config: &TokenizerConfig) -> Result<Tokenizer> {
    let sample = clean_sample(texts, config.min_char_count);
    let words = word_counts(
        &pipeline(Unigram::default(), config.lowercase)?,
        &sample,
        config.lowercase,
    )?;
    train_on_words(trainer_words(words), config)
}

/// The trainer run on the given words with their counts, laid out like T5's.
fn train_on_words(words: Vec<(String, u32)>, config: &TokenizerConfig) -> Result<Tokenizer> {
    let trainer = unigram_trainer(config)?;
    let mut model = Unigram::default();
    let special = serial(|| trainer.do_train(words, &mut model)).map_err(tk_error("training"))?;
    let mut tok = pipeline(model, config.lowercase)?;
    tok.add_special_tokens(&special);
    canonicalize(&mut tok)?;
    finish_layout(&mut tok)?;
    Ok(tok)
}

fn unigram_trainer(config: &TokenizerConfig) -> Result<UnigramTrainer> {
    UnigramTrainer::builder()
        .show_progress(false)
        .vocab_size(config.vocab_size)
        .special_tokens(vec![
            AddedToken::from(PAD, true),
            AddedToken::from(EOS, true),
            AddedToken::from(UNK, true),
        ])
        .unk_token(Some(UNK.to_string()))
        .max_piece_length(16)
        .build()
        .map_err(|e| Error::Invalid(format!("tokenizer: configuring the trainer: {e}")))
}

/// Runs `f` with the `tokenizers` parallelism off: parallel EM sums floats in a varying
/// order, serial training gives the same tokenizer every time. The switch is process-wide,
/// hence the lock.
fn serial<T>(f: impl FnOnce() -> T) -> T {
    static TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let parallel = tokenizers::utils::parallelism::get_parallelism();
    tokenizers::utils::parallelism::set_parallelism(false);
    let out = f();
    tokenizers::utils::parallelism::set_parallelism(parallel);
    out
}

/// What the normalizer's `\s` (and `Strip`) match in ASCII text: word boundaries for the
/// direct paths in training and in `encoder`.
pub(crate) const ASCII_WHITESPACE: [char; 6] = [' ', '\t', '\n', '\x0B', '\x0C', '\r'];

/// The trainer's words: [`word_counts`], plus for each word seen more than once the same
/// word followed by `▁` with count 0.
///
/// Why: the trainer's seed pieces are the substrings that occur in two places with different
/// characters after them in the list of distinct words (`\0` ends each), whatever the words'
/// counts. A word that is not the start of another distinct word, like `▁left` or `▁of`,
/// never qualifies however often it occurs, and the tokenizer spells it in fragments. The
/// zero-count copy makes every repeated word a seed; it adds nothing to the counts the pieces
/// are chosen by, and no substring ending in that `▁` can be a seed (`\0` always follows it).
fn trainer_words(words: Vec<(String, u32)>) -> Vec<(String, u32)> {
    let mut out = Vec::with_capacity(words.len() * 2);
    for (word, n) in words {
        if n > 1 {
            out.push((format!("{word}▁"), 0));
        }
        out.push((word, n));
    }
    out
}

/// The trainer's input: each pre-tokenized word of the sample with its count, sorted. The
/// same words the tokenizer's own pipeline gives (normalizer, then pre-tokenizer), counted
/// in parallel; ASCII text takes a direct path (NFKC is the identity there, whitespace runs
/// separate words, each word gets `▁` and its punctuation and digits are split off one by
/// one), which tests hold to the pipeline's words.
fn word_counts(tok: &Tokenizer, sample: &[String], lowercase: bool) -> Result<Vec<(String, u32)>> {
    let counts = sample
        .par_iter()
        .try_fold(HashMap::<String, u32>::default, |mut counts, text| {
            for word in pre_tokenized_words(tok, text, lowercase)? {
                *counts.entry(word).or_default() += 1;
            }
            Ok::<_, Error>(counts)
        })
        .try_reduce(HashMap::default, |mut a, b| {
            for (word, n) in b {
                *a.entry(word).or_default() += n;
            }
            Ok(a)
        })?;
    let mut words: Vec<(String, u32)> = counts.into_iter().collect();
    words.sort_unstable();
    Ok(words)
}

/// The words the trainer sees for one text.
fn pre_tokenized_words(tok: &Tokenizer, text: &str, lowercase: bool) -> Result<Vec<String>> {
    if text.is_ascii() {
        let mut words = Vec::new();
        for w in text.split(ASCII_WHITESPACE).filter(|w| !w.is_empty()) {
            let mut current = String::from("▁");
            for c in w.chars() {
                let c = if lowercase { c.to_ascii_lowercase() } else { c };
                if c.is_ascii_digit() || c.is_ascii_punctuation() {
                    if !current.is_empty() {
                        words.push(std::mem::take(&mut current));
                    }
                    words.push(c.to_string());
                } else {
                    current.push(c);
                }
            }
            if !current.is_empty() {
                words.push(current);
            }
        }
        return Ok(words);
    }
    pipeline_words(tok, text)
}

/// The words of `text` through the tokenizer's normalizer and pre-tokenizer (what
/// `Tokenizer::train` feeds the trainer when there are no added tokens).
fn pipeline_words(tok: &Tokenizer, text: &str) -> Result<Vec<String>> {
    let mut normalized = NormalizedString::from(text);
    if let Some(n) = tok.get_normalizer() {
        n.normalize(&mut normalized)
            .map_err(tk_error("normalizing the sample"))?;
    }
    let mut pre = PreTokenizedString::from(normalized);
    if let Some(p) = tok.get_pre_tokenizer() {
        p.pre_tokenize(&mut pre)
            .map_err(tk_error("pre-tokenizing the sample"))?;
    }
    Ok(pre
        .get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(s, _, _)| s.to_owned())
        .collect())
}

/// Makes the trained vocabulary independent of hash-map order inside the trainer. The
/// characters it must keep but never scored get `min_score + k * 1e-4` with `k` in hash
/// order: those scores are handed out again in character order. Scores also carry float
/// noise from summing counts in hash order: they are rounded to 1e-6, and pieces sorted by
/// score, ties by text.
fn canonicalize(tok: &mut Tokenizer) -> Result<()> {
    let tokenizers::models::ModelWrapper::Unigram(model) = tok.get_model() else {
        return Ok(());
    };
    let mut vocab: Vec<(String, f64)> = model.iter().cloned().collect();
    // Ids 0..3 are <pad>, </s>, <unk>; the pieces follow.
    let pieces = &mut vocab[3..];
    let min = pieces.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let singles = pieces.iter().filter(|p| p.0.chars().count() == 1).count();
    let ceiling = min + 1e-4 * singles as f64 + 1e-9;
    let mut forced: Vec<usize> = (0..pieces.len())
        .filter(|&i| pieces[i].0.chars().count() == 1 && pieces[i].1 <= ceiling)
        .collect();
    let mut scores: Vec<f64> = forced.iter().map(|&i| pieces[i].1).collect();
    let mut chars: Vec<String> = forced.iter().map(|&i| pieces[i].0.clone()).collect();
    scores.sort_by(f64::total_cmp);
    chars.sort();
    forced.sort_unstable();
    for ((i, c), score) in forced.into_iter().zip(chars).zip(scores) {
        pieces[i] = (c, score);
    }
    for (_, score) in pieces.iter_mut() {
        *score = (*score * 1e6).round() / 1e6;
    }
    pieces.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let unk = tok.token_to_id(UNK).map(|id| id as usize);
    let model = Unigram::from(vocab, unk, false).map_err(tk_error("rebuilding the model"))?;
    tok.with_model(model);
    Ok(())
}

/// Adds what ehrprep needs to any tokenizer: `</s>` at the end of each sequence, the
/// sentinels (`<extra_id_99>` first, so `<extra_id_0>` gets the highest id) and the tags.
/// Tokens already present are left where they are. Refuses a tokenizer that cannot work.
pub fn finish_layout(tok: &mut Tokenizer) -> Result<()> {
    let eos = tok.token_to_id(EOS).ok_or_else(|| {
        Error::Invalid(format!(
            "the tokenizer has no `{EOS}` token; T5 needs one to end sequences"
        ))
    })?;
    let base = tok.get_vocab_size(false) as u32;
    if base < 2 * SENTINELS {
        return Err(Error::Invalid(format!(
            "the tokenizer has only {base} pieces; it needs far more than the {SENTINELS} sentinels"
        )));
    }
    let missing: Vec<AddedToken> = (0..SENTINELS)
        .rev()
        .map(|i| format!("<extra_id_{i}>"))
        .filter(|t| tok.token_to_id(t).is_none())
        .map(|t| AddedToken::from(t, true))
        .collect();
    tok.add_special_tokens(&missing);
    let tags: Vec<AddedToken> = TAGS
        .iter()
        .filter(|t| tok.token_to_id(t).is_none())
        .map(|t| AddedToken::from(t.to_string(), false).normalized(false))
        .collect();
    tok.add_tokens(&tags);
    let post = TemplateProcessing::builder()
        .try_single(format!("$A {EOS}"))
        .and_then(|b| b.try_pair(format!("$A {EOS} $B {EOS}")))
        .map_err(|e| Error::Invalid(format!("tokenizer: {e}")))?
        .special_tokens(vec![(EOS.to_string(), eos)])
        .build()
        .map_err(|e| Error::Invalid(format!("tokenizer: {e}")))?;
    tok.with_post_processor(Some(post));
    let s0 = sentinel0(tok)?;
    for i in 1..SENTINELS {
        if tok.token_to_id(&format!("<extra_id_{i}>")) != Some(s0 - i) {
            return Err(Error::Invalid(format!(
                "the tokenizer's sentinels are not consecutive: `<extra_id_{i}>` should be {}",
                s0 - i
            )));
        }
    }
    Ok(())
}

/// The id of `<extra_id_0>`; sentinels count down from it.
pub fn sentinel0(tok: &Tokenizer) -> Result<u32> {
    tok.token_to_id("<extra_id_0>")
        .ok_or_else(|| Error::Invalid("the tokenizer has no `<extra_id_0>`".to_string()))
}

/// Loads a tokenizer (for `--tokenizer`) and completes its layout.
pub fn load(path: &Path) -> Result<Tokenizer> {
    let file = if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.to_path_buf()
    };
    let mut tok = Tokenizer::from_file(&file).map_err(|e| {
        Error::Invalid(format!("`{}` is not a tokenizer.json: {e}", file.display()))
    })?;
    finish_layout(&mut tok)?;
    Ok(tok)
}

/// Writes `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` into
/// `dir`; returns the sha256 of `tokenizer.json`.
pub fn save(tok: &Tokenizer, dir: &Path, model_max_length: usize) -> Result<String> {
    crate::fsutil::create_private_dir(dir)?;
    let json = tok.to_string(true).map_err(tk_error("serializing"))?;
    let extra: Vec<String> = (0..SENTINELS).map(|i| format!("<extra_id_{i}>")).collect();
    let special = json!({
        "eos_token": EOS, "unk_token": UNK, "pad_token": PAD,
        "additional_special_tokens": extra,
    });
    let config = json!({
        "tokenizer_class": "T5Tokenizer",
        "eos_token": EOS, "unk_token": UNK, "pad_token": PAD,
        "extra_ids": SENTINELS,
        "additional_special_tokens": extra,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": false,
    });
    for (name, text) in [
        ("tokenizer.json", json.clone()),
        (
            "special_tokens_map.json",
            serde_json::to_string_pretty(&special).expect("json"),
        ),
        (
            "tokenizer_config.json",
            serde_json::to_string_pretty(&config).expect("json"),
        ),
    ] {
        crate::fsutil::write_atomic(&dir.join(name), text.as_bytes())?;
    }
    Ok(hex(&Sha256::digest(json.as_bytes())))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Words built from syllables: enough distinct pieces for a few hundred-piece vocabulary.
    pub(crate) fn corpus() -> Vec<String> {
        const SYLLABLES: &[&str] = &[
            "car", "dio", "pul", "mo", "nary", "hep", "ato", "neph", "ro", "gas", "tro", "en",
            "ter", "itis", "ectomy", "scopy", "hyper", "hypo", "tension", "glyc", "emia", "brady",
            "tachy", "cardia", "osis", "derm", "neuro", "logy", "pneu", "monia",
        ];
        let mut rng = ehrprep_data::rng::Rng::new(3);
        (0..400)
            .map(|i| {
                let body: Vec<String> = (0..60)
                    .map(|_| {
                        (0..rng.range(1, 3))
                            .map(|_| rng.pick(SYLLABLES))
                            .collect::<String>()
                    })
                    .collect();
                format!(
                    "Note {i}: Seen by [Name] at [Company]. {} HR {} BP 120/80.",
                    body.join(" "),
                    60 + i % 40
                )
            })
            .collect()
    }

    #[test]
    fn word_counts_are_the_pipelines_words_counted() {
        let tok = pipeline(Unigram::default(), false).unwrap();
        let sample = clean_sample(&corpus(), small().min_char_count);
        let mut expected: BTreeMap<String, u32> = BTreeMap::new();
        for text in &sample {
            for word in pipeline_words(&tok, text).unwrap() {
                *expected.entry(word).or_default() += 1;
            }
        }
        let expected: Vec<(String, u32)> = expected.into_iter().collect();
        assert_eq!(word_counts(&tok, &sample, false).unwrap(), expected);
    }

    #[test]
    fn without_seed_copies_training_is_tokenizers_own() {
        // `Tokenizer::train` feeds the trainer the pipeline's words: given the same words
        // without the zero-count copies, the trainer must give exactly its tokenizer.
        let config = small();
        let sample = clean_sample(&corpus(), config.min_char_count);
        let mut reference = pipeline(Unigram::default(), false).unwrap();
        let mut trainer =
            tokenizers::models::TrainerWrapper::UnigramTrainer(unigram_trainer(&config).unwrap());
        serial(|| reference.train(&mut trainer, sample.iter()).map(|_| ())).unwrap();
        canonicalize(&mut reference).unwrap();
        finish_layout(&mut reference).unwrap();

        let words = word_counts(
            &pipeline(Unigram::default(), false).unwrap(),
            &sample,
            false,
        )
        .unwrap();
        let ours = train_on_words(words, &config).unwrap();
        assert_eq!(
            ours.to_string(true).unwrap(),
            reference.to_string(true).unwrap()
        );
    }

    #[test]
    fn repeated_whole_words_become_pieces() {
        // `▁pleural` and `▁left` start no other word of this corpus; each is frequent.
        let texts: Vec<String> = corpus()
            .into_iter()
            .enumerate()
            .map(|(i, t)| format!("{t} small left pleural effusion{}", i % 7))
            .collect();
        let tok = train(&texts, &small()).unwrap();
        for word in ["left", "pleural", "small"] {
            let enc = tok.encode(word, false).unwrap();
            assert_eq!(enc.get_tokens(), [format!("▁{word}")], "{word}");
        }
        // The zero-count copies carry no weight: each word keeps its count.
        let words = trainer_words(vec![("▁a".into(), 1), ("▁b".into(), 5)]);
        assert_eq!(
            words,
            [("▁a".into(), 1), ("▁b▁".into(), 0), ("▁b".into(), 5)]
        );
    }

    #[test]
    fn punctuation_and_digits_split_off_as_the_papers_pre_tokenizer() {
        let words = |lowercase| {
            let tok = pipeline(Unigram::default(), lowercase).unwrap();
            pipeline_words(&tok, "BP 120/80, Pt. OK").unwrap()
        };
        assert_eq!(
            words(false),
            [
                "▁BP", "▁", "1", "2", "0", "/", "8", "0", ",", "▁Pt", ".", "▁OK"
            ]
        );
        assert_eq!(words(true)[0], "▁bp");
        assert_eq!(words(true)[11], "▁ok");
    }

    #[test]
    fn direct_words_are_the_pipelines_words() {
        for lowercase in [false, true] {
            direct_words_match(lowercase);
        }
    }

    fn direct_words_match(lowercase: bool) {
        let tok = pipeline(Unigram::default(), lowercase).unwrap();
        let mut texts = corpus();
        texts.extend(
            [
                "",
                "  ",
                "a1b22c 333 x9 9x 1.5mg 10:45 -- 120/80",
                "\ttabs\nand\r\nlines\x0Bvt\x0Cff  end ",
                "punct!!! (x) [y] {z} \"q\" 'r' `s` ~ ^ | \\ / < >",
                "control \x01\x02 \x7f chars \x1c\x1d\x1e\x1f seps",
                "ünïcode ﬁne ① ２３ and\u{a0}nbsp",
                "Pt. SEEN @ 08:00, BP 120/80; [**Name**] -- ok?! x,y,z.",
                ", . ; lone punctuation ... and (parens)",
            ]
            .map(String::from),
        );
        for text in &texts {
            assert_eq!(
                pre_tokenized_words(&tok, text, lowercase).unwrap(),
                pipeline_words(&tok, text).unwrap(),
                "{text:?}"
            );
        }
    }

    pub(crate) fn small() -> TokenizerConfig {
        TokenizerConfig {
            vocab_size: 300,
            sample_chars: usize::MAX,
            min_char_count: 2,
            lowercase: false,
        }
    }

    #[test]
    fn layout_matches_t5() {
        let tok = train(&corpus(), &small()).unwrap();
        assert_eq!(tok.token_to_id(PAD), Some(0));
        assert_eq!(tok.token_to_id(EOS), Some(1));
        assert_eq!(tok.token_to_id(UNK), Some(2));
        let pieces = tok.get_vocab_size(false) as u32;
        assert_eq!(tok.token_to_id("<extra_id_99>"), Some(pieces));
        assert_eq!(sentinel0(&tok).unwrap(), pieces + SENTINELS - 1);
        for (i, tag) in TAGS.iter().enumerate() {
            assert_eq!(
                tok.token_to_id(tag),
                Some(pieces + SENTINELS + i as u32),
                "{tag}"
            );
        }
        let enc = tok
            .encode("Seen by [Name] at [Company] on 2151", true)
            .unwrap();
        let ids = enc.get_ids();
        assert_eq!(*ids.last().unwrap(), 1, "ends with </s>");
        assert!(ids.contains(&tok.token_to_id("[Name]").unwrap()));
        // Single digits: `2151` is four tokens (one may carry the `▁`).
        let digits = enc
            .get_tokens()
            .iter()
            .filter(|t| {
                t.trim_start_matches('▁').len() == 1 && t.chars().last().unwrap().is_ascii_digit()
            })
            .count();
        assert_eq!(digits, 4, "{:?}", enc.get_tokens());
    }

    #[test]
    fn training_is_deterministic() {
        let a = train(&corpus(), &small())
            .unwrap()
            .to_string(false)
            .unwrap();
        let b = train(&corpus(), &small())
            .unwrap()
            .to_string(false)
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn rare_characters_and_tags_leave_the_sample() {
        let texts = vec!["aaa µ [Name] b".to_string(), "aaa b".to_string()];
        let cleaned = clean_sample(&texts, 2);
        assert_eq!(cleaned[0], "aaa    b");
    }

    #[test]
    fn unusable_tokenizers_are_refused() {
        let mut tok = pipeline(Unigram::default(), false).unwrap();
        let err = finish_layout(&mut tok).unwrap_err().to_string();
        assert!(err.contains("</s>"), "{err}");
    }
}
