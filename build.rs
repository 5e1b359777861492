//! Puts libtorch's `lib` folder on the rpath of every binary, test and bench this crate links, so
//! `datanet` runs without LD_LIBRARY_PATH. torch-sys reports the folder as `DEP_TCH_LIBTORCH_LIB`.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:rustc-env=DATANET_LIBTORCH_LIB={dir}");
    }
}
