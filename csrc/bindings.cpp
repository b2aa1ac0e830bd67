// The only pybind11 file: argument checks under the GIL, then the C++ kernels with the GIL released.
// Compiled twice: as fewshot_da._core (CPU kernels) and, with FEWSHOT_DA_CUDA_MODULE, as fewshot_da._cuda.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace py = pybind11;

namespace {
// "(S, H, W)" for error messages.
[[maybe_unused]] std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t k = 0; k < a.ndim(); ++k) s += (k ? ", " : "") + std::to_string(a.shape(k));
    return s + (a.ndim() == 1 ? ",)" : ")");
}
}  // namespace

#ifndef FEWSHOT_DA_CUDA_MODULE

// ---- surface distance (metrics) section: begin ----
#include <cmath>
#include <string>
#include <vector>

#include "surface_distance.h"

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
// ---- surface distance (metrics) section: end ----

// ---- slice loader (data) section: begin ----
#include "slice_loader.h"

namespace {

// Owns the C++ batcher and references to the registered arrays, which keeps them (memmaps) alive.
struct PySliceBatcher {
    std::vector<py::array> keep_alive;
    std::unique_ptr<fewshot_da::SliceBatcher> batcher;
};

// AugmentSpec from a dict of its field names (all keys required; checked by fewshot_da.data.augment).
fewshot_da::AugmentSpec augment_spec(const py::dict& d) {
    fewshot_da::AugmentSpec s;
    const std::pair<const char*, double*> fields[] = {
        {"rotation_p", &s.rotation_p}, {"rotation_deg", &s.rotation_deg}, {"rot90_p", &s.rot90_p},
        {"zoom_p", &s.zoom_p}, {"zoom_min", &s.zoom_min}, {"zoom_max", &s.zoom_max}, {"shear_p", &s.shear_p},
        {"shear", &s.shear}, {"flip_y_p", &s.flip_y_p}, {"flip_x_p", &s.flip_x_p},
        {"translate_p", &s.translate_p}, {"translate_y_px", &s.translate_y_px},
        {"translate_x_px", &s.translate_x_px}, {"bias_p", &s.bias_p}, {"bias", &s.bias},
        {"gamma_p", &s.gamma_p}, {"gamma_min", &s.gamma_min}, {"gamma_max", &s.gamma_max},
        {"contrast_p", &s.contrast_p}, {"contrast_min", &s.contrast_min}, {"contrast_max", &s.contrast_max},
        {"brightness_p", &s.brightness_p}, {"brightness", &s.brightness}, {"noise_p", &s.noise_p},
        {"noise_sd_min", &s.noise_sd_min}, {"noise_sd_max", &s.noise_sd_max}};
    if (d.size() != sizeof(fields) / sizeof(fields[0]))
        throw py::value_error("augment: expected " + std::to_string(sizeof(fields) / sizeof(fields[0])) +
                              " fields, got " + std::to_string(d.size()));
    for (const auto& f : fields) {
        if (!d.contains(f.first)) throw py::value_error(std::string("augment: missing field ") + f.first);
        *f.second = d[f.first].cast<double>();
    }
    return s;
}

py::dict augment_params_dict(const fewshot_da::AugmentParams& a) {
    py::dict d;
    d["angle_deg"] = a.angle_deg, d["rot90"] = a.rot90, d["zoom"] = a.zoom;
    d["shear_y"] = a.shear_y, d["shear_x"] = a.shear_x, d["flip_y"] = a.flip_y, d["flip_x"] = a.flip_x;
    d["translate_y_px"] = a.translate_y, d["translate_x_px"] = a.translate_x;
    d["matrix"] = py::make_tuple(py::make_tuple(a.matrix[0], a.matrix[1]), py::make_tuple(a.matrix[2], a.matrix[3]));
    d["bias"] = py::make_tuple(a.bias[0], a.bias[1], a.bias[2], a.bias[3]);
    d["gamma"] = a.gamma, d["contrast"] = a.contrast, d["brightness"] = a.brightness;
    d["noise_sd"] = a.noise_sd, d["noise_key"] = a.noise_key;
    return d;
}

std::unique_ptr<PySliceBatcher> make_slice_batcher(const py::list& images, const py::list& masks,
                                                   const py::list& slices, int64_t batch_size, int64_t crop_h,
                                                   int64_t crop_w, uint64_t seed, int64_t n_fg_items,
                                                   int num_threads, const py::object& augment) {
    std::unique_ptr<fewshot_da::AugmentSpec> spec;
    if (!augment.is_none()) spec = std::make_unique<fewshot_da::AugmentSpec>(augment_spec(augment.cast<py::dict>()));
    const size_t n = images.size();
    if (masks.size() != n || slices.size() != n)
        throw py::value_error("images, masks and slices must have the same length, got " + std::to_string(n) +
                              ", " + std::to_string(masks.size()) + ", " + std::to_string(slices.size()));
    auto owner = std::make_unique<PySliceBatcher>();
    std::vector<fewshot_da::SliceVolume> volumes(n);
    for (size_t k = 0; k < n; ++k) {
        const std::string idx = "[" + std::to_string(k) + "]";
        if (!py::isinstance<py::array>(images[k]) || !py::isinstance<py::array>(masks[k]))
            throw py::value_error("images" + idx + " / masks" + idx + ": expected numpy arrays");
        py::array image = py::reinterpret_borrow<py::array>(images[k]);
        py::array mask = py::reinterpret_borrow<py::array>(masks[k]);
        const bool f32 = image.dtype().is(py::dtype::of<float>());
        const bool f16 = image.dtype().kind() == 'f' && image.itemsize() == 2;
        if (!f32 && !f16) throw py::value_error("images" + idx + ": dtype must be float32 or float16");
        const bool u8 = mask.dtype().is(py::dtype::of<uint8_t>()) || mask.dtype().kind() == 'b';
        if (!u8 || mask.itemsize() != 1) throw py::value_error("masks" + idx + ": dtype must be uint8 or bool");
        if (image.ndim() != 3) throw py::value_error("images" + idx + ": expected (S, H, W), got " + shape_str(image));
        if (mask.ndim() != 3 || shape_str(mask) != shape_str(image))
            throw py::value_error("masks" + idx + ": shape " + shape_str(mask) + " != image shape " + shape_str(image));
        if (!(image.flags() & py::array::c_style) || !(mask.flags() & py::array::c_style))
            throw py::value_error("images" + idx + " / masks" + idx + ": arrays must be C-contiguous");
        auto list = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(slices[k]);
        if (!list || list.ndim() != 1) throw py::value_error("slices" + idx + ": expected a 1D integer array");
        fewshot_da::SliceVolume& v = volumes[k];
        v.image = image.data();
        v.dtype = f32 ? fewshot_da::ImageDtype::kFloat32 : fewshot_da::ImageDtype::kFloat16;
        v.mask = static_cast<const uint8_t*>(mask.data());
        v.n_slices = image.shape(0);
        v.height = image.shape(1);
        v.width = image.shape(2);
        v.allowed.assign(list.data(), list.data() + list.size());
        owner->keep_alive.push_back(image);
        owner->keep_alive.push_back(mask);
    }
    {
        py::gil_scoped_release release;
        owner->batcher = std::make_unique<fewshot_da::SliceBatcher>(std::move(volumes), batch_size, crop_h, crop_w,
                                                                    seed, n_fg_items, num_threads, spec.get());
    }
    return owner;
}

void check_batch_buffer(const py::array& out, const fewshot_da::SliceBatcher& b, const char* name) {
    if (!out.dtype().is(py::dtype::of<float>())) throw py::value_error(std::string(name) + ": dtype must be float32");
    if (out.ndim() != 4 || out.shape(0) != b.batch_size() || out.shape(1) != 1 || out.shape(2) != b.crop_h() ||
        out.shape(3) != b.crop_w())
        throw py::value_error(std::string(name) + ": expected shape (" + std::to_string(b.batch_size()) + ", 1, " +
                              std::to_string(b.crop_h()) + ", " + std::to_string(b.crop_w()) + "), got " +
                              shape_str(out));
    if (!(out.flags() & py::array::c_style) || !out.writeable())
        throw py::value_error(std::string(name) + ": must be a writeable C-contiguous array");
}

void slice_batcher_fill(PySliceBatcher& self, uint64_t step, py::array image_out, py::array mask_out,
                        int num_threads) {
    check_batch_buffer(image_out, *self.batcher, "image_out");
    check_batch_buffer(mask_out, *self.batcher, "mask_out");
    if (image_out.data() == mask_out.data()) throw py::value_error("image_out and mask_out must not alias");
    float* x = static_cast<float*>(image_out.mutable_data());
    float* y = static_cast<float*>(mask_out.mutable_data());
    py::gil_scoped_release release;
    self.batcher->fill(step, x, y, num_threads);
}

}  // namespace
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
    // ---- module definitions (metrics): end ----

    // ---- module definitions (data): begin ----
    py::class_<PySliceBatcher>(m, "SliceBatcher", "Registered volumes + sampling rule; see fewshot_da.data.loader.")
        .def(py::init(&make_slice_batcher), py::arg("images"), py::arg("masks"), py::arg("slices"),
             py::arg("batch_size"), py::arg("crop_h"), py::arg("crop_w"), py::arg("seed"), py::arg("n_fg_items"),
             py::arg("num_threads"), py::arg("augment") = py::none())
        .def("fill", &slice_batcher_fill, py::arg("step"), py::arg("image_out"), py::arg("mask_out"),
             py::arg("num_threads"), "Fill (B, 1, ch, cw) float32 buffers with batch `step` (GIL released).")
        .def("draw", [](const PySliceBatcher& self, uint64_t step, int64_t item) {
                 if (item < 0 || item >= self.batcher->batch_size()) throw py::value_error("item out of range");
                 const fewshot_da::ItemDraw d = self.batcher->draw(step, item);
                 return py::make_tuple(d.volume, d.slice, d.y0, d.x0, d.centred);
             }, py::arg("step"), py::arg("item"), "(volume, slice, y0, x0, centred) of one batch item.")
        .def("augment_params", [](const PySliceBatcher& self, uint64_t step, int64_t item) {
                 if (item < 0 || item >= self.batcher->batch_size()) throw py::value_error("item out of range");
                 return augment_params_dict(self.batcher->augment_params(step, item));
             }, py::arg("step"), py::arg("item"), "Augmentation parameters of one batch item (dict).")
        .def("foreground_slices", [](const PySliceBatcher& self, int64_t volume) {
                 if (volume < 0 || static_cast<size_t>(volume) >= self.keep_alive.size() / 2)
                     throw py::value_error("volume out of range");
                 return self.batcher->foreground_slices(volume);
             }, py::arg("volume"));
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
