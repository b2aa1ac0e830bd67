// Shared by the pybind11 binding files (the only files that include pybind11): the registration functions of
// the _core module's parts and small helpers for error messages.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

namespace fewshot_da_bindings {

namespace py = pybind11;

// "(S, H, W)" for error messages.
inline std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t k = 0; k < a.ndim(); ++k) s += (k ? ", " : "") + std::to_string(a.shape(k));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

void register_metrics(py::module_& m);  // metrics.cpp: the surface-distance kernels
void register_loader(py::module_& m);   // loader.cpp: the fused slice loader

}  // namespace fewshot_da_bindings
