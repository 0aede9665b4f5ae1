// safetensors read/write (nn/safetensors.h) and atomic writes (nn/file_io.h): round trips of
// every dtype and of non-contiguous inputs, the exact byte layout, validation of corrupt and
// truncated files, failure injection proving the old file survives, and load_into strictness.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "nn/file_io.h"
#include "nn/safetensors.h"
#include "tensor/random.h"
#include "testing.h"

using namespace somnus;
using namespace somnus::testing;
namespace fs = std::filesystem;

namespace {

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            (std::string("somnus_st_") + info->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  size_t count_entries() const {
    size_t n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(path_)) ++n;
    return n;
  }

 private:
  fs::path path_;
};

// Plain (non-fsync'd) writes for the many corrupt files: fast, and independent of the code under test.
void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << "cannot write " << path;
}

std::string u64_le(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A file with the given header text and data bytes.
std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string make_file(const std::string& header, const std::string& data) {
  return u64_le(header.size()) + header + data;
}

}  // namespace

// ---------------------------------------------------------------- round trips

TEST(Safetensors, RoundTripEveryDtypeAndLayout) {
  TempDir dir;
  Generator gen(7);
  const Tensor f32 = randn({2, 3}, gen, DType::f32);
  const Tensor f64 = randn({4}, gen, DType::f64);
  const Tensor b16 = randn({3, 2}, gen, DType::bf16);
  const Tensor i32 = randint(-1000, 1000, {5}, gen, DType::i32);
  const Tensor i64 = Tensor::from_vector({-5e15, 3, 0, 9e15}, {2, 2}, DType::i64);
  const Tensor scalar = Tensor::scalar(3.25, DType::f32);
  const Tensor empty = Tensor::zeros({0, 3}, DType::f64);
  const Tensor base = randn({3, 4}, gen, DType::f32);
  const Tensor transposed = base.transpose(0, 1);             // (4, 3), non-contiguous
  const Tensor strided = base.slice(1, 0, 4, 2);              // (3, 2), every other column
  const Tensor b16_t = randn({2, 5}, gen, DType::bf16).transpose(0, 1);  // (5, 2) bf16 view
  ASSERT_FALSE(transposed.is_contiguous());
  ASSERT_FALSE(strided.is_contiguous());

  const NamedTensors in = {{"w.f32", f32}, {"w.f64", f64},   {"w.bf16", b16},       {"ids.i32", i32},
                           {"ids.i64", i64}, {"scalar", scalar}, {"empty", empty},     {"transposed", transposed},
                           {"strided", strided}, {"bf16_t", b16_t}};
  const SafetensorsMetadata meta = {{"format", "pt"}, {"note", "héllo \"quoted\"\n"}};
  const std::string path = dir.file("all.safetensors");
  save_safetensors(path, in, meta);

  const SafetensorsFile f = load_safetensors(path);
  EXPECT_EQ(f.metadata, meta);
  ASSERT_EQ(f.tensors.size(), in.size());
  for (size_t i = 1; i < f.tensors.size(); ++i) EXPECT_LT(f.tensors[i - 1].first, f.tensors[i].first);
  for (const auto& [name, t] : in) {
    const Tensor* got = f.find(name);
    ASSERT_NE(got, nullptr) << name;
    EXPECT_EQ(got->dtype(), t.dtype()) << name;
    EXPECT_EQ(got->shape(), t.shape()) << name;
    EXPECT_TRUE(got->is_contiguous()) << name;
    EXPECT_TRUE(got->device().is_cpu()) << name;
    EXPECT_EQ(raw_bytes(*got), raw_bytes(t)) << name << ": bytes differ";
  }
  // Non-contiguous inputs were written in row-major order of their view.
  EXPECT_EQ(f.at("transposed").to_vector(), transposed.to_vector());
  EXPECT_EQ(f.at("strided").at({2, 1}), base.at({2, 2}));
  EXPECT_EQ(f.at("ids.i64").to_vector()[3], 9e15);
  EXPECT_EQ(f.find("missing"), nullptr);
  expect_contains(error_of([&] { (void)f.at("missing"); }), "missing");

  // Saving the loaded tensors again gives a byte-identical file (deterministic writer).
  const std::string again = dir.file("again.safetensors");
  save_safetensors(again, f.tensors, meta);
  EXPECT_EQ(read_file(again), read_file(path));
  // Input order does not matter.
  NamedTensors reversed(in.rbegin(), in.rend());
  const std::string rev = dir.file("rev.safetensors");
  save_safetensors(rev, reversed, meta);
  EXPECT_EQ(read_file(rev), read_file(path));
}

