// Resource errors during a checkpoint save (issue 8 §6), beyond the injected faults of
// test_checkpoint.cpp: a real write error from the kernel. RLIMIT_FSIZE below the size of
// model.safetensors makes write(2) fail with EFBIG mid-file (SIGXFSZ ignored for the test);
// the save must throw somnus::Error naming the file and the system error, leave no staging
// directory, and leave the previous checkpoint as `latest`, intact and loadable. (The
// injected faults of nn/file_io's test hook are covered by test_checkpoint.cpp.)
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>

#include "autograd/engine.h"
#include "nn/checkpoint.h"
#include "nn/file_io.h"
#include "nn/optim.h"
#include "nn/train_config.h"
#include "nn/transformer.h"
#include "tensor/random.h"
#include "tests/testing.h"

namespace somnus::nn {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using somnus::testing::error_of;
using somnus::testing::expect_contains;

struct TempDir {
  std::string path;
  TempDir() {
    path = (fs::temp_directory_path() / ("somnus_relio_" + std::to_string(::getpid()) + "_" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

struct TinyRun {
  std::shared_ptr<Transformer> model;
  std::unique_ptr<AdamW> opt;
  TinyRun() {
    TransformerConfig c;
    c.vocab_size = 64;
    c.n_layer = 1;
    c.n_embd = 32;
    c.n_head = 2;
    c.block_size = 8;
    Generator gen(3);
    model = std::make_shared<Transformer>(c, gen);
    opt = std::make_unique<AdamW>(transformer_param_groups(*model, 1e-2, 0.0));
  }
  void step() {
    Generator g(opt->step_count() + 1);
    const Tensor ids = randint(0, 64, {2, 8}, g);
    opt->zero_grad();
    backward(model->loss(ids, ids).ce);
    opt->step();
  }
  CheckpointSave contents() const {
    CheckpointSave save;
    save.model = model.get();
    save.model_config = json(model->config());
    save.optimizer = opt.get();
    save.state.step = opt->step_count();
    return save;
  }
};

// Sets RLIMIT_FSIZE (and ignores SIGXFSZ) for a scope.
struct FileSizeLimit {
  rlimit old{};
  void (*old_handler)(int);
  explicit FileSizeLimit(rlim_t bytes) {
    ::getrlimit(RLIMIT_FSIZE, &old);
    old_handler = std::signal(SIGXFSZ, SIG_IGN);
    rlimit lim = old;
    lim.rlim_cur = bytes;
    EXPECT_EQ(::setrlimit(RLIMIT_FSIZE, &lim), 0);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &old);
    std::signal(SIGXFSZ, old_handler);
  }
};

void expect_previous_intact(const std::string& root, const std::string& good_model) {
  EXPECT_EQ(*latest_checkpoint(root), root + "/ckpt-00000001");
  EXPECT_FALSE(fs::exists(root + "/ckpt-00000002"));
  for (const auto& e : fs::directory_iterator(root)) {
    EXPECT_EQ(e.path().filename().string().find(".partial"), std::string::npos) << e.path();
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
  }
  EXPECT_EQ(read_file(root + "/ckpt-00000001/model.safetensors"), good_model);
  TinyRun fresh;
  EXPECT_EQ(load_checkpoint(resolve_checkpoint(root), *fresh.model, fresh.opt.get()).step, 1);
}

TEST(ReliabilityIo, RealWriteErrorKeepsThePreviousCheckpoint) {
  TempDir dir;
  TinyRun run;
  run.step();
  save_checkpoint(dir.path, run.contents());
  const std::string good_model = read_file(dir.path + "/ckpt-00000001/model.safetensors");
  ASSERT_GT(good_model.size(), 8192u);
  run.step();
  std::string msg;
  {
    FileSizeLimit limit(good_model.size() / 2);
    msg = error_of([&] { save_checkpoint(dir.path, run.contents()); });
  }
  expect_contains(msg, "model.safetensors");
  expect_contains(msg, "File too large");
  expect_previous_intact(dir.path, good_model);
  // With room again, the same save succeeds.
  save_checkpoint(dir.path, run.contents());
  EXPECT_EQ(*latest_checkpoint(dir.path), dir.path + "/ckpt-00000002");
}

}  // namespace
}  // namespace somnus::nn
