// Tensor metadata, views and host access. Device work (fill, copy) goes to the CPU loops
// below or to tensor/cuda/.
#include "tensor/tensor.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <ostream>

#include "tensor/cuda/backend.h"
#include "tensor/dispatch.h"
#include "tensor/format.h"
#include "tensor/strided.h"

namespace somnus {

void throw_error(const std::string& message) { throw Error(message); }

const char* dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::bf16: return "bf16";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
  }
  return "?";
}

std::string shape_str(const Shape& s) {
  if (s.size() == 1) return fmt::format("({},)", s[0]);
  return fmt::format("({})", fmt::join(s, ", "));
}

int64_t shape_numel(const Shape& s) {
  // A zero anywhere makes the product 0; otherwise every partial product must fit in int64
  // (a wrapped count once gave a 2^62-element tensor a 0-byte storage).
  for (int64_t d : s)
    if (d == 0) return 0;
  int64_t n = 1;
  for (int64_t d : s)
    SOMNUS_CHECK(!__builtin_mul_overflow(n, d, &n), "shape {} has more elements than an int64 holds", shape_str(s));
  return n;
}

Strides contiguous_strides(const Shape& s) {
  Strides st(s.size());
  int64_t acc = 1;
  for (int64_t d = static_cast<int64_t>(s.size()) - 1; d >= 0; --d) {
    st[d] = acc;
    acc *= std::max<int64_t>(s[d], 1);
  }
  return st;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    SOMNUS_CHECK(da == db || da == 1 || db == 1, "{}: shapes {} and {} cannot be broadcast", op, shape_str(a),
                 shape_str(b));
    out[i] = da == 1 ? db : da;
  }
  return out;
}

Strides broadcast_strides(const Tensor& t, const Shape& out) {
  const size_t n = out.size(), nd = t.shape().size();
  SOMNUS_CHECK(nd <= n, "broadcast: tensor {} has more dims than target {}", shape_str(t.shape()), shape_str(out));
  Strides st(n, 0);
  for (size_t i = 0; i < nd; ++i) {
    const size_t j = n - nd + i;
    const int64_t d = t.shape()[i];
    SOMNUS_CHECK(d == out[j] || d == 1, "broadcast: tensor {} cannot be broadcast to {}", shape_str(t.shape()),
                 shape_str(out));
    st[j] = (d == 1 && out[j] != 1) ? 0 : t.strides()[i];
  }
  return st;
}

// ---------------------------------------------------------------- Storage

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  allocator_ = &allocator_for(device);
  if (nbytes > 0) data_ = allocator_->allocate(nbytes);
}

Storage::~Storage() {
  if (data_) allocator_->deallocate(data_, nbytes_);
}

// ---------------------------------------------------------------- Tensor basics

TensorImpl& Tensor::impl() const {
  if (!impl_) throw_error("Tensor: use of an undefined tensor");
  return *impl_;
}

static int64_t wrap_dim(int64_t d, int64_t nd, const char* op) {
  const int64_t w = d < 0 ? d + nd : d;
  SOMNUS_CHECK(w >= 0 && w < nd, "{}: dim {} out of range for a tensor with {} dims", op, d, nd);
  return w;
}

int64_t Tensor::size(int64_t d) const { return shape()[wrap_dim(d, dim(), "size")]; }
int64_t Tensor::stride(int64_t d) const { return strides()[wrap_dim(d, dim(), "stride")]; }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int64_t d = dim() - 1; d >= 0; --d) {
    if (shape()[d] == 1) continue;
    if (strides()[d] != expected) return false;
    expected *= shape()[d];
  }
  return true;
}

void* Tensor::data_ptr() const {
  auto* base = static_cast<char*>(impl().storage->data());
  return base + offset() * dtype_size(dtype());
}

void Tensor::check_dtype(DType expected, const char* op) const {
  SOMNUS_CHECK(dtype() == expected, "{}: expected dtype {}, got {} for tensor {}", op, dtype_name(expected),
               dtype_name(dtype()), shape_str(shape()));
}

void Tensor::check_device(Device expected, const char* op) const {
  SOMNUS_CHECK(device() == expected, "{}: expected device {}, got {} for tensor {}", op, expected.str(),
               device().str(), shape_str(shape()));
}