TEST(Safetensors, HeaderIsAlignedAndOffsetsFollowElementSize) {
  TempDir dir;
  const std::string path = dir.file("a.safetensors");
  save_safetensors(path, {{"z", Tensor::ones({3}, DType::bf16)}, {"a", Tensor::ones({1}, DType::i32)},
                          {"m", Tensor::ones({2}, DType::f64)}});
  const SafetensorsHeader h = read_safetensors_header(path);
  EXPECT_EQ(h.data_start % 8, 0u);
  ASSERT_EQ(h.entries.size(), 3u);
  // f64 first, then i32, then bf16.
  EXPECT_EQ(h.find("m")->begin, 0u);
  EXPECT_EQ(h.find("a")->begin, 16u);
  EXPECT_EQ(h.find("z")->begin, 20u);
  EXPECT_EQ(h.find("z")->end, 26u);
  for (const auto& e : h.entries) EXPECT_EQ(e.begin % dtype_size(e.dtype), 0u) << e.name;
}

// The writer's output, compared byte for byte with a file built by hand from the spec.
TEST(Safetensors, ByteExactLayout) {
  TempDir dir;
  const std::string path = dir.file("exact.safetensors");
  save_safetensors(path,
                   {{"b", Tensor::from_vector({1.5, -2.0}, {2}, DType::f32)},
                    {"c", Tensor::from_vector({1.0}, {1}, DType::bf16)},
                    {"a", Tensor::from_vector({7}, {1, 1}, DType::i32)}},
                   {{"format", "pt"}});
  const std::string data = std::string("\x07\x00\x00\x00", 4)     // i32 7
                           + std::string("\x00\x00\xc0\x3f", 4)   // f32 1.5
                           + std::string("\x00\x00\x00\xc0", 4)   // f32 -2
                           + std::string("\x80\x3f", 2);          // bf16 1.0
  std::string header =
      R"({"__metadata__":{"format":"pt","somnus.xxh64":")" + hex64(xxh64(data.data(), data.size())) + R"("},)"
      R"("a":{"dtype":"I32","shape":[1,1],"data_offsets":[0,4]},)"
      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},)"
      R"("c":{"dtype":"BF16","shape":[1],"data_offsets":[12,14]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  const std::string expected = u64_le(header.size()) + header + data;
  const std::string got = read_file(path);
  EXPECT_EQ(got.size(), expected.size());
  EXPECT_EQ(got, expected);
  EXPECT_EQ(header.size() % 8, 0u);
}

// Files from other writers (different key order, no padding, whitespace, extra entry fields
// ignored, no metadata) load.
TEST(Safetensors, ReadsHandBuiltFile) {
  TempDir dir;
  const std::string path = dir.file("hand.safetensors");
  const std::string header =
      "  {\"y\": {\"shape\": [], \"data_offsets\": [8, 16], \"dtype\": \"F64\"},\n"
      "   \"x\": {\"data_offsets\": [0, 8], \"dtype\": \"I64\", \"shape\": [1]}}\n";
  double y = -0.125;
  int64_t x = 123456789012345;
  std::string data(16, '\0');
  std::memcpy(data.data(), &x, 8);
  std::memcpy(data.data() + 8, &y, 8);
  write_raw(path, make_file(header, data));
  const SafetensorsFile f = load_safetensors(path);
  EXPECT_TRUE(f.metadata.empty());
  ASSERT_EQ(f.tensors.size(), 2u);
  EXPECT_EQ(f.tensors[0].first, "x");
  EXPECT_EQ(f.at("x").dtype(), DType::i64);
  EXPECT_EQ(f.at("x").item(), 123456789012345.0);
  EXPECT_EQ(f.at("y").dim(), 0);
  EXPECT_EQ(f.at("y").item(), -0.125);
}

