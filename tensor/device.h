// Where a tensor lives: the CPU, or CUDA device N.
#pragma once
#include <string>

namespace somnus {

enum class DeviceType : uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  static Device cpu() { return {DeviceType::cpu, 0}; }
  static Device cuda(int i = 0) { return {DeviceType::cuda, i}; }
  static Device parse(const std::string& s);  // "cpu", "cuda", "cuda:1"; throws on anything else

  bool is_cpu() const { return type == DeviceType::cpu; }
  bool is_cuda() const { return type == DeviceType::cuda; }
  bool operator==(const Device&) const = default;
  std::string str() const;
};

// True when the CUDA backend was compiled in and at least one device is visible.
bool cuda_available();
int cuda_device_count();
// True when the CUDA backend was compiled into this build.
bool cuda_compiled();

}  // namespace somnus
