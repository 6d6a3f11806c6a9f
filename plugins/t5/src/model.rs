//! T5 (v1.0 and v1.1) in libtorch, with Hugging Face's parameter names so checkpoints move
//! freely between ehrprep and `transformers`.
//!
//! Numerics follow `transformers.T5ForConditionalGeneration`: RMS layer norm with the
//! variance in f32, no 1/sqrt(d_kv) attention scaling, a relative position bias computed
//! by block 0 of each stack and shared by the rest, pre-norm residuals, and the d_model^-0.5
//! output scaling when embeddings are tied. Weights are f32; `compute` (bf16 on CUDA) is
//! the kind matmuls run in.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

/// The fields of a Hugging Face T5 `config.json` that define the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    pub vocab_size: i64,
    pub d_model: i64,
    pub d_kv: i64,
    pub d_ff: i64,
    pub num_layers: i64,
    #[serde(default)]
    pub num_decoder_layers: Option<i64>,
    pub num_heads: i64,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: i64,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: i64,
    #[serde(default = "default_dropout")]
    pub dropout_rate: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "one")]
    pub initializer_factor: f64,
    #[serde(default = "default_ff")]
    pub feed_forward_proj: String,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub pad_token_id: i64,
    #[serde(default = "one_i")]
    pub eos_token_id: i64,
    #[serde(default)]
    pub decoder_start_token_id: i64,
}

fn default_buckets() -> i64 {
    32
}
fn default_max_distance() -> i64 {
    128
}
fn default_dropout() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-6
}
fn one() -> f64 {
    1.0
}
fn one_i() -> i64 {
    1
}
fn default_ff() -> String {
    "relu".into()
}
fn yes() -> bool {
    true
}

impl T5Config {
    /// A named size: the original T5 (v1.0: relu, tied), T5 v1.1 (gated-gelu, untied), or
    /// `tiny` for tests.
    pub fn preset(name: &str) -> Option<T5Config> {
        // (d_model, d_kv, d_ff, layers, heads, v1.1)
        let (d_model, d_kv, d_ff, layers, heads, v11) = match name {
            "tiny" => (64, 16, 128, 2, 4, false),
            "tiny-v1_1" => (64, 16, 96, 2, 4, true),
            "t5-small" => (512, 64, 2048, 6, 8, false),
            "t5-base" => (768, 64, 3072, 12, 12, false),
            "t5-large" => (1024, 64, 4096, 24, 16, false),
            "t5-v1_1-small" => (512, 64, 1024, 8, 6, true),
            "t5-v1_1-base" => (768, 64, 2048, 12, 12, true),
            "t5-v1_1-large" => (1024, 64, 2816, 24, 16, true),
            _ => return None,
        };
        Some(T5Config {
            // T5's; pretraining sizes a preset to its tokenizer instead.
            vocab_size: 32128,
            d_model,
            d_kv,
            d_ff,
            num_layers: layers,
            num_decoder_layers: Some(layers),
            num_heads: heads,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            dropout_rate: 0.1,
            layer_norm_epsilon: 1e-6,
            initializer_factor: 1.0,
            feed_forward_proj: if v11 { "gated-gelu" } else { "relu" }.into(),
            tie_word_embeddings: !v11,
            pad_token_id: 0,
            eos_token_id: 1,
            decoder_start_token_id: 0,
        })
    }

    pub const PRESETS: &[&str] = &[
        "tiny",
        "tiny-v1_1",
        "t5-small",
        "t5-base",
        "t5-large",
        "t5-v1_1-small",
        "t5-v1_1-base",
        "t5-v1_1-large",
    ];

    pub fn gated(&self) -> bool {
        self.feed_forward_proj.starts_with("gated")
    }

