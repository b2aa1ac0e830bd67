// The only pybind11 file: argument checks under the GIL, then the C++ kernels with the GIL released.
// Compiled twice: as fewshot_da._core (CPU kernels) and, with FEWSHOT_DA_CUDA_MODULE, as fewshot_da._cuda.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace py = pybind11;

#ifndef FEWSHOT_DA_CUDA_MODULE

// ---- surface distance (metrics) section: begin ----
#include <cmath>
#include <string>
#include <vector>

#include "surface_distance.h"

namespace {

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t k = 0; k < a.ndim(); ++k) s += (k ? ", " : "") + std::to_string(a.shape(k));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

// Checks under the GIL: uint8/bool C-contiguous 2D/3D masks of one shape, one positive spacing per axis.
fewshot_da::MaskPair mask_pair(const py::array& gt, const py::array& pred, const std::vector<double>& spacing_mm) {
    for (const py::array* a : {&gt, &pred}) {
        const char kind = a->dtype().kind();
        if (!((kind == 'b' || kind == 'u') && a->itemsize() == 1))
            throw py::value_error("masks must be bool or uint8 arrays, got dtype " +
                                  std::string(py::str(a->dtype())));
        if (!(a->flags() & py::array::c_style)) throw py::value_error("masks must be C-contiguous");
    }
    if (gt.ndim() != 2 && gt.ndim() != 3) throw py::value_error("masks must be 2D or 3D, got shape " + shape_str(gt));
    if (gt.ndim() != pred.ndim() || !std::equal(gt.shape(), gt.shape() + gt.ndim(), pred.shape()))
        throw py::value_error("gt and pred shapes differ: " + shape_str(gt) + " vs " + shape_str(pred));
    if (static_cast<py::ssize_t>(spacing_mm.size()) != gt.ndim())
        throw py::value_error("spacing_mm has " + std::to_string(spacing_mm.size()) + " values for masks of shape " +
                              shape_str(gt));
    for (double s : spacing_mm)
        if (!(s > 0) || !std::isfinite(s)) throw py::value_error("spacing_mm values must be positive and finite");
    for (py::ssize_t k = 0; k < gt.ndim(); ++k)
        if (gt.shape(k) == 0) throw py::value_error("masks must not have a zero-length axis: " + shape_str(gt));
    fewshot_da::MaskPair m;
    m.gt = static_cast<const uint8_t*>(gt.data());
    m.pred = static_cast<const uint8_t*>(pred.data());
    m.ndim = static_cast<int>(gt.ndim());
    const int lead = m.ndim == 2 ? 1 : 0;
    m.shape[0] = 1;
    m.spacing_mm[0] = 1.0;
    for (int k = 0; k < m.ndim; ++k) {
        m.shape[k + lead] = gt.shape(k);
        m.spacing_mm[k + lead] = spacing_mm[k];
    }
    return m;
}

std::vector<double> checked_tolerances(const std::vector<double>& tolerances_mm) {
    for (double t : tolerances_mm)
        if (!(t >= 0)) throw py::value_error("tolerance_mm values must be >= 0");
    return tolerances_mm;
}

py::array_t<double> to_numpy(std::vector<double>&& v) {
    auto* heap = new std::vector<double>(std::move(v));
    py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<double>*>(p); });
    return py::array_t<double>(static_cast<py::ssize_t>(heap->size()), heap->data(), owner);
}

py::array_t<double> core_surface_dice_areas(const py::array& gt, const py::array& pred,
                                            const std::vector<double>& spacing_mm,
                                            const std::vector<double>& tolerances_mm, int num_threads) {
    const fewshot_da::MaskPair m = mask_pair(gt, pred, spacing_mm);
    const std::vector<double> tol = checked_tolerances(tolerances_mm);
    py::array_t<double> out({static_cast<py::ssize_t>(tol.size()), static_cast<py::ssize_t>(4)});
    double* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        fewshot_da::surface_dice_areas(m, tol.data(), static_cast<int>(tol.size()), num_threads, o);
    }
    return out;
}

py::tuple core_surface_distances(const py::array& gt, const py::array& pred, const std::vector<double>& spacing_mm,
                                 int num_threads) {
    const fewshot_da::MaskPair m = mask_pair(gt, pred, spacing_mm);
    fewshot_da::SurfaceDistanceArrays r;
    {
        py::gil_scoped_release release;
        r = fewshot_da::surface_distances(m, num_threads);
    }
    return py::make_tuple(to_numpy(std::move(r.gt_to_pred_mm)), to_numpy(std::move(r.pred_to_gt_mm)),
                          to_numpy(std::move(r.gt_areas_mm2)), to_numpy(std::move(r.pred_areas_mm2)));
}

py::array_t<double> core_surface_dice_areas_plain(const py::array& gt, const py::array& pred,
                                                  const std::vector<double>& spacing_mm,
                                                  const std::vector<double>& tolerances_mm) {
    const fewshot_da::MaskPair m = mask_pair(gt, pred, spacing_mm);
    const std::vector<double> tol = checked_tolerances(tolerances_mm);
    py::array_t<double> out({static_cast<py::ssize_t>(tol.size()), static_cast<py::ssize_t>(4)});
    double* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        fewshot_da::surface_dice_areas_plain(m, tol.data(), static_cast<int>(tol.size()), o);
    }
    return out;
}

py::array_t<uint8_t> core_corner_codes(const py::array& mask) {
    const fewshot_da::MaskPair m = mask_pair(mask, mask, std::vector<double>(mask.ndim(), 1.0));
    std::vector<py::ssize_t> shape;
    for (py::ssize_t k = 0; k < mask.ndim(); ++k) shape.push_back(mask.shape(k) + 1);
    py::array_t<uint8_t> out(shape);
    uint8_t* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        fewshot_da::corner_code_map(m, false, o);
    }
    return out;
}

}  // namespace
// ---- surface distance (metrics) section: end ----

// ---- slice loader (data) section: begin ----
// ---- slice loader (data) section: end ----

PYBIND11_MODULE(_core, m) {
    m.doc() = "fewshot-da compiled core: surface-distance kernels and the fused slice loader.";
    // ---- module definitions (metrics): begin ----
    m.def("surface_dice_areas", &core_surface_dice_areas, py::arg("gt"), py::arg("pred"), py::arg("spacing_mm"),
          py::arg("tolerances_mm"), py::arg("num_threads") = 0,
          "Surfel areas per tolerance: rows [gt within, gt total, pred within, pred total] (mm^2; mm in 2D).");
    m.def("surface_distances", &core_surface_distances, py::arg("gt"), py::arg("pred"), py::arg("spacing_mm"),
          py::arg("num_threads") = 0,
          "(gt_to_pred_mm, pred_to_gt_mm, gt_areas_mm2, pred_areas_mm2), surfels in raster order.");
    m.def("surface_dice_areas_plain", &core_surface_dice_areas_plain, py::arg("gt"), py::arg("pred"),
          py::arg("spacing_mm"), py::arg("tolerances_mm"),
          "The CUDA kernel's per-corner algorithm on the host (for tests); same output as surface_dice_areas.");
    m.def("corner_codes", &core_corner_codes, py::arg("mask"), "Neighbour code of every voxel corner (shape + 1).");
    // ---- module definitions (metrics): end ----

    // ---- module definitions (data): begin ----
    // ---- module definitions (data): end ----
}

#else  // FEWSHOT_DA_CUDA_MODULE

// ---- CUDA section: begin ----
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda/surface_dice_cuda.h"

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
// ---- CUDA section: end ----

#endif
