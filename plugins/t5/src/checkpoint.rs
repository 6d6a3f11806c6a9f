//! Checkpoints: each a Hugging Face T5 directory (`config.json`, `model.safetensors`) plus
//! the optimizer state and `trainer_state.json` for exact resume. Written under a
//! `.partial` name and renamed when complete; the run folder's `latest` names the newest.

use std::path::{Path, PathBuf};

use ehrprep_plugin_api::CallError;
use serde::de::DeserializeOwned;
use tch::{Kind, Tensor, nn};

use crate::model::T5Config;
use crate::optim::Optimizer;
use ehrprep_plugin_api::requests::PretrainRequest;

use crate::train::TrainerState;

fn io(path: &Path) -> impl Fn(std::io::Error) -> CallError + '_ {
    move |e| CallError::Failed(format!("`{}`: {e}", path.display()))
}

pub fn dir_name(step: u64) -> String {
    format!("checkpoint-{step:08}")
}

#[cfg(unix)]
fn owner_only(path: &Path, mode: u32) -> Result<(), CallError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

#[cfg(not(unix))]
fn owner_only(_: &Path, _: u32) -> Result<(), CallError> {
    Ok(())
}

/// Owner-only permissions for a file, or a folder and the files in it.
pub fn restrict(path: &Path) -> Result<(), CallError> {
    if path.is_dir() {
        owner_only(path, 0o700)?;
        for entry in std::fs::read_dir(path).map_err(io(path))? {
            let entry = entry.map_err(io(path))?;
            owner_only(&entry.path(), 0o600)?;
        }
        Ok(())
    } else {
        owner_only(path, 0o600)
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CallError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    owner_only(path, 0o600)
}

/// Flushes a file (or folder entry list) to disk, so a rename after it is durable.
pub fn sync(path: &Path) -> Result<(), CallError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

/// Syncs every file in `dir`, then `dir` itself.
pub fn sync_tree(dir: &Path) -> Result<(), CallError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.is_file() {
            sync(&path)?;
        }
    }
    sync(dir)
}

/// Replaces `path` with `bytes` through a temporary file, durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CallError> {
    let tmp = path.with_extension("partial");
    write_file(&tmp, bytes)?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    sync(path.parent().unwrap_or(Path::new(".")))
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, CallError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text)
        .map_err(|e| CallError::Failed(format!("`{}` is malformed: {e}", path.display())))
}

/// Creates the run folder (owner-only) and records the request in `run.json`.
pub fn prepare_run_dir(run: &Path, req: &PretrainRequest) -> Result<(), CallError> {
    std::fs::create_dir_all(run).map_err(io(run))?;
    owner_only(run, 0o700)?;
    let json = serde_json::to_string_pretty(req).expect("request serializes");
    write_atomic(&run.join("run.json"), json.as_bytes())
}