    pub fn decoder_layers(&self) -> i64 {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    pub fn check(&self) -> Result<(), String> {
        match self.feed_forward_proj.as_str() {
            "relu" | "gated-gelu" => {}
            other => {
                return Err(format!(
                    "feed_forward_proj `{other}` is not supported (relu, gated-gelu)"
                ));
            }
        }
        if self.vocab_size < 1
            || self.d_model < 1
            || self.num_heads < 1
            || self.d_kv < 1
            || self.d_ff < 1
            || self.num_layers < 1
            || self.decoder_layers() < 1
        {
            return Err("config has a zero-sized dimension".into());
        }
        Ok(())
    }

    pub fn read(dir: &Path) -> Result<T5Config, String> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading `{}`: {e}", path.display()))?;
        let config: T5Config = serde_json::from_str(&text)
            .map_err(|e| format!("`{}` is not a T5 config: {e}", path.display()))?;
        config.check()?;
        Ok(config)
    }

    /// The config as `transformers` expects it in a checkpoint directory.
    pub fn to_hf_json(&self) -> String {
        let mut value = serde_json::to_value(self).expect("config serializes");
        let object = value.as_object_mut().expect("an object");
        object.insert("model_type".into(), "t5".into());
        object.insert(
            "architectures".into(),
            serde_json::json!(["T5ForConditionalGeneration"]),
        );
        object.insert("is_encoder_decoder".into(), true.into());
        object.insert(
            "dense_act_fn".into(),
            if self.gated() { "gelu_new" } else { "relu" }.into(),
        );
        object.insert("is_gated_act".into(), self.gated().into());
        serde_json::to_string_pretty(&value).expect("config serializes")
    }

    /// Parameters, for FLOPs estimates.
    pub fn parameters(&self) -> i64 {
        let inner = self.num_heads * self.d_kv;
        let attn = 4 * self.d_model * inner;
        let ff = if self.gated() { 3 } else { 2 } * self.d_model * self.d_ff;
        let enc = self.num_layers * (attn + ff + 2 * self.d_model);
        let dec = self.decoder_layers() * (2 * attn + ff + 3 * self.d_model);
        let emb = self.vocab_size * self.d_model * if self.tie_word_embeddings { 1 } else { 2 };
        enc + dec + emb
    }
}

struct Attention {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    relative_bias: Option<Tensor>,
    heads: i64,
    d_kv: i64,
}

enum FeedForward {
    Relu {
        wi: Tensor,
        wo: Tensor,
    },
    Gated {
        wi_0: Tensor,
        wi_1: Tensor,
        wo: Tensor,
    },
}

struct Block {
    self_attention: Attention,
    self_norm: Tensor,
    cross: Option<(Attention, Tensor)>,
    ff: FeedForward,
    ff_norm: Tensor,
}

struct Stack {
    blocks: Vec<Block>,
    final_norm: Tensor,
    causal: bool,
}

/// A T5ForConditionalGeneration.
pub struct T5 {
    pub config: T5Config,
    shared: Tensor,
    lm_head: Option<Tensor>,
    encoder: Stack,
    decoder: Stack,
    /// The kind matmuls run in (f32, or bf16 on CUDA).
    pub compute: Kind,
}

fn normal(std: f64) -> nn::Init {
    nn::Init::Randn {
        mean: 0.0,
        stdev: std,
    }
}

impl Attention {
    fn new(p: nn::Path, c: &T5Config, relative_bias: bool) -> Attention {
        let f = c.initializer_factor;
        let inner = c.num_heads * c.d_kv;
        let dm = c.d_model as f64;
        Attention {
            q: (&p / "q").var(
                "weight",
                &[inner, c.d_model],
                normal(f * (dm * c.d_kv as f64).powf(-0.5)),
            ),
            k: (&p / "k").var("weight", &[inner, c.d_model], normal(f * dm.powf(-0.5))),
            v: (&p / "v").var("weight", &[inner, c.d_model], normal(f * dm.powf(-0.5))),
            o: (&p / "o").var(
                "weight",
                &[c.d_model, inner],
                normal(f * (inner as f64).powf(-0.5)),
            ),
            relative_bias: relative_bias.then(|| {
                (&p / "relative_attention_bias").var(
                    "weight",
                    &[c.relative_attention_num_buckets, c.num_heads],
                    normal(f * dm.powf(-0.5)),
                )
            }),
            heads: c.num_heads,
            d_kv: c.d_kv,
        }
    }