Tensor& Tensor::set_requires_grad(bool r) {
  SOMNUS_CHECK(!r || is_floating(dtype()), "set_requires_grad: only floating tensors can require grad, got {}",
               dtype_name(dtype()));
  impl().requires_grad = r;
  return *this;
}

Tensor Tensor::detach() const { return make_view(shape(), strides(), offset()); }

Tensor Tensor::make_view(Shape shape, Strides strides, int64_t offset) const {
  auto v = std::make_shared<TensorImpl>();
  v->storage = impl().storage;
  v->shape = std::move(shape);
  v->strides = std::move(strides);
  v->offset = offset;
  v->dtype = impl().dtype;
  return Tensor(std::move(v));
}

// ---------------------------------------------------------------- factories

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) SOMNUS_CHECK(d >= 0, "empty: negative size in shape {}", shape_str(shape));
  if (device.is_cuda()) {
    SOMNUS_CHECK(cuda_compiled(), "empty: device {} requested but this build has no CUDA backend", device.str());
  }
  int64_t nbytes = 0;
  SOMNUS_CHECK(!__builtin_mul_overflow(shape_numel(shape), static_cast<int64_t>(dtype_size(dtype)), &nbytes),
               "empty: shape {} of {} needs more bytes than an int64 holds", shape_str(shape), dtype_name(dtype));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(static_cast<size_t>(nbytes), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }
Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1.0, dtype, device); }

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::scalar(double value, DType dtype, Device device) { return full({}, value, dtype, device); }

Tensor Tensor::arange(int64_t start, int64_t end, int64_t step, DType dtype, Device device) {
  SOMNUS_CHECK(step != 0, "arange: step must be non-zero");
  const int64_t n = std::max<int64_t>(0, (end - start + step - (step > 0 ? 1 : -1)) / step);
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<double>(start + i * step);
  return from_vector(v, {n}, dtype, device);
}

Tensor Tensor::from_vector(const std::vector<double>& values, const Shape& shape, DType dtype, Device device) {
  SOMNUS_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape),
               "from_vector: {} values do not fill shape {}", values.size(), shape_str(shape));
  Tensor t = empty(shape, dtype, Device::cpu());
  visit_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* p = t.data<T>();
    for (size_t i = 0; i < values.size(); ++i) p[i] = static_cast<T>(static_cast<compute_t<T>>(values[i]));
  });
  return t.to(device);
}

void Tensor::fill_(double value) const {
  if (device().is_cuda()) {
    cuda::fill(*this, value);
    return;
  }
  visit_dtype(dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T v = static_cast<T>(static_cast<compute_t<T>>(value));
    T* base = static_cast<T*>(data_ptr());
    for_each_row<1>(shape(), {strides()}, [&](const RowView<1>& r) {
      T* p = base + r.offset[0];
      for (int64_t i = 0; i < r.n; ++i) p[i * r.stride[0]] = v;
    });
  });
}

// ---------------------------------------------------------------- views

static Shape infer_shape(Shape shape, int64_t numel, const char* op, const Shape& from) {
  int64_t infer = -1, known = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      SOMNUS_CHECK(infer < 0, "{}: only one dim may be -1 in {}", op, shape_str(shape));
      infer = static_cast<int64_t>(i);
    } else {
      SOMNUS_CHECK(shape[i] >= 0, "{}: invalid size in {}", op, shape_str(shape));
      SOMNUS_CHECK(!__builtin_mul_overflow(known, shape[i], &known), "{}: shape {} has more elements than an int64 holds",
                   op, shape_str(shape));
    }
  }
  if (infer >= 0) {
    SOMNUS_CHECK(known > 0 && numel % known == 0, "{}: cannot view {} as {}", op, shape_str(from), shape_str(shape));
    shape[infer] = numel / known;
  }
  SOMNUS_CHECK(shape_numel(shape) == numel, "{}: cannot view {} ({} elements) as {}", op, shape_str(from), numel,
               shape_str(shape));
  return shape;
}

