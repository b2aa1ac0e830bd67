// _core's surface-distance functions: argument checks under the GIL, then the kernels with the GIL released.
#include "bindings/bindings.h"

#include <cmath>
#include <string>
#include <vector>

#include "surface_distance.h"

namespace py = pybind11;
using fewshot_da_bindings::shape_str;

namespace {

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

py::dict core_surface_distance_summary(const py::array& gt, const py::array& pred,
                                       const std::vector<double>& spacing_mm, double percent, int num_threads) {
    const fewshot_da::MaskPair m = mask_pair(gt, pred, spacing_mm);
    if (!(percent >= 0 && percent <= 100)) throw py::value_error("percent must be in [0, 100]");
    fewshot_da::DistanceSummary s;
    {
        py::gil_scoped_release release;
        s = fewshot_da::surface_distance_summary(m, percent, num_threads);
    }
    py::dict d;
    d["hd_gt_to_pred_mm"] = s.hd_gt_to_pred_mm;
    d["hd_pred_to_gt_mm"] = s.hd_pred_to_gt_mm;
    d["gt_area_mm2"] = s.gt_area_mm2;
    d["gt_weighted_mm3"] = s.gt_weighted_mm3;
    d["pred_area_mm2"] = s.pred_area_mm2;
    d["pred_weighted_mm3"] = s.pred_weighted_mm3;
    d["n_gt"] = s.n_gt;
    d["n_pred"] = s.n_pred;
    return d;
}

py::dict core_case_scores(const py::array& gt, const py::array& pred, const std::vector<double>& spacing_mm,
                          const std::vector<double>& tolerances_mm, bool with_distances, double percent,
                          int num_threads) {
    const fewshot_da::MaskPair m = mask_pair(gt, pred, spacing_mm);
    const std::vector<double> tol = checked_tolerances(tolerances_mm);
    if (!(percent >= 0 && percent <= 100)) throw py::value_error("percent must be in [0, 100]");
    fewshot_da::CaseScores c;
    {
        py::gil_scoped_release release;
        c = fewshot_da::case_scores(m, tol.data(), static_cast<int>(tol.size()), with_distances, percent, num_threads);
    }
    py::array_t<double> areas({static_cast<py::ssize_t>(tol.size()), static_cast<py::ssize_t>(4)});
    std::copy(c.surface_dice_areas.begin(), c.surface_dice_areas.end(), areas.mutable_data());
    py::dict d;
    d["surface_dice_areas"] = areas;
    d["gt_voxels"] = c.voxels.gt;
    d["pred_voxels"] = c.voxels.pred;
    d["both_voxels"] = c.voxels.both;
    if (c.has_distances) {
        const fewshot_da::DistanceSummary& s = c.distances;
        py::dict dist;
        dist["hd_gt_to_pred_mm"] = s.hd_gt_to_pred_mm;
        dist["hd_pred_to_gt_mm"] = s.hd_pred_to_gt_mm;
        dist["gt_area_mm2"] = s.gt_area_mm2;
        dist["gt_weighted_mm3"] = s.gt_weighted_mm3;
        dist["pred_area_mm2"] = s.pred_area_mm2;
        dist["pred_weighted_mm3"] = s.pred_weighted_mm3;
        dist["n_gt"] = s.n_gt;
        dist["n_pred"] = s.n_pred;
        d["distances"] = dist;
    } else {
        d["distances"] = py::none();
    }
    return d;
}

// C-order uint8 copy of a Fortran-ordered bool/uint8 2D or 3D array (NIfTI data), without NumPy's strided copy.
py::array_t<uint8_t> core_c_order_mask(const py::array& mask) {
    const char kind = mask.dtype().kind();
    if (!((kind == 'b' || kind == 'u') && mask.itemsize() == 1))
        throw py::value_error("mask must be a bool or uint8 array");
    if (!(mask.flags() & py::array::f_style)) throw py::value_error("mask must be Fortran-contiguous");
    if (mask.ndim() != 2 && mask.ndim() != 3) throw py::value_error("mask must be 2D or 3D");
    std::vector<py::ssize_t> shape(mask.shape(), mask.shape() + mask.ndim());
    const int64_t n0 = mask.ndim() == 3 ? shape[0] : 1, n1 = shape[mask.ndim() - 2], n2 = shape[mask.ndim() - 1];
    py::array_t<uint8_t> out(shape);
    const uint8_t* in = static_cast<const uint8_t*>(mask.data());
    uint8_t* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        fewshot_da::fortran_to_c_order(in, n0, n1, n2, o);
    }
    return out;
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

namespace fewshot_da_bindings {

void register_metrics(py::module_& m) {
    m.def("surface_dice_areas", &core_surface_dice_areas, py::arg("gt"), py::arg("pred"), py::arg("spacing_mm"),
          py::arg("tolerances_mm"), py::arg("num_threads") = 0,
          "Surfel areas per tolerance: rows [gt within, gt total, pred within, pred total] (mm^2; mm in 2D).");
    m.def("surface_distances", &core_surface_distances, py::arg("gt"), py::arg("pred"), py::arg("spacing_mm"),
          py::arg("num_threads") = 0,
          "(gt_to_pred_mm, pred_to_gt_mm, gt_areas_mm2, pred_areas_mm2), surfels in raster order.");
    m.def("surface_distance_summary", &core_surface_distance_summary, py::arg("gt"), py::arg("pred"),
          py::arg("spacing_mm"), py::arg("percent") = 95.0, py::arg("num_threads") = 0,
          "Directed percentile distances, surfel areas and area-weighted distance sums (mm) of both surfaces.");
    m.def("case_scores", &core_case_scores, py::arg("gt"), py::arg("pred"), py::arg("spacing_mm"),
          py::arg("tolerances_mm"), py::arg("with_distances"), py::arg("percent") = 95.0, py::arg("num_threads") = 0,
          "One case in one call: voxel counts, surface-Dice areas per tolerance, optional HD/ASSD summary.");
    m.def("c_order_mask", &core_c_order_mask, py::arg("mask"),
          "C-order uint8 copy of a Fortran-ordered bool/uint8 2D/3D mask (tiled; GIL released).");
    m.def("surface_dice_areas_plain", &core_surface_dice_areas_plain, py::arg("gt"), py::arg("pred"),
          py::arg("spacing_mm"), py::arg("tolerances_mm"),
          "The CUDA kernel's per-corner algorithm on the host (for tests); same output as surface_dice_areas.");
    m.def("corner_codes", &core_corner_codes, py::arg("mask"), "Neighbour code of every voxel corner (shape + 1).");
}

}  // namespace fewshot_da_bindings
