#include "tensor/device.h"

#include "tensor/cuda/backend.h"
#include "tensor/format.h"

namespace somnus {

Device Device::parse(const std::string& s) {
  if (s == "cpu") return cpu();
  if (s == "cuda") return cuda(0);
  if (s.rfind("cuda:", 0) == 0) {
    const std::string idx = s.substr(5);
    SOMNUS_CHECK(!idx.empty() && idx.find_first_not_of("0123456789") == std::string::npos && idx.size() < 4,
                 "Device::parse: bad device index in '{}'", s);
    return cuda(std::stoi(idx));
  }
  fail("Device::parse: unknown device '{}' (expected cpu, cuda or cuda:N)", s);
}

std::string Device::str() const { return is_cpu() ? "cpu" : fmt::format("cuda:{}", index); }

bool cuda_compiled() {
#ifdef SOMNUS_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int cuda_device_count() { return cuda_compiled() ? cuda::device_count() : 0; }
bool cuda_available() { return cuda_device_count() > 0; }

}  // namespace somnus
