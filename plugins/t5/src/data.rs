//! Training batches as tensors. The examples themselves (row order, span corruption) come
//! from `ehrprep_data`, the contract the host's packer shares.

use ehrprep_data::examples::Examples;
use tch::{Device, Tensor};

/// One batch as tensors: inputs [B, I], attention mask [B, I], labels [B, T].
pub struct Batch {
    pub inputs: Tensor,
    pub mask: Tensor,
    pub labels: Tensor,
    pub input_tokens: usize,
}

/// Examples `first .. first + size` as one batch on `device`.
pub fn batch(examples: &mut Examples<'_>, first: u64, size: usize, device: Device) -> Batch {
    let mut inputs = Vec::new();
    let mut targets = Vec::new();
    let (mut ilen, mut tlen) = (0, 0);
    for n in first..first + size as u64 {
        let (i, t) = examples.example(n);
        (ilen, tlen) = (i.len(), t.len());
        inputs.extend(i.into_iter().map(i64::from));
        targets.extend(t.into_iter().map(i64::from));
    }
    let b = size as i64;
    let inputs = Tensor::from_slice(&inputs)
        .view([b, ilen as i64])
        .to_device(device);
    Batch {
        mask: inputs.ones_like(),
        inputs,
        labels: Tensor::from_slice(&targets)
            .view([b, tlen as i64])
            .to_device(device),
        input_tokens: size * ilen,
    }
}

/// A data error as the user sees it: the message and its cause on one line.
pub fn failed(e: ehrprep_data::Error) -> ehrprep_plugin_api::CallError {
    use std::error::Error as _;
    let message = match e.source() {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    };
    ehrprep_plugin_api::CallError::Failed(message)
}
