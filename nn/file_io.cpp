#include "nn/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "tensor/format.h"

namespace somnus {

namespace {

thread_local int64_t fail_after_bytes = -1;
thread_local bool fail_before_rename = false;

std::string errno_str(int e) { return std::strerror(e); }

std::string parent_dir(const std::string& path) {
  std::filesystem::path p(path);
  std::filesystem::path dir = p.parent_path();
  return dir.empty() ? std::string(".") : dir.string();
}

// fsync on the directory makes the rename durable. Some filesystems cannot fsync a
// directory (EINVAL); there the rename is as durable as the filesystem allows.
void fsync_dir(const std::string& dir, const std::string& target) {
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  SOMNUS_CHECK(dfd >= 0, "atomic_write: {}: cannot open directory '{}' to fsync it: {}", target, dir,
               errno_str(errno));
  int rc;
  do rc = ::fsync(dfd);
  while (rc != 0 && errno == EINTR);
  const int err = errno;
  ::close(dfd);
  SOMNUS_CHECK(rc == 0 || err == EINVAL || err == ENOTSUP, "atomic_write: {}: fsync of directory '{}' failed: {}",
               target, dir, errno_str(err));
}

}  // namespace

void set_atomic_write_fail_after_bytes(int64_t n) { fail_after_bytes = n; }
void set_atomic_write_fail_before_rename(bool fail) { fail_before_rename = fail; }

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  SOMNUS_CHECK(!path_.empty(), "atomic_write: empty path");
  static std::atomic<uint64_t> counter{0};
  // O_EXCL with a pid+counter suffix: two writers (threads or processes) never share a
  // temporary file; a stale one from a crash is skipped, not clobbered.
  for (int attempt = 0; attempt < 100; ++attempt) {
    temp_path_ = fmt::format("{}.tmp.{}.{}", path_, static_cast<long>(::getpid()), counter.fetch_add(1));
    fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ >= 0) return;
    if (errno != EEXIST) break;
  }
  const int err = errno;
  temp_path_.clear();
  fail("atomic_write: {}: cannot create a temporary file in '{}': {}", path_, parent_dir(path_), errno_str(err));
}

AtomicFile::~AtomicFile() {
  if (!committed_) abandon();
}

void AtomicFile::abandon() noexcept {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (!temp_path_.empty()) {
    ::unlink(temp_path_.c_str());
    temp_path_.clear();
  }
}

void AtomicFile::write(const void* data, size_t n) {
  if (fd_ < 0 || committed_) {
    fail("atomic_write: {}: write after the file was committed or abandoned", path_);
  }
  const char* p = static_cast<const char*>(data);
  size_t left = n;
  while (left > 0) {
    size_t chunk = left;
    bool inject = false;
    if (fail_after_bytes >= 0) {
      const uint64_t budget = static_cast<uint64_t>(fail_after_bytes);
      if (written_ >= budget) {
        inject = true;
      } else {
        chunk = std::min<uint64_t>(chunk, budget - written_);
      }
    }
    if (inject) {
      fail_after_bytes = -1;
      abandon();
      fail("atomic_write: {}: write failed after {} bytes: injected test fault", path_, written_);
    }
    const ssize_t w = ::write(fd_, p, chunk);
    if (w < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      abandon();
      fail("atomic_write: {}: write failed after {} bytes: {}", path_, written_, errno_str(err));
    }
    p += w;
    left -= static_cast<size_t>(w);
    written_ += static_cast<uint64_t>(w);
  }
}

void AtomicFile::overwrite(uint64_t offset, const void* data, size_t n) {
  if (fd_ < 0 || committed_) {
    fail("atomic_write: {}: overwrite after the file was committed or abandoned", path_);
  }
  SOMNUS_CHECK(offset <= written_ && n <= written_ - offset,
               "atomic_write: {}: overwrite of [{}, {}) beyond the {} bytes written", path_, offset, offset + n,
               written_);
  const char* p = static_cast<const char*>(data);
  size_t done = 0;
  while (done < n) {
    const ssize_t w = ::pwrite(fd_, p + done, n - done, static_cast<off_t>(offset + done));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int err = errno;
      abandon();
      fail("atomic_write: {}: overwrite at offset {} failed: {}", path_, offset + done, errno_str(err));
    }
    done += static_cast<size_t>(w);
  }
}

