// The library end to end in one page: build a Llama-style LM, train it a few AdamW steps on
// random tokens (it memorises them), then sample from it. Built as build/tools/example_tiny_lm.
#include <iostream>
#include "autograd/engine.h"
#include "nn/generate.h"
#include "nn/optim.h"
#include "nn/train_config.h"
#include "nn/transformer.h"
using namespace somnus;

int main() {
  Generator gen(0);
  // vocab 256, 2 layers, width 64, 4 query heads over 2 kv heads, context 64
  nn::TransformerConfig cfg = nn::TransformerConfig::llama_style(256, 2, 64, 4, 2, 64);
  nn::Transformer model(cfg, gen);
  AdamW opt(nn::transformer_param_groups(model, /*lr=*/3e-3, /*weight_decay=*/0.1));
  Tensor ids = randint(0, 256, {4, 33}, gen);                    // (B, T+1)
  Tensor x = ids.slice(1, 0, 32).contiguous(), y = ids.slice(1, 1, 33).contiguous();
  for (int step = 0; step < 20; ++step) {
    opt.zero_grad();
    nn::LMLoss loss = model.loss(x, y);                            // mean cross-entropy (+ MoE aux)
    backward(loss.total(/*aux_weight=*/0.01));
    opt.step();
    if (step % 5 == 0) std::cout << "step " << step << " loss " << loss.ce.item() << "\n";
  }
  nn::GenerateConfig g;
  g.max_new_tokens = 16;
  g.temperature = 0.8;
  nn::GenerateResult out = nn::generate(model, {{1, 2, 3}}, g);   // tokens + per-token log-probs
  std::cout << out.sequences[0].tokens.size() << " tokens\n";
}
