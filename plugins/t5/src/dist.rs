//! Data-parallel training on PyTorch's own distributed runtime: a process group from
//! libtorch's c10d (a TCPStore rendezvous, NCCL or Gloo collectives), reached through the C
//! shim in `csrc/dist.cpp`, compiled against the wheel tch links. No collective is written
//! here; the shim bundles gradients into few, large all-reduces that start during backward.

use std::ffi::{CStr, CString, c_char};

use ehrprep_plugin_api::CallError;
use ehrprep_plugin_api::requests::World;
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

/// Gradients are summed in buckets of about this many bytes: one all-reduce per bucket
/// instead of one per parameter (a T5 has ~130 of them), as DDP's default 25 MiB does.
const BUCKET_BYTES: i64 = 25 << 20;
/// The first bucket is small, as DDP's, so communication starts early in backward.
const FIRST_BUCKET_BYTES: i64 = 1 << 20;

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

// SAFETY: a c10d process group may be used from any thread; the plugin uses each from one
// thread at a time (a finetuning session's behind its lock).
#[allow(unsafe_code)]
unsafe impl Send for Group {}

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

    /// Hooks the gradients of `params` (trainable leaves) into buckets that are summed
    /// over the ranks while backward runs. `EHRPREP_DIST_OVERLAP=0` keeps the same buckets
    /// but sums them after backward, for comparison or should overlapping misbehave.
    pub fn overlap<'g>(&'g self, params: &[Tensor]) -> Result<Overlap<'g>, CallError> {
        let ptrs: Vec<*mut C_tensor> = params.iter().map(|p| p.as_ptr() as *mut C_tensor).collect();
        let mut err = std::ptr::null_mut();
        // SAFETY: `raw` is a live group; every pointer is a live tensor that the shim
        // copies (a new reference) before the call returns.
        #[allow(unsafe_code)]
        let raw = unsafe {
            ffi::ehr_overlap_new(
                self.raw,
                ptrs.as_ptr(),
                ptrs.len(),
                FIRST_BUCKET_BYTES,
                BUCKET_BYTES,
                &mut err,
            )
        };
        if raw.is_null() {
            return Err(CallError::Failed(format!(
                "rank {}: hooking the gradients failed: {}",
                self.rank,
                take_error(err)
            )));
        }
        Ok(Overlap {
            raw,
            group: self,
            during_backward: std::env::var_os("EHRPREP_DIST_OVERLAP").is_none_or(|v| v != "0"),
        })
    }

    /// Rank 0's bytes, on every rank: rank 0 passes them, the others `None`.
    pub fn broadcast_bytes(&self, bytes: Option<&[u8]>) -> Result<Vec<u8>, CallError> {
        if bytes.is_some() != (self.rank == 0) {
            return Err(CallError::Failed(format!(
                "rank {}: only rank 0 sends bytes to the others",
                self.rank
            )));
        }
        let mut len =
            Tensor::from_slice(&[bytes.map_or(0, |b| b.len() as i64)]).to_device(self.scalars);
        self.broadcast(&mut len, 0)?;
        let n = len.int64_value(&[0]);
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut data = match bytes {
            Some(b) => Tensor::from_slice(b),
            None => Tensor::zeros([n], (Kind::Uint8, Device::Cpu)),
        }
        .to_device(self.scalars);
        self.broadcast(&mut data, 0)?;
        Ok(Vec::<u8>::try_from(&data.to_device(Device::Cpu)).expect("a 1-d u8 tensor converts"))
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

/// Gradients summed over the ranks, bucket by bucket, during the last backward of each
/// optimizer step. Dropping it unhooks them.
pub struct Overlap<'g> {
    raw: *mut ffi::Overlap,
    group: &'g Group,
    during_backward: bool,
}

impl Overlap<'_> {
    /// Call before the last backward of an optimizer step (and not at all on a rank that
    /// has none in this step).
    pub fn arm(&self) -> Result<(), CallError> {
        if !self.during_backward {
            return Ok(());
        }
        let mut err = std::ptr::null_mut();
        // SAFETY: `raw` is live until drop.
        #[allow(unsafe_code)]
        let code = unsafe { ffi::ehr_overlap_arm(self.raw, &mut err) };
        self.group.check("arming the gradient buckets", code, err)
    }

    /// Waits for every bucket (starting those backward did not) and replaces each
    /// gradient with its sum over the ranks divided by `divisor`. Every rank calls it once
    /// per optimizer step.
    pub fn finish(&self, divisor: f64) -> Result<(), CallError> {
        let mut err = std::ptr::null_mut();
        // SAFETY: `raw` is live until drop; the call returns after the collectives.
        #[allow(unsafe_code)]
        let code = unsafe { ffi::ehr_overlap_finish(self.raw, divisor, &mut err) };
        self.group.check("the gradient all-reduce", code, err)
    }
}

