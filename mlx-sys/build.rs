//! Builds mlx-c against an installed MLX prefix and generates the bindings mlx-rs expects.
//!
//! Inputs (both laid down by `scripts/setup.sh`, both overridable):
//! - `MLX_PREFIX`: an MLX install prefix holding `lib/libmlx.*`, `include/` and
//!   `share/cmake/MLX/`. The official wheels are such prefixes: `mlx-cpu` (Linux CPU),
//!   `mlx` (macOS, Metal), `mlx-cuda-12` (NVIDIA). Default: `<workspace>/.deps/mlx-prefix`.
//! - `MLX_C_SRC`: the mlx-c sources shipped inside the published `mlx-sys` crate.
//!   Default: `<workspace>/.deps/mlx-c`.
//!
//! Dependents read the library directory as `DEP_MLX_LIB_DIR` to set their rpath.

use std::env;
use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .expect("mlx-sys lives inside the workspace");

    let prefix = input_dir("MLX_PREFIX", &workspace.join(".deps/mlx-prefix"));
    let mlx_c = input_dir("MLX_C_SRC", &workspace.join(".deps/mlx-c"));
    check_exists(
        &prefix.join("share/cmake/MLX/MLXConfig.cmake"),
        "MLX_PREFIX",
    );
    check_exists(&mlx_c.join("CMakeLists.txt"), "MLX_C_SRC");
    check_exists(&mlx_c.join("mlx/c/mlx.h"), "MLX_C_SRC");

    for file in ["compat/cxx_compat.h", "compat/bindgen_compat.h"] {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-changed={}", prefix.join("lib").display());

    build_mlx_c(&manifest_dir, &prefix, &mlx_c);
    generate_bindings(&manifest_dir, &mlx_c);

    let lib_dir = prefix.join("lib");
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=mlx");
    let cxx_runtime = if cfg!(target_os = "macos") {
        "c++"
    } else {
        "stdc++"
    };
    println!("cargo:rustc-link-lib=dylib={cxx_runtime}");
    // Becomes DEP_MLX_LIB_DIR for crates that link binaries against libmlx.
    println!("cargo:lib_dir={}", lib_dir.display());
}

/// Reads a directory from the environment or falls back to the workspace default, resolving
/// symlinks so that the rpath points at the real files.
fn input_dir(var: &str, default: &Path) -> PathBuf {
    println!("cargo:rerun-if-env-changed={var}");
    let dir = env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| default.to_path_buf());
    dir.canonicalize().unwrap_or(dir)
}

fn check_exists(path: &Path, var: &str) {
    if !path.exists() {
        panic!(
            "{} not found. Run scripts/setup.sh, or set {var} to the right directory.",
            path.display()
        );
    }
}

fn build_mlx_c(manifest_dir: &Path, prefix: &Path, mlx_c: &Path) {
    let compat = manifest_dir.join("compat/cxx_compat.h");
    let dst = cmake::Config::new(mlx_c)
        .define("MLX_C_USE_SYSTEM_MLX", "ON")
        .define("MLX_DIR", prefix.join("share/cmake/MLX"))
        .define("MLX_C_BUILD_EXAMPLES", "OFF")
        .define("BUILD_SHARED_LIBS", "OFF")
        .define("CMAKE_INSTALL_LIBDIR", "lib")
        // The compat header includes MLX's own half types, so the prefix's headers must be
        // visible to every compile, CMake's compiler probe included.
        .cxxflag(format!("-I{}", prefix.join("include").display()))
        .cxxflag(format!("-include {}", compat.display()))
        // mlx-c is a thin shim; an optimised build of it costs the same as a debug one.
        .profile("Release")
        .build_target("mlxc")
        .build();
    println!(
        "cargo:rustc-link-search=native={}",
        dst.join("build").display()
    );
    println!("cargo:rustc-link-lib=static=mlxc");
}

fn generate_bindings(manifest_dir: &Path, mlx_c: &Path) {
    let header_dir = mlx_c.join("mlx/c");
    let mut headers: Vec<PathBuf> = std::fs::read_dir(&header_dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", header_dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "h"))
        .collect();
    headers.sort();

    let compat = manifest_dir.join("compat/bindgen_compat.h");
    let mut builder = bindgen::Builder::default()
        .clang_arg(format!("-I{}", mlx_c.display()))
        .clang_arg("-include")
        .clang_arg(compat.display().to_string())
        // Defined in src/lib.rs with the shapes mlx-rs reads (`float16_t.0`, `bfloat16_t` = u16).
        .blocklist_type("float16_t")
        .blocklist_type("bfloat16_t")
        // libc's allocator declarations come in through the headers; mlx-rs does not need them.
        .blocklist_function("malloc")
        .blocklist_function("realloc")
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for header in &headers {
        builder = builder.header(header.display().to_string());
    }
    let bindings = builder.generate().expect("generating mlx-c bindings");
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("bindings.rs");
    bindings
        .write_to_file(&out)
        .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
