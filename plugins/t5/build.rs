//! Links the plugin so it finds libtorch by itself and keeps CUDA: an rpath to the libtorch
//! that torch-sys built against, and `--no-as-needed` so rustc's default `--as-needed`
//! cannot drop `libtorch_cuda` (CUDA would then be silently unavailable).
//!
//! Also compiles `csrc/dist.cpp`, the C shim over libtorch's c10d (TCPStore, Gloo) that
//! data-parallel training calls, against the same libtorch's headers.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=csrc");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    // The wheel's layout: torch/lib beside torch/include.
    let include = Path::new(&lib)
        .parent()
        .map(|p| p.join("include"))
        .expect("libtorch's lib folder has a parent");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let mut build = cc::Build::new();
    // NCCL: a CUDA libtorch, and the CUDA and NCCL headers the pip packages put beside
    // torch (site-packages/nvidia/...; the runtime's crt/ and CCCL's nv/ come from
    // scripts/requirements-test.txt). Without them the plugin has Gloo only.
    let nvidia = include.join("../../nvidia");
    let cuda_include = nvidia.join("cu13/include");
    let nccl_include = nvidia.join("nccl/include");
    let nccl = Path::new(&lib).join("libtorch_cuda.so").exists()
        && cuda_include.join("crt/host_config.h").exists()
        && cuda_include.join("nv/target").exists()
        && nccl_include.join("nccl.h").exists();
    if nccl {
        build
            .include(&cuda_include)
            .include(&nccl_include)
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None)
            .define("EHR_WITH_NCCL", None);
    } else {
        println!(
            "cargo:warning=the T5 plugin is built without NCCL (no CUDA libtorch or CUDA/NCCL headers beside it); data-parallel runs use Gloo"
        );
    }
    build
        .cpp(true)
        .file("csrc/dist.cpp")
        .include("csrc/gloo-decls")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .define("USE_C10D_GLOO", None)
        .define("GLOG_USE_GLOG_EXPORT", None)
        // libtorch's headers warn under GCC's defaults; the shim's own code is small.
        .warnings(false)
        .flag("-w")
        .compile("ehrprep_dist");

    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
}
