// The only pybind11 file: argument checks under the GIL, then the C++ kernels with the GIL released.
// Compiled twice: as fewshot_da._core (CPU kernels) and, with FEWSHOT_DA_CUDA_MODULE, as fewshot_da._cuda.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace py = pybind11;

#ifndef FEWSHOT_DA_CUDA_MODULE

// ---- surface distance (metrics) section: begin ----
// ---- surface distance (metrics) section: end ----

// ---- slice loader (data) section: begin ----
// ---- slice loader (data) section: end ----

PYBIND11_MODULE(_core, m) {
    m.doc() = "fewshot-da compiled core: surface-distance kernels and the fused slice loader.";
    // ---- module definitions (metrics): begin ----
    // ---- module definitions (metrics): end ----

    // ---- module definitions (data): begin ----
    // ---- module definitions (data): end ----
}

#else  // FEWSHOT_DA_CUDA_MODULE

// ---- CUDA section: begin ----
PYBIND11_MODULE(_cuda, m) {
    m.doc() = "fewshot-da CUDA kernels (device buffers in, host results out).";
}
// ---- CUDA section: end ----

#endif