    /// [B, T, D] -> [B, H, T, d_kv] through projection `w`.
    fn heads_of(&self, x: &Tensor, w: &Tensor) -> Tensor {
        let (b, t, _) = x.size3().expect("3-d input");
        linear(x, w)
            .view([b, t, self.heads, self.d_kv])
            .transpose(1, 2)
    }

    /// Queries [B, H, Tq, d] over keys and values [B, H, Tk, d]; `bias` [B|1, H, Tq, Tk]
    /// holds position bias and mask. Returns [B, Tq, D].
    fn attend(
        &self,
        q: &Tensor,
        key: &Tensor,
        value: &Tensor,
        bias: &Tensor,
        dropout: f64,
        train: bool,
    ) -> Tensor {
        let (b, _, tq, _) = q.size4().expect("4-d queries");
        // Bias, mask and softmax in f32: the mask's f32::MIN has no bf16 equivalent.
        let scores = q.matmul(&key.transpose(-2, -1)).to_kind(Kind::Float) + bias;
        let weights = scores
            .softmax(-1, Kind::Float)
            .to_kind(q.kind())
            .dropout(dropout, train);
        let out = weights.matmul(value).transpose(1, 2).contiguous().view([
            b,
            tq,
            self.heads * self.d_kv,
        ]);
        linear(&out, &self.o)
    }

    /// `x` [B, Tq, D] attends to `kv` [B, Tk, D].
    fn forward(&self, x: &Tensor, kv: &Tensor, bias: &Tensor, dropout: f64, train: bool) -> Tensor {
        let q = self.heads_of(x, &self.q);
        let key = self.heads_of(kv, &self.k);
        let value = self.heads_of(kv, &self.v);
        self.attend(&q, &key, &value, bias, dropout, train)
    }
}

fn linear(x: &Tensor, w: &Tensor) -> Tensor {
    x.linear::<Tensor>(&w.to_kind(x.kind()), None)
}

/// T5's RMS norm: variance in f32, no mean, no bias.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let k = x.kind();
    let xf = x.to_kind(Kind::Float);
    let variance = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    (weight * (xf * (variance + eps).rsqrt())).to_kind(k)
}

impl FeedForward {
    fn new(p: nn::Path, c: &T5Config) -> FeedForward {
        let f = c.initializer_factor;
        let wi_std = f * (c.d_model as f64).powf(-0.5);
        let wo = (&p / "wo").var(
            "weight",
            &[c.d_model, c.d_ff],
            normal(f * (c.d_ff as f64).powf(-0.5)),
        );
        if c.gated() {
            FeedForward::Gated {
                wi_0: (&p / "wi_0").var("weight", &[c.d_ff, c.d_model], normal(wi_std)),
                wi_1: (&p / "wi_1").var("weight", &[c.d_ff, c.d_model], normal(wi_std)),
                wo,
            }
        } else {
            FeedForward::Relu {
                wi: (&p / "wi").var("weight", &[c.d_ff, c.d_model], normal(wi_std)),
                wo,
            }
        }
    }

    fn forward(&self, x: &Tensor, dropout: f64, train: bool) -> Tensor {
        match self {
            FeedForward::Relu { wi, wo } => {
                linear(&linear(x, wi).relu().dropout(dropout, train), wo)
            }
            FeedForward::Gated { wi_0, wi_1, wo } => {
                let h = linear(x, wi_0).gelu("tanh") * linear(x, wi_1);
                linear(&h.dropout(dropout, train), wo)
            }
        }
    }
}

