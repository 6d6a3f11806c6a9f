//! Links the plugin so it finds libtorch by itself and keeps CUDA: an rpath to the libtorch
//! that torch-sys built against, and `--no-as-needed` so rustc's default `--as-needed`
//! cannot drop `libtorch_cuda` (CUDA would then be silently unavailable).

fn main() {
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
