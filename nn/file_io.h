// Crash-safe file writes and checked whole-file reads (DESIGN.md §4).
//
// atomic_write puts the bytes in a temporary file next to the target (same directory, so
// the rename cannot cross filesystems), fsyncs it, renames it over the target, then fsyncs
// the directory so that the rename itself is durable. A crash or an error at any point
// leaves either the old file or the new one, never a torn one; on error the temporary file
// is removed and somnus::Error names the path and the failed system call.
//
// AtomicFile is the streaming form, so that large outputs (checkpoints) are written piece
// by piece instead of being assembled in memory first:
//   AtomicFile f(path);  f.write(header);  f.write(data, n);  f.commit();
// A destroyed AtomicFile that was not committed removes its temporary file.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace somnus {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);  // creates the temporary file; throws on failure
  ~AtomicFile();                           // removes the temporary file unless committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  // Rewrites bytes already written (offset + n <= bytes_written()), e.g. a checksum field in
  // a header that precedes the data it covers.
  void overwrite(uint64_t offset, const void* data, size_t n);
  // fsync, close, rename over the target, fsync the directory. Once only.
  void commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }
  uint64_t bytes_written() const { return written_; }

 private:
  void abandon() noexcept;  // close and unlink the temporary file
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  uint64_t written_ = 0;
  bool committed_ = false;
};

// Writes `bytes` to `path` atomically (see above).
void atomic_write(const std::string& path, std::string_view bytes);

// The whole file; throws somnus::Error naming the path when it cannot be opened or read.
std::string read_file(const std::string& path);

// XXH64 (xxHash, 64-bit) computed incrementally. Loaders store it beside their data to catch
// what size and offset checks cannot: a flipped byte inside a tensor. Little-endian hosts.
class Xxh64 {
 public:
  explicit Xxh64(uint64_t seed = 0);
  void update(const void* data, size_t n);
  uint64_t digest() const;

 private:
  uint64_t v_[4];
  uint64_t seed_;
  uint64_t total_ = 0;
  unsigned char buf_[32];
  size_t buffered_ = 0;
};
uint64_t xxh64(const void* data, size_t n, uint64_t seed = 0);

// ---- test hooks (thread-local, so parallel tests do not see each other's faults)
// After `n` bytes have gone to the temporary file, the next write fails (n = 0 fails the
// first write); -1 turns the fault off. A fault fires once and then resets itself.
void set_atomic_write_fail_after_bytes(int64_t n);
// When set, commit() fails just before the rename (every byte written and fsync'd).
// Resets itself after firing.
void set_atomic_write_fail_before_rename(bool fail);

}  // namespace somnus
