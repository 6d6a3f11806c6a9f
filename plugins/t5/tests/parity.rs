//! Numerical parity with Hugging Face transformers: logits and loss of tiny random T5 v1.0
//! and v1.1 models, from golden data made by `scripts/t5_golden.py`.

use std::collections::HashMap;
use std::path::PathBuf;

use ehrprep_t5::checkpoint::load_hf;
use ehrprep_t5::model::{T5, T5Config};
use tch::{Device, Kind, Tensor, nn};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/t5")
        .join(name)
}

fn check(name: &str) {
    let dir = fixture(name);
    let config = T5Config::read(&dir).unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = T5::new(&vs, config.clone(), Kind::Float);
    load_hf(&mut vs, &dir, config.vocab_size).unwrap();
    let golden: HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("golden.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let logits = tch::no_grad(|| {
        model.forward(
            &golden["input_ids"],
            &golden["attention_mask"],
            &golden["labels"],
            false,
        )
    });
    let expected = &golden["logits"];
    assert_eq!(logits.size(), expected.size());
    let diff = (&logits - expected).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "{name}: logits differ by up to {diff}");
    let loss = ehrprep_t5::model::cross_entropy(&logits, &golden["labels"]).double_value(&[]);
    let want = golden["loss"].double_value(&[0]);
    assert!((loss - want).abs() < 1e-4, "{name}: loss {loss} vs {want}");
}

#[test]
fn t5_v1_0_matches_transformers() {
    check("v1_0");
}

#[test]
fn t5_v1_1_matches_transformers() {
    check("v1_1");
}

#[test]
fn init_from_a_smaller_vocabulary_keeps_its_rows_and_starts_new_ones_at_the_mean() {
    let dir = fixture("v1_0");
    let mut config = T5Config::read(&dir).unwrap();
    let file_vocab = config.vocab_size;
    config.vocab_size = file_vocab + 32;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let _model = T5::new(&vs, config.clone(), Kind::Float);
    load_hf(&mut vs, &dir, file_vocab).unwrap();
    let file: HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let shared = &vs.variables()["shared.weight"];
    let old = &file["shared.weight"];
    assert!(shared.narrow(0, 0, file_vocab).equal(old));
    let mean = old.mean_dim(0, true, Kind::Float);
    let new_rows = shared.narrow(0, file_vocab, 32);
    assert!(new_rows.allclose(&mean.expand([32, config.d_model], false), 1e-6, 1e-6, false));
    // Any other shape mismatch is refused by name.
    let mut wrong = config.clone();
    wrong.d_ff += 1;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let _model = T5::new(&vs, wrong, Kind::Float);
    let err = match load_hf(&mut vs, &dir, file_vocab) {
        Err(ehrprep_plugin_api::CallError::Failed(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert!(
        err.contains("DenseReluDense.wi.weight` has shape [48, 32]; the model expects [49, 32]"),
        "{err}"
    );
}

fn golden(name: &str) -> (T5, HashMap<String, Tensor>) {
    let dir = fixture(name);
    let config = T5Config::read(&dir).unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = T5::new(&vs, config.clone(), Kind::Float);
    load_hf(&mut vs, &dir, config.vocab_size).unwrap();
    let golden = Tensor::read_safetensors(dir.join("golden.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    (model, golden)
}

fn rows_of(t: &Tensor) -> Vec<Vec<i64>> {
    let rows: Vec<Vec<i64>> = Vec::try_from(t).unwrap();
    rows.into_iter()
        .map(|r| r.into_iter().filter(|&x| x >= 0).collect())
        .collect()
}

#[test]
fn cached_decoding_gives_the_full_forward_logits() {
    for name in ["v1_0", "v1_1"] {
        let (model, g) = golden(name);
        let (x, mask, labels) = (&g["input_ids"], &g["attention_mask"], &g["labels"]);
        let full = tch::no_grad(|| model.forward(x, mask, labels, false));
        let decoder_inputs = model.shift_right(labels);
        let memory = tch::no_grad(|| model.encode(x, mask, false));
        let mut cache = model.start_decoding(&memory, mask);
        for t in 0..labels.size()[1] {
            let step = tch::no_grad(|| model.decode_step(&decoder_inputs.select(1, t), &mut cache));
            let diff = (step - full.select(1, t)).abs().max().double_value(&[]);
            assert!(diff < 1e-4, "{name}: step {t} differs by {diff}");
        }
    }
}

#[test]
fn greedy_and_beam_search_match_transformers_generate() {
    for name in ["v1_0", "v1_1"] {
        let (model, g) = golden(name);
        let (x, mask) = (&g["input_ids"], &g["attention_mask"]);
        let greedy = ehrprep_t5::generate::generate(&model, x, mask, 1, 10);
        assert_eq!(greedy, rows_of(&g["greedy"]), "{name}: greedy");
        let beam = ehrprep_t5::generate::generate(&model, x, mask, 3, 10);
        assert_eq!(beam, rows_of(&g["beam3"]), "{name}: beam 3");
    }
}

/// Adafactor steps as finetuning (fixed rate) and pretraining (rate scaled by each
/// parameter's RMS) take them, gradient norm clipped at 1 first: the losses along the way
/// and every weight after the last step match transformers' Adafactor on the same batch.
#[test]
fn adafactor_steps_match_transformers() {
    use ehrprep_plugin_api::requests::OptimizerKind;
    use ehrprep_t5::optim::{Optimizer, clip_grad_norm};
    let dir = fixture("v1_0");
    let expected: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("train_golden.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let batch = &golden("v1_0").1;
    for (run, scale_parameter) in [("fixed", false), ("scaled", true)] {
        let config = T5Config::read(&dir).unwrap();
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = T5::new(&vs, config.clone(), Kind::Float);
        load_hf(&mut vs, &dir, config.vocab_size).unwrap();
        let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let mut optimizer = Optimizer::new(OptimizerKind::Adafactor);
        optimizer.scale_parameter = scale_parameter;
        let want: Vec<f64> = Vec::try_from(&expected[&format!("{run}.losses")]).unwrap();
        for (step, want) in want.iter().enumerate() {
            for (_, p) in &params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            let loss = model.loss(
                &batch["input_ids"],
                &batch["attention_mask"],
                &batch["labels"],
                true,
            );
            loss.backward();
            let got = loss.double_value(&[]);
            assert!(
                (got - want).abs() < 1e-4,
                "{run}: loss before step {step}: {got} vs {want}"
            );
            clip_grad_norm(&params, 1.0);
            optimizer.step(&params, 1e-2);
        }
        let mut compared = 0;
        for (name, p) in &params {
            let theirs = &expected[&format!("{run}.{name}")];
            let diff = (p - theirs).abs().max().double_value(&[]);
            assert!(diff < 1e-4, "{run}: `{name}` differs by up to {diff}");
            compared += 1;
        }
        let golden_weights = expected
            .keys()
            .filter(|k| k.starts_with(&format!("{run}.")) && !k.ends_with(".losses"))
            .count();
        assert_eq!(compared, golden_weights, "{run}: every weight compared");
    }
}
