//! A CUDA setting tch does not expose: PyTorch's deterministic algorithms
//! (`torch.use_deterministic_algorithms(True)`). Without it two CUDA runs from the same seed
//! drift apart within 20 steps (some kernels accumulate with atomics in whatever order the
//! threads arrive), so a resumed run could never match an uninterrupted one.
//!
//! cuBLAS is deterministic only with a fixed workspace, which it reads from
//! `CUBLAS_WORKSPACE_CONFIG` when it creates its first handle: the plugin declares the
//! variable in its info, and the host sets it (unless the user did) before it
//! starts any thread, as it does for any plugin's declared environment. PyTorch refuses a
//! matrix product in deterministic mode without it, so a miss is a clear error, not drift.

/// Turns PyTorch's deterministic algorithms on for this process (an operation with no
/// deterministic CUDA kernel then fails with PyTorch's error instead of running). Called
/// when a CUDA device is chosen; the CPU kernels the plugin uses are deterministic anyway.
///
/// Deterministic mode also fills every newly allocated tensor with NaN by default
/// (`torch.utils.deterministic.fill_uninitialized_memory`), a debugging aid that makes a
/// read of unwritten memory visible. The plugin never makes a tensor with `empty` (each
/// operation it calls writes its whole output), so the fill only costs time, most of all in
/// decoding, where each step's small tensors are new allocations: it is turned off, and
/// [`fill_uninitialized_memory`] turns it back on to measure or debug.
pub fn deterministic_algorithms() {
    // SAFETY: `at::globalContext()` returns a reference to PyTorch's process-wide context,
    // which lives for the whole process; `Context::setDeterministicAlgorithms(bool, bool)`
    // is a plain non-virtual member function. Under the Itanium C++ ABI (Linux, x86-64 and
    // aarch64) a reference is returned as a pointer and a member function takes `this` as
    // its first argument, so both match these C declarations. The setter only stores two
    // flags, which PyTorch reads when it picks a kernel.
    #[allow(unsafe_code)]
    unsafe {
        let context = ffi::global_context();
        ffi::set_deterministic_algorithms(context, true, false);
    }
    fill_uninitialized_memory(false);
}

/// Sets whether deterministic mode fills new tensors before use (see
/// [`deterministic_algorithms`]).
pub fn fill_uninitialized_memory(on: bool) {
    // SAFETY: as above; `setDeterministicFillUninitializedMemory(bool)` stores one flag.
    #[allow(unsafe_code)]
    unsafe {
        ffi::set_fill_uninitialized_memory(ffi::global_context(), on);
    }
}

/// Whether new tensors are filled in deterministic mode (what
/// `torch.utils.deterministic.fill_uninitialized_memory` reports).
pub fn fills_uninitialized_memory() -> bool {
    // SAFETY: as above; a const member function that reads a flag.
    #[allow(unsafe_code)]
    unsafe {
        ffi::fill_uninitialized_memory(ffi::global_context())
    }
}

/// Whether deterministic algorithms are on (what `torch.are_deterministic_algorithms_enabled`
/// reports).
pub fn deterministic_algorithms_enabled() -> bool {
    // SAFETY: as above; the getter is a const member function that reads a flag.
    #[allow(unsafe_code)]
    unsafe {
        ffi::deterministic_algorithms(ffi::global_context())
    }
}

#[allow(unsafe_code)]
mod ffi {
    use std::ffi::c_void;

    // libtorch_cpu's C++ symbols (the plugin links it through tch).
    unsafe extern "C" {
        #[link_name = "_ZN2at13globalContextEv"]
        pub fn global_context() -> *mut c_void;
        #[link_name = "_ZN2at7Context26setDeterministicAlgorithmsEbb"]
        pub fn set_deterministic_algorithms(context: *mut c_void, on: bool, warn_only: bool);
        #[link_name = "_ZNK2at7Context23deterministicAlgorithmsEv"]
        pub fn deterministic_algorithms(context: *mut c_void) -> bool;
        #[link_name = "_ZN2at7Context39setDeterministicFillUninitializedMemoryEb"]
        pub fn set_fill_uninitialized_memory(context: *mut c_void, on: bool);
        #[link_name = "_ZNK2at7Context36deterministicFillUninitializedMemoryEv"]
        pub fn fill_uninitialized_memory(context: *mut c_void) -> bool;
    }
}

/// cuBLAS's deterministic workspace setting: the plugin declares it in its `PluginInfo::env`,
/// and `t5-bench` sets it first thing in `main`.
pub const CUBLAS_WORKSPACE: (&str, &str) = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_algorithms_reach_pytorch() {
        // The flag torch.use_deterministic_algorithms sets.
        assert!(fills_uninitialized_memory(), "PyTorch's default");
        deterministic_algorithms();
        assert!(deterministic_algorithms_enabled());
        assert!(!fills_uninitialized_memory());
        // With the fill back on, torch.empty in deterministic mode is all NaN.
        let empty = || tch::Tensor::empty([64], (tch::Kind::Float, tch::Device::Cpu));
        fill_uninitialized_memory(true);
        assert!(fills_uninitialized_memory());
        assert!(bool::try_from(empty().isnan().all()).unwrap());
        fill_uninitialized_memory(false);
        // Deterministic mode changes no CPU result the plugin relies on: a product still
        // runs (and would fail here if the declarations did not match the library).
        let a = tch::Tensor::ones([4, 4], (tch::Kind::Float, tch::Device::Cpu));
        assert_eq!(a.matmul(&a).double_value(&[0, 0]), 4.0);
    }
}
