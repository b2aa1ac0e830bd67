// _core's SliceBatcher: argument checks under the GIL, then the fused loader with the GIL released.
#include "bindings/bindings.h"

#include "slice_loader.h"

namespace py = pybind11;
using fewshot_da_bindings::shape_str;

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

namespace fewshot_da_bindings {

void register_loader(py::module_& m) {
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
}

}  // namespace fewshot_da_bindings
