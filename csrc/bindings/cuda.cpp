// The fewshot_da._cuda module: CUDA surface Dice on device buffers given by address (GIL released).
#include "bindings/bindings.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda/surface_dice_cuda.h"

namespace py = pybind11;

namespace {

py::array_t<double> cuda_surface_dice_areas(std::uintptr_t gt_ptr, std::uintptr_t pred_ptr,
                                            const std::vector<int64_t>& shape, const std::vector<double>& spacing_mm,
                                            const std::vector<double>& tolerances_mm) {
    if (shape.size() != 2 && shape.size() != 3) throw py::value_error("shape must have 2 or 3 entries");
    if (spacing_mm.size() != shape.size()) throw py::value_error("spacing_mm needs one value per axis");
    if (gt_ptr == 0 || pred_ptr == 0) throw py::value_error("device pointers must be non-null");
    for (int64_t n : shape)
        if (n <= 0) throw py::value_error("shape entries must be positive");
    for (double s : spacing_mm)
        if (!(s > 0) || !std::isfinite(s)) throw py::value_error("spacing_mm values must be positive and finite");
    for (double t : tolerances_mm)
        if (!(t >= 0)) throw py::value_error("tolerance_mm values must be >= 0");
    fewshot_da::MaskPair m;
    m.gt = reinterpret_cast<const uint8_t*>(gt_ptr);
    m.pred = reinterpret_cast<const uint8_t*>(pred_ptr);
    m.ndim = static_cast<int>(shape.size());
    const int lead = m.ndim == 2 ? 1 : 0;
    m.shape[0] = 1;
    m.spacing_mm[0] = 1.0;
    for (int k = 0; k < m.ndim; ++k) m.shape[k + lead] = shape[k], m.spacing_mm[k + lead] = spacing_mm[k];
    py::array_t<double> out({static_cast<py::ssize_t>(tolerances_mm.size()), static_cast<py::ssize_t>(4)});
    double* o = out.mutable_data();
    std::string error;
    {
        py::gil_scoped_release release;
        error = fewshot_da::surface_dice_areas_cuda(m, tolerances_mm.data(), static_cast<int>(tolerances_mm.size()), o);
    }
    if (!error.empty()) throw std::runtime_error("CUDA surface Dice failed: " + error);
    return out;
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
    m.doc() = "fewshot-da CUDA kernels (device buffers in, host results out).";
    m.def("surface_dice_areas", &cuda_surface_dice_areas, py::arg("gt_ptr"), py::arg("pred_ptr"), py::arg("shape"),
          py::arg("spacing_mm"), py::arg("tolerances_mm"),
          "Like _core.surface_dice_areas for uint8 C-contiguous device buffers given by address.");
    m.def("device_count", &fewshot_da::cuda_device_count, "Visible CUDA devices (0 without driver or GPU).");
}