// Strides for viewing (old_shape, old_strides) as new_shape without a copy, or empty when
// impossible (the algorithm of PyTorch's computeStride: match runs of contiguous dims).
static bool view_strides(const Shape& old_shape, const Strides& old_strides, const Shape& new_shape, Strides& out) {
  out.assign(new_shape.size(), 0);
  if (shape_numel(old_shape) == 0 || old_shape.empty()) {  // empty, or 0-dim (every new dim is 1)
    out = contiguous_strides(new_shape);
    return true;
  }
  int64_t view_d = static_cast<int64_t>(new_shape.size()) - 1;
  int64_t chunk_base_stride = old_strides.empty() ? 1 : old_strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = static_cast<int64_t>(old_shape.size()) - 1; d >= 0; --d) {
    tensor_numel *= old_shape[d];
    if (d == 0 || (old_shape[d - 1] != 1 && old_strides[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || new_shape[view_d] == 1)) {
        out[view_d] = view_numel * chunk_base_stride;
        view_numel *= new_shape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return false;
      if (d > 0) {
        chunk_base_stride = old_strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  return view_d == -1;
}

Tensor Tensor::view(const Shape& shape_in) const {
  Shape s = infer_shape(shape_in, numel(), "view", shape());
  Strides st;
  SOMNUS_CHECK(view_strides(shape(), strides(), s, st),
               "view: cannot view {} with strides {} as {} without a copy (use reshape)", shape_str(shape()),
               shape_str(strides()), shape_str(s));
  return make_view(s, st, offset());
}

Tensor Tensor::reshape(const Shape& shape_in) const {
  Shape s = infer_shape(shape_in, numel(), "reshape", shape());
  Strides st;
  if (view_strides(shape(), strides(), s, st)) return make_view(s, st, offset());
  return contiguous().view(s);
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  d0 = wrap_dim(d0, dim(), "transpose");
  d1 = wrap_dim(d1, dim(), "transpose");
  Shape s = shape();
  Strides st = strides();
  std::swap(s[d0], s[d1]);
  std::swap(st[d0], st[d1]);
  return make_view(s, st, offset());
}

Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
  SOMNUS_CHECK(static_cast<int64_t>(dims.size()) == dim(), "permute: {} dims given for a tensor of shape {}",
               dims.size(), shape_str(shape()));
  Shape s(dims.size());
  Strides st(dims.size());
  std::vector<bool> seen(dims.size(), false);
  for (size_t i = 0; i < dims.size(); ++i) {
    const int64_t d = wrap_dim(dims[i], dim(), "permute");
    SOMNUS_CHECK(!seen[d], "permute: dim {} repeated in {}", d, shape_str(dims));
    seen[d] = true;
    s[i] = shape()[d];
    st[i] = strides()[d];
  }
  return make_view(s, st, offset());
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  d = wrap_dim(d, dim(), "slice");
  SOMNUS_CHECK(step > 0, "slice: step must be positive, got {}", step);
  const int64_t n = shape()[d];
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape s = shape();
  Strides st = strides();
  s[d] = (end - start + step - 1) / step;
  st[d] = strides()[d] * step;
  return make_view(s, st, offset() + start * strides()[d]);
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  d = wrap_dim(d, dim(), "select");
  const int64_t n = shape()[d];
  SOMNUS_CHECK(index >= -n && index < n, "select: index {} out of range for dim {} of size {}", index, d, n);
  if (index < 0) index += n;
  Shape s = shape();
  Strides st = strides();
  const int64_t off = offset() + index * st[d];
  s.erase(s.begin() + d);
  st.erase(st.begin() + d);
  return make_view(s, st, off);
}

Tensor Tensor::expand(const Shape& target) const {
  SOMNUS_CHECK(target.size() >= shape().size(), "expand: cannot expand {} to fewer dims {}", shape_str(shape()),
               shape_str(target));
  // As torch: -1 keeps an existing dim's size (not allowed for a new leading dim); a size-1 dim
  // may take any size >= 0 (0 too); any other dim keeps its size.
  Shape s = target;
  const size_t lead = target.size() - shape().size();
  for (size_t i = 0; i < target.size(); ++i) {
    const int64_t want = target[i];
    SOMNUS_CHECK(want != -1 || i >= lead,
                 "expand: the expanded size -1 is not allowed at dim {}, a new leading dim (expanding {} to {})", i,
                 shape_str(shape()), shape_str(target));
    SOMNUS_CHECK(want >= -1, "expand: the expanded size {} at dim {} is invalid (expanding {} to {})", want, i,
                 shape_str(shape()), shape_str(target));
    if (i < lead) continue;
    const int64_t have = shape()[i - lead];
    if (want == -1) {
      s[i] = have;
      continue;
    }
    SOMNUS_CHECK(have == 1 || want == have,
                 "expand: the expanded size {} at dim {} must match the existing size {} (only a size-1 dim can "
                 "be expanded; expanding {} to {})",
                 want, i, have, shape_str(shape()), shape_str(target));
  }
  return make_view(s, broadcast_strides(*this, s), offset());
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim(d, dim() + 1, "unsqueeze");
  Shape s = shape();
  Strides st = strides();
  const int64_t new_stride = d < dim() ? st[d] * s[d] : 1;
  s.insert(s.begin() + d, 1);
  st.insert(st.begin() + d, new_stride);
  return make_view(s, st, offset());
}

Tensor Tensor::squeeze(int64_t d) const {
  d = wrap_dim(d, dim(), "squeeze");
  if (shape()[d] != 1) return *this;
  Shape s = shape();
  Strides st = strides();
  s.erase(s.begin() + d);
  st.erase(st.begin() + d);
  return make_view(s, st, offset());
}

// ---------------------------------------------------------------- copies

void strided_copy(const Tensor& dst, const Tensor& src) {
  SOMNUS_CHECK(dst.device() == src.device(), "copy: devices differ: dst {} vs src {}", dst.device().str(),
               src.device().str());
  SOMNUS_CHECK(dst.shape() == src.shape(), "copy: shapes differ: dst {} vs src {}", shape_str(dst.shape()),
               shape_str(src.shape()));
  if (dst.numel() == 0) return;
  if (dst.device().is_cuda()) {
    cuda::strided_copy(dst, src);
    return;
  }
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    std::memcpy(dst.data_ptr(), src.data_ptr(), static_cast<size_t>(dst.nbytes()));
    return;
  }
  visit_dtype(dst.dtype(), [&](auto dtag) {
    using D = decltype(dtag);
    visit_dtype(src.dtype(), [&](auto stag) {
      using S = decltype(stag);
      D* dp = static_cast<D*>(dst.data_ptr());
      const S* sp = static_cast<const S*>(src.data_ptr());
      for_each_row<2>(dst.shape(), {dst.strides(), src.strides()}, [&](const RowView<2>& r) {
        D* d = dp + r.offset[0];
        const S* s = sp + r.offset[1];
        for (int64_t i = 0; i < r.n; ++i) {
          d[i * r.stride[0]] = static_cast<D>(static_cast<compute_t<D>>(static_cast<compute_t<S>>(s[i * r.stride[1]])));
        }
      });
    });
  });
}

namespace {

// [first, last) byte span of t's elements in its storage (strides of any sign).
std::pair<int64_t, int64_t> byte_span(const Tensor& t) {
  int64_t lo = t.offset(), hi = t.offset();
  for (int64_t d = 0; d < t.dim(); ++d) {
    const int64_t reach = (t.size(d) - 1) * t.stride(d);
    (reach >= 0 ? hi : lo) += reach;
  }
  const int64_t es = static_cast<int64_t>(dtype_size(t.dtype()));
  return {lo * es, (hi + 1) * es};
}

// dst and src read and write the same bytes, other than as the very same view.
bool overlaps(const Tensor& dst, const Tensor& src) {
  if (dst.numel() == 0 || src.numel() == 0 || dst.storage() != src.storage()) return false;
  if (dst.offset() == src.offset() && dst.strides() == src.strides() && dst.dtype() == src.dtype()) return false;
  const auto [a0, a1] = byte_span(dst);
  const auto [b0, b1] = byte_span(src);
  return a0 < b1 && b0 < a1;
}

}  // namespace

void Tensor::copy_(const Tensor& src_in) const {
  Tensor src = src_in;
  if (src.shape() != shape()) src = src.expand(shape());
  if (src.device() != device()) src = src.contiguous().to(device());
  // A source that shares bytes with the destination (t.copy_(t.transpose(0, 1))) is read whole
  // first: the row loop would read what it had already written, and memcpy's regions must not
  // overlap. (The span test is conservative: interleaved views that never touch the same bytes
  // take the copy too.)
  if (overlaps(*this, src)) {
    Tensor whole = empty(src.shape(), src.dtype(), src.device());
    strided_copy(whole, src);
    src = whole;
  }
  strided_copy(*this, src);
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  Tensor out = empty(shape(), dtype(), device());
  strided_copy(out, *this);
  return out;
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), device());
  strided_copy(out, *this);
  return out;
}

