//! Standalone throughput driver for the T5 plugin's model, optimizer and generation, for
//! hosts without a Rust toolchain (copy the binary; it finds libtorch through its rpath or
//! LD_LIBRARY_PATH). Prints one JSON line.
//!
//! Training: random tokens, the plugin's exact step (forward, backward, clipping, Adafactor).
//!   t5-bench [--model t5-small] [--batch 8] [--inputs 128] [--targets 32] [--steps 5]
//!            [--warmup 2] [--device cpu|cuda] [--threads N]
//!
//! Generation: the plugin's batched greedy / beam search on a Hugging Face checkpoint, over
//! the id lists in a JSON file, in file order and batches of `--batch`; writes the outputs.
//!   t5-bench --generate DIR --examples ids.json --out outputs.json [--beams 1]
//!            [--max-new 32] [--batch 8] [--device cpu|cuda] [--threads N]
//!
//! `--fill-uninitialized` turns PyTorch's deterministic-mode fill of new tensors back on
//! (the plugin turns it off on CUDA), to measure what it costs.

use std::path::Path;
use std::time::Instant;

use ehrprep_plugin_api::CallError;
use ehrprep_plugin_api::requests::OptimizerKind;
use ehrprep_t5::checkpoint::load_hf;
use ehrprep_t5::generate::generate;
use ehrprep_t5::model::{T5, T5Config, cross_entropy};
use ehrprep_t5::optim::{Optimizer, clip_grad_norm};
use ehrprep_t5::train::{device_for, device_name};
use tch::{Device, Kind, Tensor, nn};

fn main() {
    let (key, value) = ehrprep_t5::cuda::CUBLAS_WORKSPACE;
    if std::env::var_os(key).is_none() {
        // SAFETY: first thing in `main`, while this is the process's only thread.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var(key, value)
        }
    }
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let num = |name: &str, default: i64| -> i64 {
        arg(name, &default.to_string()).parse().unwrap_or_else(|_| {
            eprintln!("{name} takes a number");
            std::process::exit(2)
        })
    };
    let threads = num("--threads", 0);
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
    let device = device_for(&arg("--device", "cpu")).unwrap_or_else(|e| fail(&e));
    if args.iter().any(|a| a == "--fill-uninitialized") {
        ehrprep_t5::cuda::fill_uninitialized_memory(true);
    }
    if args.iter().any(|a| a == "--generate") {
        return generation(
            Path::new(&arg("--generate", "")),
            Path::new(&arg("--examples", "examples.json")),
            Path::new(&arg("--out", "outputs.json")),
            num("--beams", 1) as usize,
            num("--max-new", 32) as usize,
            num("--batch", 8) as usize,
            device,
        );
    }
    let model_name = arg("--model", "t5-small");
    let (batch, inputs, targets) = (
        num("--batch", 8),
        num("--inputs", 128),
        num("--targets", 32),
    );
    let (steps, warmup) = (num("--steps", 5), num("--warmup", 2));
    let mut config = T5Config::preset(&model_name).unwrap_or_else(|| {
        eprintln!(
            "unknown model {model_name}; presets: {}",
            T5Config::PRESETS.join(", ")
        );
        std::process::exit(2)
    });
    config.dropout_rate = 0.0;
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let model = T5::new(&vs, config.clone(), compute_kind(device));
    let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let mut optimizer = Optimizer::new(OptimizerKind::Adafactor);
    let ids =
        |len: i64| Tensor::randint_low(2, config.vocab_size, [batch, len], (Kind::Int64, device));
    let (x, y) = (ids(inputs), ids(targets));
    let mask = x.ones_like();
    let mut timed = 0.0;
    for step in 0..warmup + steps {
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        let t0 = Instant::now();
        for (_, p) in &params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let loss = cross_entropy(&model.forward(&x, &mask, &y, true), &y);
        loss.backward();
        clip_grad_norm(&params, 1.0);
        optimizer.step(&params, 1e-3);
        let _ = loss.double_value(&[]);
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        if step >= warmup {
            timed += t0.elapsed().as_secs_f64();
        }
    }
    let step_s = timed / steps as f64;
    let tokens_per_s = (batch * inputs) as f64 / step_s;
    // Model FLOPs per step: 6 x parameters x (input + target tokens).
    let flops = 6.0 * config.parameters() as f64 * (batch * (inputs + targets)) as f64;
    println!(
        "{}",
        serde_json::json!({
            "impl": "ehrprep",
            "model": model_name,
            "device": device_name(device),
            "parameters": config.parameters(),
            "batch": batch, "inputs": inputs, "targets": targets, "steps": steps,
            "step_s": step_s,
            "input_tokens_per_s": tokens_per_s,
            "model_tflops_per_s": flops / step_s / 1e12,
        })
    );
}

fn fail(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(2)
}

fn compute_kind(device: Device) -> Kind {
    if device.is_cuda() {
        Kind::BFloat16
    } else {
        Kind::Float
    }
}

/// Times generation over `examples` (one warm-up batch first, untimed) and writes the
/// generated ids, one list per example, to `out`.
fn generation(
    dir: &Path,
    examples: &Path,
    out: &Path,
    beams: usize,
    max_new: usize,
    batch: usize,
    device: Device,
) {
    let config = T5Config::read(dir).unwrap_or_else(|e| fail(&e));
    let mut vs = nn::VarStore::new(device);
    let model = T5::new(&vs, config.clone(), compute_kind(device));
    if let Err(CallError::Failed(e) | CallError::Cancelled(e)) =
        load_hf(&mut vs, dir, config.vocab_size)
    {
        fail(&e)
    }
    let text = std::fs::read_to_string(examples)
        .unwrap_or_else(|e| fail(&format!("{}: {e}", examples.display())));
    let rows: Vec<Vec<i64>> = serde_json::from_str(&text).unwrap_or_else(|e| {
        fail(&format!(
            "{}: expected a list of id lists: {e}",
            examples.display()
        ))
    });
    let batch = batch.max(1);
    let pad = |chunk: &[Vec<i64>]| {
        let width = chunk.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for r in chunk {
            ids.extend(
                r.iter()
                    .copied()
                    .chain(std::iter::repeat_n(config.pad_token_id, width - r.len())),
            );
            mask.extend(
                std::iter::repeat_n(1i64, r.len()).chain(std::iter::repeat_n(0, width - r.len())),
            );
        }
        let shape = [chunk.len() as i64, width as i64];
        (
            Tensor::from_slice(&ids).view(shape).to_device(device),
            Tensor::from_slice(&mask).view(shape).to_device(device),
        )
    };
    if let Some(first) = rows.chunks(batch).next() {
        let (x, mask) = pad(first);
        let _ = generate(&model, &x, &mask, beams, max_new);
    }
    let mut outputs = Vec::with_capacity(rows.len());
    let t0 = Instant::now();
    for chunk in rows.chunks(batch) {
        let (x, mask) = pad(chunk);
        outputs.extend(generate(&model, &x, &mask, beams, max_new));
    }
    let seconds = t0.elapsed().as_secs_f64();
    let generated: usize = outputs.iter().map(Vec::len).sum();
    std::fs::write(out, serde_json::to_string(&outputs).expect("ids serialize"))
        .unwrap_or_else(|e| fail(&format!("{}: {e}", out.display())));
    println!(
        "{}",
        serde_json::json!({
            "impl": "ehrprep",
            "device": device_name(device),
            "examples": rows.len(), "batch": batch, "beams": beams, "max_new_tokens": max_new,
            "seconds": seconds,
            "examples_per_s": rows.len() as f64 / seconds,
            "generated_tokens": generated,
        })
    );
}
