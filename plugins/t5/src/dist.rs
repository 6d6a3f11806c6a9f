//! Data-parallel training on PyTorch's own distributed runtime: a process group from
//! libtorch's c10d (a TCPStore rendezvous, NCCL or Gloo collectives), reached through the C
//! shim in `csrc/dist.cpp`, compiled against the wheel tch links. No collective is written
//! here; this module only bundles gradients into few, large all-reduces.

use std::ffi::{CStr, CString, c_char};

use ehrprep_plugin_api::CallError;
use ehrprep_plugin_api::requests::World;
use tch::{Device, Kind, Tensor};

/// Gradients are summed in buckets of about this many bytes: one all-reduce per bucket
/// instead of one per parameter (a T5 has ~130 of them), as DDP's default 25 MiB does.
const BUCKET_BYTES: i64 = 25 << 20;

/// A joined process group. Dropping it leaves the group.
pub struct Group {
    raw: *mut ffi::Dist,
    pub rank: usize,
    pub size: usize,
    /// `nccl` or `gloo`.
    pub backend: &'static str,
    /// Where the small sums live: NCCL reduces only CUDA tensors.
    scalars: Device,
}

/// Whether the plugin was built with NCCL.
pub fn has_nccl() -> bool {
    // SAFETY: reads a constant.
    #[allow(unsafe_code)]
    unsafe {
        ffi::ehr_dist_has_nccl() != 0
    }
}

/// The backend `world` asks for, or the best one for `device`: NCCL on CUDA where built
/// in, else Gloo.
pub fn backend_for(world: &World, device: Device) -> Result<&'static str, CallError> {
    match world.backend.as_deref() {
        None | Some("auto") if device.is_cuda() && has_nccl() => Ok("nccl"),
        None | Some("auto") | Some("gloo") => Ok("gloo"),
        Some("nccl") if !device.is_cuda() => Err(CallError::Failed(
            "the nccl backend reduces CUDA tensors only; train on cuda or use gloo".into(),
        )),
        Some("nccl") => Ok("nccl"),
        Some(other) => Err(CallError::Failed(format!(
            "unknown distributed backend `{other}` (auto, nccl, gloo)"
        ))),
    }
}

impl Group {
    /// Joins the group `world` describes, for training on `device`; returns when every
    /// rank has joined (or fails after `world.timeout_s`).
    pub fn join(world: &World, device: Device) -> Result<Group, CallError> {
        let backend = backend_for(world, device)?;
        if world.size == 0 || world.rank >= world.size {
            return Err(CallError::Failed(format!(
                "rank {} is not in a world of {}",
                world.rank, world.size
            )));
        }
        let bad = |what: &str| CallError::Failed(format!("rank {}: {what}", world.rank));
        let host = CString::new(world.master_addr.as_str())
            .map_err(|_| bad("MASTER_ADDR holds a NUL byte"))?;
        let interface = CString::new(world.interface.clone().unwrap_or_default())
            .map_err(|_| bad("GLOO_SOCKET_IFNAME holds a NUL byte"))?;
        let prefix = CString::new(world.agent_store.clone().unwrap_or_default())
            .map_err(|_| bad("the store prefix holds a NUL byte"))?;
        let timeout_ms = (world.timeout_s.clamp(1, 1 << 40) as i64) * 1000;
        let backend_c = CString::new(backend).expect("no NUL in a backend name");
        let mut err = std::ptr::null_mut();
        // SAFETY: the strings outlive the call, `err` is a valid out-pointer, and the
        // shim catches every C++ exception.
        #[allow(unsafe_code)]
        let raw = unsafe {
            ffi::ehr_dist_new(
                backend_c.as_ptr(),
                host.as_ptr(),
                world.master_port,
                world.rank as i32,
                world.size as i32,
                interface.as_ptr(),
                prefix.as_ptr(),
                timeout_ms,
                &mut err,
            )
        };
        if raw.is_null() {
            return Err(bad(&format!(
                "joining the {backend} process group at {}:{} failed: {}",
                world.master_addr,
                world.master_port,
                take_error(err)
            )));
        }
        Ok(Group {
            raw,
            rank: world.rank,
            size: world.size,
            backend,
            scalars: if backend == "nccl" {
                device
            } else {
                Device::Cpu
            },
        })
    }

    fn check(&self, what: &str, code: i32, err: *mut c_char) -> Result<(), CallError> {
        if code == 0 {
            return Ok(());
        }
        Err(CallError::Failed(format!(
            "rank {} of {}: {what} failed (another rank stopped or is unreachable): {}",
            self.rank,
            self.size,
            take_error(err)
        )))
    }

    /// Sums `t` over all ranks, in place. `t` must be contiguous.
    pub fn all_reduce_sum(&self, t: &mut Tensor) -> Result<(), CallError> {
        let mut err = std::ptr::null_mut();
        // SAFETY: `raw` is a live group; `t` is a live tensor, which tch hands over as the
        // `at::Tensor*` the shim takes; the call returns after the collective finished.
        #[allow(unsafe_code)]
        let code = unsafe { ffi::ehr_dist_allreduce_sum(self.raw, t.as_mut_ptr(), &mut err) };
        self.check("all-reduce", code, err)
    }