// ---------------------------------------------------------------- corrupt input

TEST(Safetensors, EveryTruncationThrows) {
  TempDir dir;
  Generator gen(3);
  const std::string good = dir.file("good.safetensors");
  save_safetensors(good, {{"a", randn({3, 5}, gen)}, {"b", randn({7}, gen, DType::bf16)}}, {{"k", "v"}});
  const std::string bytes = read_file(good);
  ASSERT_NO_THROW(load_safetensors(good));
  const std::string bad = dir.file("bad.safetensors");
  for (size_t len = 0; len < bytes.size(); ++len) {
    write_raw(bad, bytes.substr(0, len));
    const std::string msg = error_of([&] { load_safetensors(bad); });
    expect_contains(msg, bad);
    EXPECT_THROW(read_safetensors_header(bad), Error) << "truncated to " << len;
  }
  // Trailing garbage is rejected too.
  write_raw(bad, bytes + "xx");
  expect_contains(error_of([&] { load_safetensors(bad); }), "cover");
}

TEST(Safetensors, CorruptHeadersThrowClearErrors) {
  TempDir dir;
  const std::string path = dir.file("c.safetensors");
  const std::string data8(8, '\x01');
  auto load_msg = [&](const std::string& file_bytes) {
    write_raw(path, file_bytes);
    return error_of([&] { load_safetensors(path); });
  };
  auto header_msg = [&](const std::string& header, const std::string& data = std::string(8, '\x01')) {
    return load_msg(make_file(header, data));
  };

  // Sizes and lengths.
  expect_contains(load_msg(""), "too short");
  expect_contains(load_msg("abc"), "too short");
  expect_contains(load_msg(u64_le(~0ull) + "{}"), "exceeds");
  expect_contains(load_msg(u64_le(200'000'000) + "{}"), "limit");
  expect_contains(load_msg(u64_le(100) + "{}"), "exceeds");
  expect_contains(load_msg(u64_le(0)), "empty header");
  // Not JSON / not an object.
  expect_contains(header_msg("{not json", ""), "not valid JSON");
  expect_contains(header_msg("{\"a\":{\"dtype\":\"F32\",", ""), "not valid JSON");
  expect_contains(header_msg("[1, 2]", ""), "must be a JSON object");
  expect_contains(header_msg("\"str\"", ""), "must be a JSON object");
  expect_contains(header_msg(std::string("{\0}", 3), ""), "not valid JSON");
  // Entries.
  expect_contains(header_msg(R"({"t":5})", ""), "tensor 't'");
  expect_contains(header_msg(R"({"t":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}})"), "unsupported dtype 'F16'");
  expect_contains(header_msg(R"({"t":{"shape":[2],"data_offsets":[0,8]}})"), "\"dtype\"");
  expect_contains(header_msg(R"({"t":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})"), "\"dtype\"");
  expect_contains(header_msg(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})"), "non-negative");
  expect_contains(header_msg(R"({"t":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})"), "non-negative");
  expect_contains(header_msg(R"({"t":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})"), "\"shape\"");
  expect_contains(header_msg(R"({"t":{"dtype":"F32","data_offsets":[0,8]}})"), "\"shape\"");
  expect_contains(header_msg(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})"), "data_offsets");
  expect_contains(header_msg(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,-8]}})"), "data_offsets");
  expect_contains(header_msg(R"({"t":{"dtype":"F32","shape":[2]}})"), "data_offsets");
  expect_contains(header_msg(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})"), "end before");
  // Shape and byte count disagree.
  expect_contains(header_msg(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})"), "need 12 bytes");
  expect_contains(header_msg(R"({"t":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})"), "need 16 bytes");
  // Shapes whose byte size overflows 64 bits.
  expect_contains(header_msg(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})"),
                  "too large");
  expect_contains(header_msg(R"({"t":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})"),
                  "too large");
  // Offsets outside the data buffer.
  expect_contains(header_msg(R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})"), "outside the data buffer");
  expect_contains(header_msg(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[18446744073709551607,18446744073709551615]}})"),
                  "outside");
  // Overlap, gap, duplicates.
  expect_contains(header_msg(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})"),
                  "overlap");
  expect_contains(header_msg(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})"), "gap");
  expect_contains(header_msg(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})"), "cover 4 bytes");
  expect_contains(header_msg(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                             R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})"),
                  "'a' appears more than once");
  // Metadata.
  expect_contains(header_msg(R"({"__metadata__":{"k":1}})", ""), "must be a string");
  expect_contains(header_msg(R"({"__metadata__":[]})", ""), "__metadata__");
  // The error names the tensor.
  expect_contains(header_msg(R"({"layer.0.weight":{"dtype":"X","shape":[2],"data_offsets":[0,8]}})"),
                  "tensor 'layer.0.weight'");
  // A missing file, a directory.
  expect_contains(error_of([&] { load_safetensors(dir.file("nope.safetensors")); }), "cannot open");
  expect_contains(error_of([&] { load_safetensors(dir.file("")); }), "regular file");
}

