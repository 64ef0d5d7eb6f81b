// kernel_variant.hpp — the preamble of every file compiled once per instruction set (the
// `kernels` table in the top-level meson.build). Include it FIRST, before any other header.
//
// Each variant's build defines EDGETUNE_KERNEL_AVX2 (-mavx2 -mfma) or nothing (the build's own
// flags). EDGETUNE_KERNEL(name) names this build's entry point: name_avx2 or name_generic; the
// module's private header declares both and common/cpu.hpp's EDGETUNE_PICK_KERNEL(name)
// chooses one at run time.
//
// NOTE: the AVX2 build renames Eigen's namespace. Both builds instantiate the same Eigen
// templates; under one name the linker would keep just one of each (one definition rule), and
// AVX2 code could end up running on a CPU without AVX2, or the AVX2 path could silently run
// generic code. Only Eigen (and no other template library: no std containers or algorithms)
// may be used in a kernel file, for the same reason; everything else has internal linkage.
// tests/check_kernel_symbols.sh checks the objects' weak symbols.
#pragma once

#ifdef EDGETUNE_KERNEL_AVX2
#define Eigen edgetune_eigen_avx2
#define EDGETUNE_KERNEL_VARIANT avx2
#else
#define EDGETUNE_KERNEL_VARIANT generic
#endif

#define EDGETUNE_KERNEL_JOIN_(name, variant) name##_##variant
#define EDGETUNE_KERNEL_JOIN(name, variant) EDGETUNE_KERNEL_JOIN_(name, variant)
#define EDGETUNE_KERNEL(name) EDGETUNE_KERNEL_JOIN(name, EDGETUNE_KERNEL_VARIANT)