impl Overlap<'_> {
    /// The number of buckets, and how many of the last step's started inside backward.
    #[cfg(test)]
    fn stats(&self) -> (usize, usize) {
        let (mut buckets, mut in_backward) = (0, 0);
        // SAFETY: `raw` is live until drop; the out-pointers are valid.
        #[allow(unsafe_code)]
        unsafe {
            ffi::ehr_overlap_stats(self.raw, &mut buckets, &mut in_backward)
        };
        (buckets, in_backward)
    }
}

impl Drop for Overlap<'_> {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `ehr_overlap_new` and is freed once, here.
        #[allow(unsafe_code)]
        unsafe {
            ffi::ehr_overlap_free(self.raw)
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

    use super::C_tensor;

    /// `struct ehr_dist`, opaque.
    #[repr(C)]
    pub struct Dist {
        _private: [u8; 0],
    }

    /// `struct ehr_overlap`, opaque.
    #[repr(C)]
    pub struct Overlap {
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
        pub fn ehr_overlap_new(
            d: *mut Dist,
            params: *const *mut C_tensor,
            n: usize,
            first_bytes: i64,
            bucket_bytes: i64,
            err: *mut *mut c_char,
        ) -> *mut Overlap;
        pub fn ehr_overlap_arm(o: *mut Overlap, err: *mut *mut c_char) -> i32;
        pub fn ehr_overlap_finish(o: *mut Overlap, divisor: f64, err: *mut *mut c_char) -> i32;
        pub fn ehr_overlap_free(o: *mut Overlap);
        #[cfg(test)]
        pub fn ehr_overlap_stats(o: *mut Overlap, buckets: *mut usize, in_backward: *mut usize);
        pub fn ehr_dist_free_error(err: *mut c_char);
        pub fn ehr_dist_has_nccl() -> i32;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn join(rank: usize, size: usize, port: u16) -> Group {
        let world = World {
            rank,
            size,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            interface: None,
            agent_store: None,
            backend: Some("gloo".into()),
            timeout_s: 30,
        };
        Group::join(&world, Device::Cpu).expect("joining a loopback group")
    }

    pub(crate) fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    }

    /// `[c, b, a, unused]` as trainable leaves.
    fn params() -> Vec<Tensor> {
        [&[0.5f32, -1.0][..], &[2.0, 3.0], &[1.5, 0.25], &[7.0]]
            .iter()
            .map(|v| Tensor::from_slice(v).set_requires_grad(true))
            .collect()
    }

    /// A loss whose backward delivers c's gradient first, then b's, then a's; `unused`
    /// takes part only when asked (its gradient is then 3).
    fn loss(p: &[Tensor], x: &[f32], with_unused: bool) -> Tensor {
        let x = Tensor::from_slice(x);
        let (c, b, a) = (&p[0], &p[1], &p[2]);
        let main = (((&x * a) * b) * c).sum(Kind::Float);
        if with_unused {
            main + (&p[3] * 3.0).sum(Kind::Float)
        } else {
            main
        }
    }

    fn grads(params: &[Tensor]) -> Vec<Vec<f32>> {
        params
            .iter()
            .map(|p| {
                let g = p.grad();
                if g.defined() {
                    Vec::<f32>::try_from(&g).expect("a 1-d f32 gradient")
                } else {
                    vec![0.0; p.numel()]
                }
            })
            .collect()
    }

    /// One process's gradients, without any hook.
    fn plain(x: &[f32], with_unused: bool) -> Vec<Vec<f32>> {
        let p = params();
        loss(&p, x, with_unused).backward();
        grads(&p)
    }

    fn zero(params: &[Tensor]) {
        for p in params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    fn scaled(g: &[Vec<f32>], by: f32) -> Vec<Vec<f32>> {
        g.iter()
            .map(|v| v.iter().map(|x| x * by).collect())
            .collect()
    }

    /// One parameter a bucket (a 1-byte cap), so the order of the buckets shows.
    fn one_per_bucket<'g>(group: &'g Group, params: &[Tensor]) -> Overlap<'g> {
        let mut err = std::ptr::null_mut();
        let ptrs: Vec<*mut C_tensor> = params.iter().map(|p| p.as_ptr() as *mut _).collect();
        // SAFETY: as in `Group::overlap`.
        #[allow(unsafe_code)]
        let raw =
            unsafe { ffi::ehr_overlap_new(group.raw, ptrs.as_ptr(), ptrs.len(), 1, 1, &mut err) };
        assert!(!raw.is_null(), "{}", take_error(err));
        Overlap {
            raw,
            group,
            during_backward: true,
        }
    }

    const X: [f32; 2] = [1.0, 2.0];

    #[test]
    fn buckets_start_during_backward_in_the_order_gradients_arrive() {
        let group = join(0, 1, free_port());
        let params = params();
        let overlap = one_per_bucket(&group, &params);
        assert_eq!(overlap.stats(), (4, 0));
        let expected = plain(&X, false);

        // The first step's buckets run from the last parameter to the first: `unused`
        // heads them and never becomes ready, so nothing starts before the end.
        overlap.arm().unwrap();
        loss(&params, &X, false).backward();
        overlap.finish(2.0).unwrap();
        assert_eq!(overlap.stats(), (4, 0));
        assert_eq!(grads(&params), scaled(&expected, 0.5));

        // Rebuilt in the order seen (c, b, a, then unused): each of the three starts as
        // its gradient arrives, the unused one's at the end.
        zero(&params);
        overlap.arm().unwrap();
        loss(&params, &X, false).backward();
        overlap.finish(1.0).unwrap();
        assert_eq!(overlap.stats(), (4, 3));
        assert_eq!(grads(&params), expected);

        // Not armed: the same sums, all started after backward.
        zero(&params);
        loss(&params, &X, false).backward();
        overlap.finish(1.0).unwrap();
        assert_eq!(overlap.stats(), (4, 0));
        assert_eq!(grads(&params), expected);
    }

    #[test]
    fn a_bucket_started_in_backward_holds_every_micro_batch_of_the_step() {
        let group = join(0, 1, free_port());
        let params = params();
        let overlap = one_per_bucket(&group, &params);
        let once = plain(&X, false);
        overlap.arm().unwrap();
        loss(&params, &X, false).backward();
        overlap.finish(1.0).unwrap();
        // Two micro-batches, the hooks armed for the second only.
        zero(&params);
        loss(&params, &X, false).backward();
        overlap.arm().unwrap();
        loss(&params, &X, false).backward();
        overlap.finish(1.0).unwrap();
        assert_eq!(overlap.stats(), (4, 3));
        assert_eq!(grads(&params), scaled(&once, 2.0));
    }

    #[test]
    fn two_ranks_sum_the_same_buckets_whatever_each_one_ran() {
        let port = free_port();
        let (x0, x1) = ([1.0f32, 2.0], [-0.5f32, 4.0]);
        let rank = move |r: usize| {
            move || {
                let group = join(r, 2, port);
                let params = params();
                let overlap = one_per_bucket(&group, &params);
                // Step 1: rank 1 has no micro-batch (it neither arms nor runs backward).
                if r == 0 {
                    overlap.arm().unwrap();
                    loss(&params, &x0, false).backward();
                }
                overlap.finish(1.0).unwrap();
                let first = grads(&params);
                // Step 2: both train, and only rank 1 gives `unused` a gradient.
                zero(&params);
                overlap.arm().unwrap();
                if r == 0 {
                    loss(&params, &x0, false).backward();
                } else {
                    loss(&params, &x1, true).backward();
                }
                overlap.finish(2.0).unwrap();
                (first, grads(&params), overlap.stats())
            }
        };
        let one = std::thread::spawn(rank(1));
        let zero_rank = rank(0)();
        let one = one.join().expect("rank 1 finished");
        let g0 = plain(&x0, false);
        let g1 = plain(&x1, true);
        let mean: Vec<Vec<f32>> = g0
            .iter()
            .zip(&g1)
            .map(|(a, b)| a.iter().zip(b).map(|(a, b)| (a + b) / 2.0).collect())
            .collect();
        // c, b and a start inside backward on both ranks; `unused`, last in rank 0's
        // order, too on rank 1, which gave it a gradient.
        for ((first, second, stats), started) in [zero_rank, one].into_iter().zip([3, 4]) {
            assert_eq!(first, g0);
            assert_eq!(second, mean);
            assert_eq!(mean[3], vec![1.5]);
            assert_eq!(stats, (4, started));
        }
    }

    #[test]
    fn a_group_needs_parameters_to_hook() {
        let group = join(0, 1, free_port());
        assert!(group.overlap(&[]).is_err());
        // A tensor that takes no gradient cannot be hooked.
        assert!(group.overlap(&[Tensor::from_slice(&[1.0f32])]).is_err());
    }
}
