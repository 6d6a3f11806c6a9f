//! Finetuning as one rank of a world that torchrun or srun launched: the host calls the
//! plugin once per epoch on rank 0 only, so the ranks keep one process group across those
//! calls and rank 0 sends each epoch's request through it to the others, which wait in
//! [`follow`]. Epochs on ranks the host starts itself (`finetune --nproc-per-node`) join a
//! fresh group per call instead.

use std::sync::{Mutex, MutexGuard};

use ehrprep_plugin_api::requests::{
    FinetuneRequest, FinetuneResult, LeaveRequest, SessionRequest, World,
};
use ehrprep_plugin_api::{CallError, Host};

use crate::dist::Group;
use crate::train::rank_device;

/// Rank 0's group, from `session-join` to `session-leave`.
static SESSION: Mutex<Option<(World, Group)>> = Mutex::new(None);

/// What rank 0 sends instead of a request: the end, or that it failed.
const END: &[u8] = b"";
const FAILED: &[u8] = b"!";

fn session() -> MutexGuard<'static, Option<(World, Group)>> {
    SESSION.lock().unwrap_or_else(|e| e.into_inner())
}

fn joined(req: &SessionRequest) -> Result<Group, CallError> {
    let device = rank_device(&req.device, Some(&req.world)).map_err(CallError::Failed)?;
    Group::join(&req.world, device)
}

/// Rank 0 joins the group and keeps it.
pub fn join(req: &SessionRequest) -> Result<String, CallError> {
    if req.world.rank != 0 {
        return Err(CallError::Failed(format!(
            "session-join is rank 0's; rank {} calls session-follow",
            req.world.rank
        )));
    }
    let mut held = session();
    if held.is_some() {
        return Err(CallError::Failed(
            "this process already holds a session".into(),
        ));
    }
    *held = Some((req.world.clone(), joined(req)?));
    Ok("{}".into())
}

/// Runs rank 0's epoch on the held group, after sending `req` to the other ranks; `None`
/// when this process holds no session.
pub fn lead(
    req: &FinetuneRequest,
    epoch: impl FnOnce(Option<&Group>) -> Result<FinetuneResult, CallError>,
) -> Result<Option<FinetuneResult>, CallError> {
    let mut held = session();
    let Some((world, group)) = held.as_ref() else {
        return Ok(None);
    };
    if req.world.as_ref() != Some(world) {
        return Err(CallError::Failed(
            "a finetune request's world differs from the session's".into(),
        ));
    }
    let mut sent = req.clone();
    sent.world = None;
    let json = serde_json::to_vec(&sent).expect("the request serializes");
    let result = group
        .broadcast_bytes(Some(&json))
        .and_then(|_| epoch(Some(group)));
    match result {
        Ok(result) => Ok(Some(result)),
        // Every rank stopped at the same step and waits for the next message.
        Err(CallError::Cancelled(e)) => Err(CallError::Cancelled(e)),
        Err(e) => {
            // The others may sit in a collective of this epoch, where a broadcast from
            // `leave` would not reach them: leaving the group makes their collective fail.
            drop(held.take());
            Err(e)
        }
    }
}

/// A rank other than 0: trains each epoch rank 0 sends, until it leaves.
pub fn follow(req: &SessionRequest, host: &Host<'_>) -> Result<String, CallError> {
    if req.world.rank == 0 {
        return Err(CallError::Failed(
            "rank 0 leads a session (session-join); it cannot follow one".into(),
        ));
    }
    let group = joined(req)?;
    let mut epochs = 0u64;
    loop {
        let message = group.broadcast_bytes(None)?;
        match &message[..] {
            END => break,
            FAILED => {
                return Err(CallError::Failed(
                    "rank 0 stopped with an error (its output says which)".into(),
                ));
            }
            json => {
                let mut epoch: FinetuneRequest = serde_json::from_slice(json).map_err(|e| {
                    CallError::Failed(format!("rank 0 sent a malformed finetune request: {e}"))
                })?;
                epoch.world = Some(req.world.clone());
                match crate::finetune::epoch(&epoch, host, Some(&group)) {
                    Ok(_) => epochs += 1,
                    // Every rank stopped at the same step; rank 0 ends the session.
                    Err(CallError::Cancelled(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(serde_json::json!({ "epochs": epochs }).to_string())
}

/// Rank 0 lets the other ranks go and leaves the group; nothing to do without a session.
pub fn leave(req: &LeaveRequest) -> Result<String, CallError> {
    if let Some((_, group)) = session().take() {
        group.broadcast_bytes(Some(if req.failed { FAILED } else { END }))?;
    }
    Ok("{}".into())
}