Tensor Tensor::to(DType d) const { return to(device(), d); }
Tensor Tensor::to(Device dev) const { return to(dev, dtype()); }

Tensor Tensor::to(Device dev, DType d) const {
  if (dev == device() && d == dtype()) return *this;
  if (dev.is_cuda()) {
    // Said here, naming the tensor; else the first allocation on dev says it as "empty: ...".
    SOMNUS_CHECK(cuda_compiled(), "to: cannot move {} {} {} to {}: this build has no CUDA backend",
                 shape_str(shape()), dtype_name(dtype()), device().str(), dev.str());
    const int n = cuda_device_count();
    SOMNUS_CHECK(dev.index >= 0 && dev.index < n, "to: cannot move {} {} {} to {}: {} CUDA device(s) visible",
                 shape_str(shape()), dtype_name(dtype()), device().str(), dev.str(), n);
  }
  if (dev == device()) {
    Tensor out = empty(shape(), d, dev);
    strided_copy(out, *this);
    return out;
  }
  // Cross-device: move the bytes in the source dtype, then convert on the destination.
  Tensor src = contiguous();
  Tensor moved = empty(shape(), dtype(), dev);
  cuda::memcpy(moved.data_ptr(), dev, src.data_ptr(), src.device(), static_cast<size_t>(src.nbytes()));
  return moved.to(d);
}

