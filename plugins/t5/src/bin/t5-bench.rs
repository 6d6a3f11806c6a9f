//! Standalone training-throughput driver for the T5 plugin's model and optimizer, for hosts
//! without a Rust toolchain (copy the binary; it finds libtorch through its rpath or
//! LD_LIBRARY_PATH). Random tokens, the plugin's exact step (forward, backward, clipping,
//! Adafactor); prints one JSON line.
//!
//! t5-bench [--model t5-small] [--batch 8] [--inputs 128] [--targets 32] [--steps 5]
//!          [--warmup 2] [--device cpu|cuda] [--threads N]

use std::time::Instant;

use ehrprep_t5::model::{T5, T5Config, cross_entropy};
use ehrprep_t5::optim::{Optimizer, OptimizerKind, clip_grad_norm};
use ehrprep_t5::train::{device_for, device_name};
use tch::{Kind, Tensor, nn};

fn main() {
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
    let model_name = arg("--model", "t5-small");
    let (batch, inputs, targets) = (
        num("--batch", 8),
        num("--inputs", 128),
        num("--targets", 32),
    );
    let (steps, warmup) = (num("--steps", 5), num("--warmup", 2));
    let threads = num("--threads", 0);
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
    let device = device_for(&arg("--device", "cpu")).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
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
    let compute = if device.is_cuda() {
        Kind::BFloat16
    } else {
        Kind::Float
    };
    let model = T5::new(&vs, config.clone(), compute);
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
