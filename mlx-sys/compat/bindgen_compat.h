/* Seen by bindgen only (see build.rs). Declares the 16-bit float types on every platform as
   plain 16-bit integers; build.rs blocklists them and src/lib.rs defines the Rust types
   mlx-rs expects. libclang on x86_64 does not need to understand _Float16 this way. */
#ifndef OPTA_MLX_C_BINDGEN_COMPAT_H
#define OPTA_MLX_C_BINDGEN_COMPAT_H
#include <stdint.h>
#define MLX_HALF_H
#define HAS_FLOAT16
#define HAS_BFLOAT16
typedef uint16_t float16_t;
typedef uint16_t bfloat16_t;
#endif