void AtomicFile::commit() {
  SOMNUS_CHECK(fd_ >= 0 && !committed_, "atomic_write: {}: commit after the file was committed or abandoned", path_);
  int rc;
  do rc = ::fsync(fd_);
  while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    const int err = errno;
    abandon();
    fail("atomic_write: {}: fsync of the temporary file failed: {}", path_, errno_str(err));
  }
  rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) {
    const int err = errno;
    abandon();
    fail("atomic_write: {}: close of the temporary file failed: {}", path_, errno_str(err));
  }
  if (fail_before_rename) {
    fail_before_rename = false;
    abandon();
    fail("atomic_write: {}: rename failed: injected test fault", path_);
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    abandon();
    fail("atomic_write: {}: rename from '{}' failed: {}", path_, temp_path_, errno_str(err));
  }
  committed_ = true;
  temp_path_.clear();
  fsync_dir(parent_dir(path_), path_);
}

void atomic_write(const std::string& path, std::string_view bytes) {
  AtomicFile f(path);
  f.write(bytes);
  f.commit();
}

std::string read_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  SOMNUS_CHECK(fd >= 0, "read_file: cannot open '{}': {}", path, errno_str(errno));
  struct stat st {};
  const bool stat_ok = ::fstat(fd, &st) == 0;
  if (!stat_ok || !S_ISREG(st.st_mode)) {
    const int err = stat_ok ? 0 : errno;
    ::close(fd);
    fail("read_file: '{}' is not a readable regular file{}", path, err ? ": " + errno_str(err) : std::string());
  }
  std::string out;
  out.resize(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < out.size()) {
    const ssize_t r = ::read(fd, out.data() + got, out.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      const int err = r < 0 ? errno : 0;
      ::close(fd);
      fail("read_file: '{}': read {} of {} bytes{}", path, got, out.size(),
           err ? ": " + errno_str(err) : std::string(" (file shrank while reading)"));
    }
    got += static_cast<size_t>(r);
  }
  ::close(fd);
  return out;
}

// ---------------------------------------------------------------- XXH64 (the xxHash spec)

namespace {

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ull;
constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kP3 = 0x165667B19E3779F9ull;
constexpr uint64_t kP4 = 0x85EBCA77C2B2AE63ull;
constexpr uint64_t kP5 = 0x27D4EB2F165667C5ull;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t read64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline uint32_t read32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t xxh_round(uint64_t acc, uint64_t input) {
  acc += input * kP2;
  acc = rotl(acc, 31);
  return acc * kP1;
}
inline uint64_t xxh_merge(uint64_t acc, uint64_t val) {
  acc ^= xxh_round(0, val);
  return acc * kP1 + kP4;
}

}  // namespace

Xxh64::Xxh64(uint64_t seed) : seed_(seed) {
  v_[0] = seed + kP1 + kP2;
  v_[1] = seed + kP2;
  v_[2] = seed;
  v_[3] = seed - kP1;
}

void Xxh64::update(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  total_ += n;
  if (buffered_ + n < 32) {
    if (n > 0) std::memcpy(buf_ + buffered_, p, n);
    buffered_ += n;
    return;
  }
  if (buffered_ > 0) {
    const size_t take = 32 - buffered_;
    std::memcpy(buf_ + buffered_, p, take);
    for (int i = 0; i < 4; ++i) v_[i] = xxh_round(v_[i], read64(buf_ + 8 * i));
    p += take;
    n -= take;
    buffered_ = 0;
  }
  while (n >= 32) {
    for (int i = 0; i < 4; ++i) v_[i] = xxh_round(v_[i], read64(p + 8 * i));
    p += 32;
    n -= 32;
  }
  if (n > 0) std::memcpy(buf_, p, n);
  buffered_ = n;
}

uint64_t Xxh64::digest() const {
  uint64_t h;
  if (total_ >= 32) {
    h = rotl(v_[0], 1) + rotl(v_[1], 7) + rotl(v_[2], 12) + rotl(v_[3], 18);
    for (int i = 0; i < 4; ++i) h = xxh_merge(h, v_[i]);
  } else {
    h = seed_ + kP5;
  }
  h += total_;
  const unsigned char* p = buf_;
  size_t n = buffered_;
  while (n >= 8) {
    h ^= xxh_round(0, read64(p));
    h = rotl(h, 27) * kP1 + kP4;
    p += 8;
    n -= 8;
  }
  if (n >= 4) {
    h ^= static_cast<uint64_t>(read32(p)) * kP1;
    h = rotl(h, 23) * kP2 + kP3;
    p += 4;
    n -= 4;
  }
  while (n > 0) {
    h ^= (*p) * kP5;
    h = rotl(h, 11) * kP1;
    ++p;
    --n;
  }
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

uint64_t xxh64(const void* data, size_t n, uint64_t seed) {
  Xxh64 s(seed);
  s.update(data, n);
  return s.digest();
}

}  // namespace somnus