// Random corruption of a valid file: every outcome is a clean load or a somnus::Error.
TEST(Safetensors, RandomByteFlipsNeverCrash) {
  TempDir dir;
  Generator gen(11);
  const std::string good = dir.file("good.safetensors");
  save_safetensors(good, {{"a", randn({4, 3}, gen)}, {"b", randint(0, 9, {5}, gen, DType::i64)}}, {{"x", "y"}});
  const std::string bytes = read_file(good);
  const std::string bad = dir.file("bad.safetensors");
  std::mt19937 rng(123);
  int errors = 0;
  for (int iter = 0; iter < 300; ++iter) {
    std::string b = bytes;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < flips; ++k) {
      // Mostly the length and header, where the structure is.
      const size_t limit = (rng() % 4 == 0) ? b.size() : std::min<size_t>(b.size(), 8 + 120);
      b[rng() % limit] = static_cast<char>(rng() & 0xff);
    }
    write_raw(bad, b);
    try {
      load_safetensors(bad);
    } catch (const Error&) {
      ++errors;
    }
  }
  EXPECT_GT(errors, 200);  // almost every corruption is caught (not: equivalent whitespace, renamed keys)
}

// Every corrupt byte inside the data buffer is caught by the checksum.
TEST(Safetensors, ChecksumCatchesEveryDataByteFlip) {
  TempDir dir;
  Generator gen(13);
  const Tensor a = randn({3, 4}, gen), b = randn({5}, gen, DType::bf16);
  const std::string good = dir.file("good.safetensors");
  save_safetensors(good, {{"a", a}, {"b", b}});
  const std::string bytes = read_file(good);
  const SafetensorsHeader h = read_safetensors_header(good);
  ASSERT_TRUE(h.has_checksum);
  EXPECT_TRUE(h.metadata.empty()) << "the checksum is not returned as user metadata";
  const std::string bad = dir.file("bad.safetensors");
  Tensor ta = Tensor::full({3, 4}, -1.0), tb = Tensor::full({5}, -1.0, DType::bf16);
  for (size_t pos = h.data_start; pos < bytes.size(); ++pos) {
    std::string b2 = bytes;
    b2[pos] = static_cast<char>(b2[pos] ^ 0x10);
    write_raw(bad, b2);
    expect_contains(error_of([&] { load_safetensors(bad); }), "checksum mismatch");
    EXPECT_THROW(load_into(bad, {{"a", ta}, {"b", tb}}), Error) << "byte " << pos;
  }
  // load_into verified before copying: the targets are untouched.
  for (double v : ta.to_vector()) EXPECT_EQ(v, -1.0);
  for (double v : tb.to_vector()) EXPECT_EQ(v, -1.0);
  // A malformed checksum field.
  write_raw(bad, make_file(R"({"__metadata__":{"somnus.xxh64":"XYZ"}})", ""));
  expect_contains(error_of([&] { load_safetensors(bad); }), "16 lowercase hex digits");
  // A file whose checksum is right loads.
  write_raw(bad, make_file(R"({"__metadata__":{"somnus.xxh64":")" + hex64(xxh64("abcd", 4)) +
                               R"("},"t":{"dtype":"I32","shape":[],"data_offsets":[0,4]}})",
                           "abcd"));
  EXPECT_EQ(load_safetensors(bad).at("t").item(), static_cast<double>(0x64636261));
}