/// The variables as f32 CPU tensors, by name, in name order.
fn named_weights(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| {
            (
                name,
                t.detach()
                    .to_device(tch::Device::Cpu)
                    .to_kind(Kind::Float)
                    .contiguous(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Writes `config.json` and `model.safetensors` (and, for training, the optimizer and
/// trainer state) into a new checkpoint folder `run/checkpoint-NNNNNNNN` and points
/// `run/latest` at it; returns its path.
pub fn save(
    run: &Path,
    vs: &nn::VarStore,
    config: &T5Config,
    training: Option<(&Optimizer, &TrainerState)>,
) -> Result<PathBuf, CallError> {
    let name = dir_name(training.map(|(_, s)| s.step).unwrap_or(0));
    let dir = run.join(&name);
    write_dir(&dir, vs, config, training)?;
    write_atomic(&run.join("latest"), name.as_bytes())?;
    Ok(dir)
}

/// Writes a checkpoint folder at exactly `dir`: built under `dir.partial`, synced, then
/// renamed into place (replacing an older `dir`), so a folder by that name is complete.
pub fn write_dir(
    dir: &Path,
    vs: &nn::VarStore,
    config: &T5Config,
    training: Option<(&Optimizer, &TrainerState)>,
) -> Result<(), CallError> {
    let partial = dir.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
    }
    std::fs::create_dir_all(&partial).map_err(io(&partial))?;
    owner_only(&partial, 0o700)?;
    write_hf(&partial, vs, config)?;
    if let Some((optimizer, state)) = training {
        let path = partial.join("optimizer.safetensors");
        Tensor::write_safetensors(&optimizer.named_state(), &path)
            .map_err(|e| CallError::Failed(format!("writing `{}`: {e}", path.display())))?;
        owner_only(&path, 0o600)?;
        let json = serde_json::to_string_pretty(state).expect("state serializes");
        write_file(&partial.join("trainer_state.json"), json.as_bytes())?;
    }
    // Everything on disk before the folder takes its final name.
    sync_tree(&partial)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::rename(&partial, dir).map_err(io(dir))?;
    sync(dir.parent().unwrap_or(Path::new(".")))
}

/// Writes a Hugging Face T5 directory's two files into `dir`.
pub fn write_hf(dir: &Path, vs: &nn::VarStore, config: &T5Config) -> Result<(), CallError> {
    write_file(&dir.join("config.json"), config.to_hf_json().as_bytes())?;
    let path = dir.join("model.safetensors");
    Tensor::write_safetensors(&named_weights(vs), &path)
        .map_err(|e| CallError::Failed(format!("writing `{}`: {e}", path.display())))?;
    owner_only(&path, 0o600)
}

/// Keeps the newest `keep` checkpoints (0 keeps all).
pub fn prune(run: &Path, keep: usize) -> Result<(), CallError> {
    if keep == 0 {
        return Ok(());
    }
    let mut dirs: Vec<String> = std::fs::read_dir(run)
        .map_err(io(run))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-") && !n.ends_with(".partial"))
        .collect();
    dirs.sort();
    let latest = std::fs::read_to_string(run.join("latest")).unwrap_or_default();
    let excess = dirs.len().saturating_sub(keep);
    for name in dirs[..excess]
        .iter()
        .filter(|n| n.as_str() != latest.trim())
    {
        let path = run.join(name);
        std::fs::remove_dir_all(&path).map_err(io(&path))?;
    }
    Ok(())
}

/// Loads weights saved by [`save`]: every variable must be present with its shape.
pub fn load_weights(vs: &mut nn::VarStore, path: &Path) -> Result<(), CallError> {
    vs.load(path)
        .map_err(|e| CallError::Failed(format!("loading `{}`: {e}", path.display())))
}

/// Loads a Hugging Face T5 checkpoint directory into `vs`, whatever its dtype. When the
/// model's vocabulary is larger than the checkpoint's (`file_vocab` rows), the extra
/// embedding rows start at the mean of the existing ones.
pub fn load_hf(vs: &mut nn::VarStore, dir: &Path, file_vocab: i64) -> Result<(), CallError> {
    let path = dir.join("model.safetensors");
    let tensors = Tensor::read_safetensors(&path)
        .map_err(|e| CallError::Failed(format!("reading `{}`: {e}", path.display())))?;
    let file: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
    let lookup = |name: &str| -> Option<&Tensor> {
        file.get(name).or_else(|| match name {
            // Tied checkpoints sometimes store the embedding only under the stacks' names.
            "shared.weight" => file.get("encoder.embed_tokens.weight"),
            _ => None,
        })
    };
    tch::no_grad(|| {
        let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut var) in variables {
            let source = lookup(&name).ok_or_else(|| {
                CallError::Failed(format!("`{}` has no tensor `{name}`", path.display()))
            })?;
            let source = source.to_kind(Kind::Float).to_device(var.device());
            if source.size() == var.size() {
                var.copy_(&source);
                continue;
            }
            let (rows, cols) = (source.size()[0], var.size()[0]);
            let resizable = (name == "shared.weight" || name == "lm_head.weight")
                && source.dim() == 2
                && source.size()[1] == var.size()[1]
                && rows == file_vocab
                && rows < cols;
            if !resizable {
                return Err(CallError::Failed(format!(
                    "`{}`: tensor `{name}` has shape {:?}; the model expects {:?}",
                    path.display(),
                    source.size(),
                    var.size()
                )));
            }
            var.narrow(0, 0, rows).copy_(&source);
            let mean = source.mean_dim(0, true, Kind::Float);
            var.narrow(0, rows, cols - rows)
                .copy_(&mean.expand([cols - rows, source.size()[1]], false));
        }
        Ok(())
    })
}