impl Stack {
    fn new(p: nn::Path, c: &T5Config, decoder: bool) -> Stack {
        let layers = if decoder {
            c.decoder_layers()
        } else {
            c.num_layers
        };
        let ones = nn::Init::Const(1.0);
        let blocks = (0..layers)
            .map(|i| {
                let b = &p / "block" / i / "layer";
                let self_attention = Attention::new(&b / 0 / "SelfAttention", c, i == 0);
                let self_norm = (&b / 0 / "layer_norm").var("weight", &[c.d_model], ones);
                let cross = decoder.then(|| {
                    (
                        Attention::new(&b / 1 / "EncDecAttention", c, false),
                        (&b / 1 / "layer_norm").var("weight", &[c.d_model], ones),
                    )
                });
                let f = if decoder { 2 } else { 1 };
                Block {
                    self_attention,
                    self_norm,
                    cross,
                    ff: FeedForward::new(&b / f / "DenseReluDense", c),
                    ff_norm: (&b / f / "layer_norm").var("weight", &[c.d_model], ones),
                }
            })
            .collect();
        Stack {
            blocks,
            final_norm: (&p / "final_layer_norm").var("weight", &[c.d_model], ones),
            causal: decoder,
        }
    }

    /// The position bias [1, H, Tq, Tk] from block 0's table.
    fn position_bias(&self, c: &T5Config, tq: i64, tk: i64, device: Device) -> Tensor {
        let table = self.blocks[0]
            .self_attention
            .relative_bias
            .as_ref()
            .expect("block 0 has the bias table");
        let context = Tensor::arange(tq, (Kind::Int64, device)).unsqueeze(1);
        let memory = Tensor::arange(tk, (Kind::Int64, device)).unsqueeze(0);
        let buckets = relative_position_bucket(
            &(memory - context),
            !self.causal,
            c.relative_attention_num_buckets,
            c.relative_attention_max_distance,
        );
        Tensor::embedding(table, &buckets, -1, false, false)
            .permute([2, 0, 1])
            .unsqueeze(0)
    }

    fn forward(
        &self,
        c: &T5Config,
        h: Tensor,
        mask: &Tensor,
        memory: Option<(&Tensor, &Tensor)>,
        train: bool,
    ) -> Tensor {
        let (_, t, _) = h.size3().expect("3-d hidden states");
        let device = h.device();
        let dropout = c.dropout_rate;
        let mut bias = self.position_bias(c, t, t, device) + mask_bias(mask);
        if self.causal {
            let future = Tensor::ones([t, t], (Kind::Bool, device)).triu(1);
            bias = bias.masked_fill(&future, f32::MIN as f64);
        }
        let cross_bias = memory.map(|(_, m)| mask_bias(m));
        let mut h = h.dropout(dropout, train);
        for block in &self.blocks {
            let n = rms_norm(&h, &block.self_norm, c.layer_norm_epsilon);
            h = &h
                + block
                    .self_attention
                    .forward(&n, &n, &bias, dropout, train)
                    .dropout(dropout, train);
            if let (Some((attention, norm)), Some((memory, _)), Some(cross_bias)) =
                (&block.cross, memory, &cross_bias)
            {
                let n = rms_norm(&h, norm, c.layer_norm_epsilon);
                h = &h
                    + attention
                        .forward(&n, memory, cross_bias, dropout, train)
                        .dropout(dropout, train);
            }
            let n = rms_norm(&h, &block.ff_norm, c.layer_norm_epsilon);
            h = &h + block.ff.forward(&n, dropout, train).dropout(dropout, train);
        }
        rms_norm(&h, &self.final_norm, c.layer_norm_epsilon).dropout(dropout, train)
    }
}

/// [B, 1, 1, T]: 0 where attended, the most negative f32 where masked.
fn mask_bias(mask: &Tensor) -> Tensor {
    (mask.to_kind(Kind::Float).neg() + 1.0)
        .unsqueeze(1)
        .unsqueeze(1)
        * (f32::MIN as f64)
}

