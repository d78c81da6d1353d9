//! Every binary of this package (the worker, its tests and benches) loads libmlx at run time:
//! point its rpath at the MLX prefix the workspace's mlx-sys was built against. A dependency's
//! own link args do not reach the final binary, hence this in the binary's package.
fn main() {
    if let Ok(dir) = std::env::var("DEP_MLX_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
