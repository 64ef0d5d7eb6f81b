// export.hpp — which symbols libedgetune.so exports: the public C++ API, nothing else.
//
// Every module is compiled with hidden visibility (meson's gnu_symbol_visibility), so nothing
// leaves a shared library unless it says so. Each module's ONE public header opens its
// namespace as `namespace EDGETUNE_API edgetune {`: everything declared there (classes with
// their members, vtables and typeinfo, free functions) is exported; private headers and
// file-local code open a plain `namespace edgetune {` and stay hidden. The C ABI marks its
// functions itself (capi/edgetune.h, ET_API).
//
// Why not a linker version script: it can only hide, never re-export what was compiled hidden,
// so the modules would have to be compiled with default visibility; its `edgetune::*` wildcard
// then cannot tell a public class from a private helper of the same namespace, and code
// compiled for default visibility is larger (every call may be interposed). The namespace
// attribute (what libstdc++ does for `std`) costs one token per public header.
// error.hpp includes this file, so every public header has the macro.
#pragma once

#if defined(__GNUC__) || defined(__clang__)
#define EDGETUNE_API [[gnu::visibility("default")]]
// A private type inside the public namespace (e.g. a public class's Impl): not exported.
#define EDGETUNE_HIDDEN [[gnu::visibility("hidden")]]
#else
#define EDGETUNE_API
#define EDGETUNE_HIDDEN
#endif