// XXH64 against the reference implementation's published values, and streaming = one shot.
TEST(Checksum, Xxh64KnownValuesAndStreaming) {
  EXPECT_EQ(xxh64("", 0), 0xEF46DB3751D8E999ull);
  EXPECT_EQ(xxh64("a", 1), 0xD24EC4F1A98C6E5Bull);
  EXPECT_EQ(xxh64("abc", 3), 0x44BC2CF5AD770999ull);
  const std::string s = "Nobody inspects the spammish repetition";
  EXPECT_EQ(xxh64(s.data(), s.size()), 0xFBCEA83C8A378BF1ull);
  std::string long_text;
  for (int i = 0; i < 300; ++i) long_text += static_cast<char>(i * 7 + 3);
  const uint64_t whole = xxh64(long_text.data(), long_text.size());
  for (size_t split : {0, 1, 7, 31, 32, 33, 64, 100, 299}) {
    Xxh64 h;
    h.update(long_text.data(), split);
    h.update(long_text.data() + split, 5 < long_text.size() - split ? 5 : long_text.size() - split);
    const size_t done = split + (5 < long_text.size() - split ? 5 : long_text.size() - split);
    h.update(long_text.data() + done, long_text.size() - done);
    EXPECT_EQ(h.digest(), whole) << "split at " << split;
  }
  EXPECT_NE(xxh64(long_text.data(), long_text.size() - 1), whole);
  EXPECT_NE(xxh64(long_text.data(), long_text.size(), 1), whole);
}

// ---------------------------------------------------------------- atomic writes

TEST(AtomicWrite, FailureLeavesOldFileIntact) {
  TempDir dir;
  Generator gen(5);
  const std::string path = dir.file("ckpt.safetensors");
  save_safetensors(path, {{"w", randn({16, 8}, gen)}}, {{"version", "1"}});
  const std::string old_bytes = read_file(path);
  const NamedTensors v2 = {{"w", randn({16, 8}, gen)}, {"extra", randn({3}, gen, DType::f64)}};
  ASSERT_EQ(dir.count_entries(), 1u);

  // Fail after 0 bytes, inside the length, inside the header, inside the data.
  for (int64_t n : {0, 5, 8, 40, 200, 600}) {
    set_atomic_write_fail_after_bytes(n);
    const std::string msg = error_of([&] { save_safetensors(path, v2, {{"version", "2"}}); });
    expect_contains(msg, "injected");
    expect_contains(msg, path);
    EXPECT_EQ(read_file(path), old_bytes) << "old file changed after a failure at byte " << n;
    EXPECT_EQ(dir.count_entries(), 1u) << "temporary file left behind after a failure at byte " << n;
    EXPECT_EQ(load_safetensors(path).metadata.at("version"), "1");
  }
  // Fail after every byte was written and fsync'd, at the rename.
  set_atomic_write_fail_before_rename(true);
  EXPECT_THROW(save_safetensors(path, v2, {{"version", "2"}}), Error);
  EXPECT_EQ(read_file(path), old_bytes);
  EXPECT_EQ(dir.count_entries(), 1u);

  // The faults were one-shot: the next write succeeds and replaces the file.
  save_safetensors(path, v2, {{"version", "2"}});
  EXPECT_EQ(load_safetensors(path).metadata.at("version"), "2");
  EXPECT_EQ(dir.count_entries(), 1u);

  // A plain atomic_write too, and a write into a missing directory.
  const std::string txt = dir.file("t.txt");
  atomic_write(txt, "old");
  set_atomic_write_fail_after_bytes(2);
  EXPECT_THROW(atomic_write(txt, "new contents"), Error);
  EXPECT_EQ(read_file(txt), "old");
  atomic_write(txt, "new");
  EXPECT_EQ(read_file(txt), "new");
  expect_contains(error_of([&] { atomic_write(dir.file("no/such/dir/f"), "x"); }), "temporary file");
  expect_contains(error_of([&] { read_file(dir.file("absent")); }), "absent");
}

