// Tensor: a strided view (shape, strides, offset) onto a refcounted Storage, with a dtype
// and a device. Copying a Tensor copies the handle, not the data.
//
// Member functions here never record autograd history: view/transpose/slice/... are raw
// views. The differentiable versions are the free functions in autograd/functions.h.
// The tensor carries the autograd fields (requires_grad, grad, grad_fn) so that every
// layer can see them, but only autograd/ gives them meaning.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "tensor/device.h"
#include "tensor/dtype.h"
#include "tensor/error.h"
#include "tensor/storage.h"

namespace somnus {

using Shape = std::vector<int64_t>;
using Strides = std::vector<int64_t>;

namespace autograd { struct Node; }

std::string shape_str(const Shape& s);  // "(2, 3)"
int64_t shape_numel(const Shape& s);
Strides contiguous_strides(const Shape& s);
// Numpy broadcasting of two shapes; throws naming `op` when incompatible.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

class Tensor;

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Strides strides;   // in elements
  int64_t offset = 0;  // in elements
  DType dtype = DType::f32;
  // autograd (see autograd/): leaf flag, accumulated grad, and the node that made this tensor
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;
  std::shared_ptr<autograd::Node> grad_fn;
  uint32_t output_nr = 0;
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- factories (all take a device and dtype; RNG ones take a Generator, see random.h)
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor ones(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor arange(int64_t start, int64_t end, int64_t step = 1, DType dtype = DType::i64,
                       Device device = Device::cpu());
  // A CPU tensor from host values (converted to dtype), then moved to `device`.
  static Tensor from_vector(const std::vector<double>& values, const Shape& shape, DType dtype = DType::f32,
                            Device device = Device::cpu());
  static Tensor scalar(double value, DType dtype = DType::f32, Device device = Device::cpu());

  // ---- metadata
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Strides& strides() const { return impl().strides; }
  int64_t offset() const { return impl().offset; }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device(); }
  int64_t dim() const { return static_cast<int64_t>(impl().shape.size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t stride(int64_t d) const;
  int64_t numel() const { return shape_numel(impl().shape); }
  int64_t nbytes() const { return numel() * dtype_size(dtype()); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return impl().storage; }
  TensorImpl& impl() const;
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }

  // Pointer to element 0 of this view.
  void* data_ptr() const;
  template <class T> T* data() const {
    check_dtype(dtype_of<T>::value, "data<T>");
    return static_cast<T*>(data_ptr());
  }

  // ---- views (no copy; share storage)
  Tensor view(const Shape& shape) const;     // requires a compatible (contiguous) layout; one dim may be -1
  Tensor reshape(const Shape& shape) const;  // a view when possible, else a contiguous copy
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;  // python-like bounds
  Tensor select(int64_t dim, int64_t index) const;  // removes `dim`
  Tensor expand(const Shape& shape) const;          // broadcast size-1 dims (stride 0); may prepend dims
  Tensor unsqueeze(int64_t dim) const;
  Tensor squeeze(int64_t dim) const;
  Tensor flatten() const { return reshape({numel()}); }

  // ---- copies
  Tensor contiguous() const;  // self when already contiguous
  Tensor clone() const;       // always a fresh contiguous copy
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  Tensor to(Device device, DType dtype) const;  // self when nothing changes
  Tensor cpu() const { return to(Device::cpu()); }
  // Copy src (any device/dtype/layout, broadcastable to self's shape) into this view.
  void copy_(const Tensor& src) const;
  void fill_(double value) const;

  // ---- host access (copies to CPU as needed)
  std::vector<double> to_vector() const;  // row-major values as double
  double item() const;                    // the single element
  double at(const std::vector<int64_t>& index) const;

  std::string str(int64_t max_per_dim = 6) const;  // readable printing, summarised for large tensors

  // ---- autograd fields (meaningful through autograd/)
  bool requires_grad() const { return impl().requires_grad; }
  Tensor& set_requires_grad(bool r);
  Tensor grad() const { return impl().grad ? Tensor(impl().grad) : Tensor(); }
  void set_grad(const Tensor& g) const { impl().grad = g.impl_; }
  const std::shared_ptr<autograd::Node>& grad_fn() const { return impl().grad_fn; }
  // A new handle on the same data with no autograd history.
  Tensor detach() const;

  void check_dtype(DType expected, const char* op) const;
  void check_device(Device expected, const char* op) const;

 private:
  Tensor make_view(Shape shape, Strides strides, int64_t offset) const;
  std::shared_ptr<TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

// Low-level strided copy with dtype conversion: dst and src on the same device, same shape
// (src may have stride-0 broadcast dims). Used by copy_/contiguous/to and the cast op.
void strided_copy(const Tensor& dst, const Tensor& src);

}  // namespace somnus