    /// Replaces `t` with rank `root`'s, in place.
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<(), CallError> {
        let mut err = std::ptr::null_mut();
        // SAFETY: as in `all_reduce_sum`.
        #[allow(unsafe_code)]
        let code =
            unsafe { ffi::ehr_dist_broadcast(self.raw, t.as_mut_ptr(), root as i32, &mut err) };
        self.check("broadcast", code, err)
    }

    /// Returns when every rank has called it.
    pub fn barrier(&self) -> Result<(), CallError> {
        let mut err = std::ptr::null_mut();
        // SAFETY: `raw` is a live group.
        #[allow(unsafe_code)]
        let code = unsafe { ffi::ehr_dist_barrier(self.raw, &mut err) };
        self.check("barrier", code, err)
    }

    /// Makes every rank's tensors rank 0's (the weights, at the start).
    pub fn broadcast_all<'a>(
        &self,
        tensors: impl IntoIterator<Item = &'a Tensor>,
    ) -> Result<(), CallError> {
        tch::no_grad(|| {
            for t in tensors {
                let mut flat = t.contiguous();
                self.broadcast(&mut flat, 0)?;
                let mut target = t.shallow_clone();
                target.copy_(&flat);
            }
            Ok(())
        })
    }

    /// Replaces every defined gradient with its mean over the ranks.
    pub fn average_gradients(&self, grads: &[Tensor]) -> Result<(), CallError> {
        self.reduce_gradients(grads, self.size as f64)
    }

    /// Replaces every defined gradient with its sum over the ranks divided by `divisor`:
    /// gradients are packed into buckets of one dtype and device, summed, divided and
    /// copied back.
    pub fn reduce_gradients(&self, grads: &[Tensor], divisor: f64) -> Result<(), CallError> {
        let grads: Vec<&Tensor> = grads.iter().filter(|g| g.defined()).collect();
        let mut start = 0;
        while start < grads.len() {
            let (kind, device) = (grads[start].kind(), grads[start].device());
            let mut end = start;
            let mut bytes = 0;
            while end < grads.len()
                && grads[end].kind() == kind
                && grads[end].device() == device
                && (end == start || bytes < BUCKET_BYTES)
            {
                bytes += grads[end].numel() as i64 * kind.elt_size_in_bytes() as i64;
                end += 1;
            }
            let bucket = &grads[start..end];
            tch::no_grad(|| {
                let flat: Vec<Tensor> = bucket.iter().map(|g| g.reshape([-1])).collect();
                let mut flat = Tensor::cat(&flat, 0);
                self.all_reduce_sum(&mut flat)?;
                let flat = flat / divisor;
                let mut offset = 0;
                for g in bucket {
                    let n = g.numel() as i64;
                    let mut target = g.shallow_clone();
                    target.copy_(&flat.narrow(0, offset, n).view_as(g));
                    offset += n;
                }
                Ok::<(), CallError>(())
            })?;
            start = end;
        }
        Ok(())
    }

    /// The sums over all ranks of a few numbers (losses, token counts, stop flags), in f64.
    pub fn sum(&self, values: &[f64]) -> Result<Vec<f64>, CallError> {
        let mut t = Tensor::from_slice(values)
            .to_kind(Kind::Double)
            .to_device(self.scalars);
        self.all_reduce_sum(&mut t)?;
        let t = t.to_device(Device::Cpu);
        Ok(Vec::<f64>::try_from(&t).expect("a 1-d f64 tensor converts"))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `ehr_dist_new` and is freed once, here.
        #[allow(unsafe_code)]
        unsafe {
            ffi::ehr_dist_free(self.raw)
        };
    }
}

/// The shim's error message, freed.
fn take_error(err: *mut c_char) -> String {
    if err.is_null() {
        return "no message".into();
    }
    // SAFETY: a non-null `err` is a NUL-terminated string the shim allocated for us.
    #[allow(unsafe_code)]
    let text = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: freed once, with the shim's own free.
    #[allow(unsafe_code)]
    unsafe {
        ffi::ehr_dist_free_error(err)
    };
    text
}

mod ffi {
    use std::ffi::c_char;

    use torch_sys::C_tensor;

    /// `struct ehr_dist`, opaque.
    #[repr(C)]
    pub struct Dist {
        _private: [u8; 0],
    }

    #[allow(unsafe_code)]
    unsafe extern "C" {
        pub fn ehr_dist_new(
            backend: *const c_char,
            host: *const c_char,
            port: u16,
            rank: i32,
            world: i32,
            interface: *const c_char,
            prefix: *const c_char,
            timeout_ms: i64,
            err: *mut *mut c_char,
        ) -> *mut Dist;
        pub fn ehr_dist_allreduce_sum(d: *mut Dist, t: *mut C_tensor, err: *mut *mut c_char)
        -> i32;
        pub fn ehr_dist_broadcast(
            d: *mut Dist,
            t: *mut C_tensor,
            root: i32,
            err: *mut *mut c_char,
        ) -> i32;
        pub fn ehr_dist_barrier(d: *mut Dist, err: *mut *mut c_char) -> i32;
        pub fn ehr_dist_free(d: *mut Dist);
        pub fn ehr_dist_free_error(err: *mut c_char);
        pub fn ehr_dist_has_nccl() -> i32;
    }
}
