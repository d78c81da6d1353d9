/* Force-included into every mlx-c C++ translation unit (see build.rs). */
#ifndef OPTA_MLX_C_CXX_COMPAT_H
#define OPTA_MLX_C_CXX_COMPAT_H

/* mlx-c declares its float16/bfloat16 API only where half.h finds ARM half types. MLX itself
   has portable 16-bit float types on every platform, so give the C API those: the functions
   only pass pointers to them, and both types are two bytes. Defining the guard keeps half.h
   from redefining the names. */
#ifndef __aarch64__
#include <mlx/types/half_types.h>
#define MLX_HALF_H
#define HAS_FLOAT16
#define HAS_BFLOAT16
typedef mlx::core::float16_t float16_t;
typedef mlx::core::bfloat16_t bfloat16_t;
#endif

/* mlx-c formats a few error messages with std::format, which libstdc++ before 13 lacks;
   {fmt} (header-only) provides the same call. */
#include <version>
#if !defined(__cpp_lib_format)
#define FMT_HEADER_ONLY
#include <fmt/format.h>
namespace std {
using fmt::format;
}
#endif

#endif