/// T5's bucketing of relative positions (key minus query), as in Mesh TensorFlow and
/// `transformers`: exact buckets for small distances, logarithmic ones up to `max_distance`.
pub fn relative_position_bucket(
    relative: &Tensor,
    bidirectional: bool,
    num_buckets: i64,
    max_distance: i64,
) -> Tensor {
    let mut buckets = relative.zeros_like();
    let mut num_buckets = num_buckets;
    let distance = if bidirectional {
        num_buckets /= 2;
        buckets += relative.gt(0).to_kind(Kind::Int64) * num_buckets;
        relative.abs()
    } else {
        -relative.clamp_max(0)
    };
    let max_exact = num_buckets / 2;
    let is_small = distance.lt(max_exact);
    let large = (distance.to_kind(Kind::Float) / max_exact as f64).log()
        / (max_distance as f64 / max_exact as f64).ln()
        * (num_buckets - max_exact) as f64;
    let large = (large.to_kind(Kind::Int64) + max_exact).clamp_max(num_buckets - 1);
    buckets + distance.where_self(&is_small, &large)
}

impl T5 {
    /// Creates the variables under `vs`'s root with T5's initialization.
    pub fn new(vs: &nn::VarStore, config: T5Config, compute: Kind) -> T5 {
        let root = vs.root();
        let f = config.initializer_factor;
        let shared =
            (&root / "shared").var("weight", &[config.vocab_size, config.d_model], normal(f));
        let lm_head = (!config.tie_word_embeddings).then(|| {
            (&root / "lm_head").var("weight", &[config.vocab_size, config.d_model], normal(f))
        });
        let encoder = Stack::new(&root / "encoder", &config, false);
        let decoder = Stack::new(&root / "decoder", &config, true);
        T5 {
            config,
            shared,
            lm_head,
            encoder,
            decoder,
            compute,
        }
    }

    pub fn encode(&self, input_ids: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let h = Tensor::embedding(&self.shared, input_ids, -1, false, false).to_kind(self.compute);
        self.encoder.forward(&self.config, h, mask, None, train)
    }

    /// Logits [B, T, V] in f32.
    pub fn decode(
        &self,
        decoder_input_ids: &Tensor,
        memory: &Tensor,
        memory_mask: &Tensor,
        train: bool,
    ) -> Tensor {
        let h = Tensor::embedding(&self.shared, decoder_input_ids, -1, false, false)
            .to_kind(self.compute);
        let self_mask = decoder_input_ids.ones_like();
        let mut out = self.decoder.forward(
            &self.config,
            h,
            &self_mask,
            Some((memory, memory_mask)),
            train,
        );
        if self.config.tie_word_embeddings {
            out *= (self.config.d_model as f64).powf(-0.5);
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.shared);
        linear(&out, head).to_kind(Kind::Float)
    }

    /// Logits for `labels` (decoder inputs are the labels shifted right).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        mask: &Tensor,
        labels: &Tensor,
        train: bool,
    ) -> Tensor {
        let memory = self.encode(input_ids, mask, train);
        self.decode(&self.shift_right(labels), &memory, mask, train)
    }

    /// Mean cross-entropy over labels that are not -100.
    pub fn loss(&self, input_ids: &Tensor, mask: &Tensor, labels: &Tensor, train: bool) -> Tensor {
        let logits = self.forward(input_ids, mask, labels, train);
        cross_entropy(&logits, labels)
    }

    pub fn shift_right(&self, labels: &Tensor) -> Tensor {
        let (b, _) = labels.size2().expect("2-d labels");
        let start = Tensor::full(
            [b, 1],
            self.config.decoder_start_token_id,
            (Kind::Int64, labels.device()),
        );
        let shifted = Tensor::cat(&[start, labels.narrow(1, 0, labels.size()[1] - 1)], 1);
        shifted.masked_fill(&shifted.eq(-100), self.config.pad_token_id)
    }
}

/// What incremental decoding keeps between steps: each block's self-attention keys and
/// values so far, and its cross-attention keys and values over the encoder output.
pub struct DecoderCache {
    self_kv: Vec<(Tensor, Tensor)>,
    cross_kv: Vec<(Tensor, Tensor)>,
    memory_bias: Tensor,
    /// Tokens decoded so far.
    pub len: i64,
}

