#include "sleep/baselines/training.h"

#include <algorithm>
#include <numeric>

#include "autograd/engine.h"
#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "nn/optim.h"
#include "sleep/lora.h"
#include "tensor/format.h"

namespace somnus::sleep {

nn::Batch make_batch(const std::vector<TrainSequence>& rows, int64_t block_size, int64_t vocab_size) {
  SOMNUS_CHECK(!rows.empty(), "make_batch: no rows");
  int64_t T = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    const auto n = static_cast<int64_t>(rows[r].tokens.size());
    SOMNUS_CHECK(n >= 2, "make_batch: row {} has {} tokens, needs at least 2", r, n);
    SOMNUS_CHECK(n <= block_size + 1, "make_batch: row {} has {} tokens, more than block_size + 1 = {}", r, n,
                 block_size + 1);
    SOMNUS_CHECK(rows[r].loss_start >= 1 && rows[r].loss_start < n,
                 "make_batch: row {}: loss_start {} outside [1, {})", r, rows[r].loss_start, n);
    for (TokenId t : rows[r].tokens)
      SOMNUS_CHECK(t >= 0 && t < vocab_size, "make_batch: row {}: token id {} outside [0, {})", r, t, vocab_size);
    T = std::max(T, n - 1);
  }
  const auto B = static_cast<int64_t>(rows.size());
  std::vector<double> in(static_cast<size_t>(B * T), 0.0), tg(static_cast<size_t>(B * T), nn::kIgnoreIndex),
      mk(static_cast<size_t>(B * T), 0.0);
  nn::Batch batch;
  for (int64_t b = 0; b < B; ++b) {
    const TrainSequence& row = rows[static_cast<size_t>(b)];
    const auto n = static_cast<int64_t>(row.tokens.size());
    for (int64_t t = 0; t + 1 < n; ++t) {
      const auto i = static_cast<size_t>(b * T + t);
      in[i] = row.tokens[static_cast<size_t>(t)];
      if (t + 1 >= row.loss_start) {
        tg[i] = row.tokens[static_cast<size_t>(t + 1)];
        mk[i] = 1.0;
        ++batch.counted_tokens;
      }
    }
  }
  batch.input = Tensor::from_vector(in, {B, T}, DType::i64);
  batch.target = Tensor::from_vector(tg, {B, T}, DType::i64);
  batch.mask = Tensor::from_vector(mk, {B, T}, DType::f32);
  return batch;
}

Tensor sft_loss(nn::Transformer& model, const nn::Batch& batch) {
  const Device dev = model.wte->weight.device();
  return model.loss(batch.input.to(dev), batch.target.to(dev)).ce;
}

std::vector<double> train_sft(nn::Transformer& model, const std::vector<Tensor>& params,
                              const std::vector<TrainSequence>& rows, const SftSteps& opt, Generator& gen,
                              const std::function<Tensor()>& extra_loss) {
  std::vector<double> losses;
  if (rows.empty() || opt.steps <= 0) return losses;
  SOMNUS_CHECK(!params.empty(), "train_sft: no parameters to train");
  const TrainableScope scope(model, params);
  AdamW optim({ParamGroup{.params = params, .lr = opt.lr, .weight_decay = opt.weight_decay, .period = 1, .name = "sft"}});
  const int64_t block = model.config().block_size, vocab = model.config().vocab_size;
  const auto n = static_cast<int64_t>(rows.size());
  const bool subset = opt.batch_size > 0 && opt.batch_size < n;
  const nn::Batch full = subset ? nn::Batch{} : make_batch(rows, block, vocab);
  for (int64_t s = 0; s < opt.steps; ++s) {
    nn::Batch batch;
    if (subset) {
      const std::vector<double> pick = randint(0, n, {opt.batch_size}, gen).to_vector();
      std::vector<TrainSequence> sub;
      for (double i : pick) sub.push_back(rows[static_cast<size_t>(i)]);
      batch = make_batch(sub, block, vocab);
    }
    optim.zero_grad_all();
    Tensor loss = sft_loss(model, subset ? batch : full);
    losses.push_back(loss.item());
    if (extra_loss) loss = loss + extra_loss();
    backward(loss);
    if (opt.grad_clip > 0.0) clip_grad_norm(params, opt.grad_clip);
    optim.step();
  }
  optim.zero_grad_all();
  return losses;
}

std::vector<TrainSequence> text_rows(const std::vector<TokenId>& tokens, int64_t block_size) {
  std::vector<TrainSequence> rows;
  if (tokens.size() < 2) return rows;
  const auto n = static_cast<int64_t>(tokens.size());
  for (int64_t start = 0; start + 1 < n; start += block_size) {
    const int64_t end = std::min(n, start + block_size + 1);
    rows.push_back({std::vector<TokenId>(tokens.begin() + start, tokens.begin() + end), 1});
  }
  return rows;
}

double mean_logprob(nn::Transformer& model, const std::vector<TrainSequence>& rows) {
  NoGradGuard no_grad;
  return -sft_loss(model, make_batch(rows, model.config().block_size, model.config().vocab_size)).item();
}

}  // namespace somnus::sleep