// ---------------------------------------------------------------- writer errors

TEST(Safetensors, SaveRejectsBadInput) {
  TempDir dir;
  const std::string path = dir.file("s.safetensors");
  const Tensor t = Tensor::ones({2});
  expect_contains(error_of([&] { save_safetensors(path, {{"a", t}, {"a", t}}); }), "'a' is given more than once");
  expect_contains(error_of([&] { save_safetensors(path, {{"u", Tensor()}}); }), "'u' is undefined");
  expect_contains(error_of([&] { save_safetensors(path, {{"__metadata__", t}}); }), "reserved");
  expect_contains(error_of([&] { save_safetensors(path, {{"a", t}}, {{"somnus.xxh64", "0"}}); }), "reserved");
  EXPECT_FALSE(fs::exists(path));
  EXPECT_EQ(dir.count_entries(), 0u);
}

// ---------------------------------------------------------------- load_into

TEST(Safetensors, LoadIntoIsStrict) {
  TempDir dir;
  Generator gen(9);
  const Tensor a = randn({2, 3}, gen);
  const Tensor b = randn({4}, gen, DType::bf16);
  const std::string path = dir.file("m.safetensors");
  save_safetensors(path, {{"a", a}, {"b", b}}, {{"step", "12"}});

  // Success: values land in the targets, including a non-contiguous view.
  Tensor storage_a = Tensor::zeros({3, 2});
  Tensor ta = storage_a.transpose(0, 1);  // (2, 3) view
  Tensor tb = Tensor::zeros({4}, DType::bf16);
  const SafetensorsMetadata meta = load_into(path, {{"a", ta}, {"b", tb}});
  EXPECT_EQ(meta.at("step"), "12");
  EXPECT_EQ(ta.to_vector(), a.to_vector());
  EXPECT_EQ(raw_bytes(tb), raw_bytes(b));

  auto untouched = [](const Tensor& t) {
    for (double v : t.to_vector()) {
      if (v != -1.0) return false;
    }
    return true;
  };
  Tensor xa = Tensor::full({2, 3}, -1.0);
  Tensor xb = Tensor::full({4}, -1.0, DType::bf16);

  std::string msg = error_of([&] { load_into(path, {{"a", xa}}); });
  expect_contains(msg, "unexpected tensor 'b'");
  msg = error_of([&] { load_into(path, {{"a", xa}, {"b", xb}, {"c", Tensor::zeros({1})}}); });
  expect_contains(msg, "missing tensor 'c'");
  msg = error_of([&] { load_into(path, {{"a", Tensor::full({3, 2}, -1.0)}, {"b", xb}}); });
  expect_contains(msg, "tensor 'a' has shape (2, 3) in the file, expected (3, 2)");
  msg = error_of([&] { load_into(path, {{"a", xa}, {"b", Tensor::full({4}, -1.0, DType::f32)}}); });
  expect_contains(msg, "tensor 'b' has dtype BF16 in the file, expected F32");
  msg = error_of([&] { load_into(path, {{"a", xa}, {"a", xa}, {"b", xb}}); });
  expect_contains(msg, "'a' is given more than once");
  // Nothing was copied by the failed loads (all checks run before any copy).
  EXPECT_TRUE(untouched(xa));
  EXPECT_TRUE(untouched(xb));
  // A truncated file is an error for load_into too.
  const std::string bytes = read_file(path);
  const std::string cut = dir.file("cut.safetensors");
  write_raw(cut, bytes.substr(0, bytes.size() - 3));
  EXPECT_THROW(load_into(cut, {{"a", xa}, {"b", xb}}), Error);
  EXPECT_TRUE(untouched(xa));
}