impl DecoderCache {
    /// Keeps rows `index` (a 1-d int64 tensor), in that order: beam search's reordering.
    pub fn select(&mut self, index: &Tensor) {
        let pick = |t: &Tensor| t.index_select(0, index);
        for (k, v) in self.self_kv.iter_mut().chain(self.cross_kv.iter_mut()) {
            *k = pick(k);
            *v = pick(v);
        }
        self.memory_bias = pick(&self.memory_bias);
    }
}

impl T5 {
    /// A cache for decoding against `memory` [B, S, D] (from [`encode`](Self::encode)).
    pub fn start_decoding(&self, memory: &Tensor, memory_mask: &Tensor) -> DecoderCache {
        let (b, _, _) = memory.size3().expect("3-d memory");
        let empty = |a: &Attention| {
            Tensor::zeros([b, a.heads, 0, a.d_kv], (memory.kind(), memory.device()))
        };
        let mut self_kv = Vec::new();
        let mut cross_kv = Vec::new();
        for block in &self.decoder.blocks {
            let a = &block.self_attention;
            self_kv.push((empty(a), empty(a)));
            let (cross, _) = block.cross.as_ref().expect("decoder blocks cross-attend");
            cross_kv.push((
                cross.heads_of(memory, &cross.k),
                cross.heads_of(memory, &cross.v),
            ));
        }
        DecoderCache {
            self_kv,
            cross_kv,
            memory_bias: mask_bias(memory_mask),
            len: 0,
        }
    }

    /// Feeds one token per row ([B] int64) and returns the next-token logits [B, V] (f32).
    pub fn decode_step(&self, tokens: &Tensor, cache: &mut DecoderCache) -> Tensor {
        let c = &self.config;
        let t = cache.len;
        let mut h = Tensor::embedding(&self.shared, &tokens.unsqueeze(1), -1, false, false)
            .to_kind(self.compute);
        // The position bias row of query t over keys 0..=t; no mask needed: no future keys.
        let bias = self
            .decoder
            .position_bias(c, t + 1, t + 1, h.device())
            .narrow(2, t, 1);
        for (i, block) in self.decoder.blocks.iter().enumerate() {
            let a = &block.self_attention;
            let n = rms_norm(&h, &block.self_norm, c.layer_norm_epsilon);
            let (k_old, v_old) = &cache.self_kv[i];
            let key = Tensor::cat(&[k_old, &a.heads_of(&n, &a.k)], 2);
            let value = Tensor::cat(&[v_old, &a.heads_of(&n, &a.v)], 2);
            h = &h + a.attend(&a.heads_of(&n, &a.q), &key, &value, &bias, 0.0, false);
            cache.self_kv[i] = (key, value);
            let (cross, norm) = block.cross.as_ref().expect("decoder blocks cross-attend");
            let n = rms_norm(&h, norm, c.layer_norm_epsilon);
            let (ck, cv) = &cache.cross_kv[i];
            h = &h
                + cross.attend(
                    &cross.heads_of(&n, &cross.q),
                    ck,
                    cv,
                    &cache.memory_bias,
                    0.0,
                    false,
                );
            let n = rms_norm(&h, &block.ff_norm, c.layer_norm_epsilon);
            h = &h + block.ff.forward(&n, 0.0, false);
        }
        cache.len += 1;
        let mut out = rms_norm(&h, &self.decoder.final_norm, c.layer_norm_epsilon);
        if c.tie_word_embeddings {
            out *= (c.d_model as f64).powf(-0.5);
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.shared);
        linear(&out, head).to_kind(Kind::Float).squeeze_dim(1)
    }
}

pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    let v = logits.size()[2];
    logits.view([-1, v]).cross_entropy_loss::<Tensor>(
        &labels.view([-1]),
        None,
        tch::Reduction::Mean,
        -100,
        0.0,
    )
}