// ---------------------------------------------------------------- host access

std::vector<double> Tensor::to_vector() const {
  Tensor c = to(Device::cpu(), DType::f64).contiguous();
  const double* p = c.data<double>();
  return std::vector<double>(p, p + c.numel());
}

double Tensor::item() const {
  SOMNUS_CHECK(numel() == 1, "item: tensor of shape {} has {} elements, expected 1", shape_str(shape()), numel());
  return to_vector()[0];
}

double Tensor::at(const std::vector<int64_t>& index) const {
  SOMNUS_CHECK(static_cast<int64_t>(index.size()) == dim(), "at: {} indices for shape {}", index.size(),
               shape_str(shape()));
  Tensor v = *this;
  for (int64_t d = dim() - 1; d >= 0; --d) v = v.select(d, index[d]);
  return v.item();
}

static void print_rec(std::string& out, const std::vector<double>& vals, const Shape& shape, int64_t dim,
                      int64_t base, int64_t max_per_dim, bool integral, int indent) {
  const int64_t nd = static_cast<int64_t>(shape.size());
  if (nd == 0) {
    out += integral ? fmt::format("{}", static_cast<int64_t>(vals[0])) : fmt::format("{:.4f}", vals[0]);
    return;
  }
  const int64_t n = shape[dim];
  const int64_t inner = shape_numel(Shape(shape.begin() + dim + 1, shape.end()));
  const bool summarise = n > max_per_dim;
  const int64_t half = max_per_dim / 2;
  out += "[";
  for (int64_t i = 0; i < n; ++i) {
    if (summarise && i == half) {
      out += dim == nd - 1 ? "..., " : fmt::format("...,\n{:{}}", "", indent + 1);
      i = n - half - 1;
      continue;
    }
    if (dim == nd - 1) {
      const double v = vals[base + i];
      out += integral ? fmt::format("{}", static_cast<int64_t>(v)) : fmt::format("{:.4f}", v);
    } else {
      print_rec(out, vals, shape, dim + 1, base + i * inner, max_per_dim, integral, indent + 1);
    }
    if (i + 1 < n) out += dim == nd - 1 ? ", " : fmt::format(",\n{:{}}", "", indent + 1);
  }
  out += "]";
}

std::string Tensor::str(int64_t max_per_dim) const {
  if (!defined()) return "tensor(undefined)";
  const std::vector<double> vals = to_vector();
  std::string body;
  print_rec(body, vals, shape(), 0, 0, std::max<int64_t>(max_per_dim, 2), is_integral(dtype()), 7);
  std::string s = fmt::format("tensor({}, shape={}, dtype={}, device={}", body, shape_str(shape()),
                              dtype_name(dtype()), device().str());
  if (requires_grad()) s += ", requires_grad";
  return s + ")";
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }

}  // namespace somnus
