// somnus report: read a training run's metrics.jsonl, print the evaluation table (markdown)
// and plot the train and validation loss curves with gnuplot.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "nn/file_io.h"
#include "tensor/format.h"
#include "tools/cli_common.h"

namespace somnus::tools {

namespace {

struct ReportOptions {
  std::string metrics;
  std::string plot;
  std::string title = "somnus training run";
};

struct Row {
  int64_t step = 0;
  double loss = 0, eval_loss = -1, eval_ppl = -1, tokens_per_s = 0;
};

std::vector<Row> read_metrics(const std::string& path) {
  std::istringstream lines(read_file(path));
  std::vector<Row> rows;
  std::string line;
  for (int64_t n = 1; std::getline(lines, line); ++n) {
    if (line.empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail("report: {} line {} is not JSON: {}", path, n, e.what());
    }
    SOMNUS_CHECK(j.is_object() && j.contains("step") && j.contains("loss"),
                 "report: {} line {} has no 'step' and 'loss'", path, n);
    Row r;
    r.step = j["step"].get<int64_t>();
    // A step the training guard skipped for a non-finite loss has "loss": null (JSON has no NaN).
    r.loss = j["loss"].is_number() ? j["loss"].get<double>() : std::nan("");
    r.tokens_per_s = j.value("tokens_per_s", 0.0);
    if (j.contains("eval_loss") && j["eval_loss"].is_number()) {
      r.eval_loss = j["eval_loss"].get<double>();
      r.eval_ppl = j.value("eval_ppl", -1.0);
    }
    rows.push_back(r);
  }
  SOMNUS_CHECK(!rows.empty(), "report: {} holds no metrics", path);
  return rows;
}

// One row per evaluation, and a last row for the steps after the last evaluation (a run
// without evaluations gets one row). The train loss column is the mean over the steps since
// the previous row, which is steadier than a single step's value; it is labelled so, since
// `somnus train` prints the step's own loss at the same step.
void print_table(const std::vector<Row>& rows) {
  fmt::print("| {:>6} | {:>15} | {:>8} | {:>8} | {:>9} |\n", "step", "mean train loss", "val loss", "val ppl", "tokens/s");
  fmt::print("|-------:|----------------:|---------:|---------:|----------:|\n");
  double sum = 0, tok = 0;
  int64_t n = 0, n_loss = 0;  // rows, and rows with a finite loss (skipped steps have none)
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    if (std::isfinite(r.loss)) {
      sum += r.loss;
      ++n_loss;
    }
    tok += r.tokens_per_s;
    ++n;
    const double mean = n_loss > 0 ? sum / double(n_loss) : std::nan("");
    if (r.eval_loss >= 0) {
      fmt::print("| {:>6} | {:>15.4f} | {:>8.4f} | {:>8.2f} | {:>9.0f} |\n", r.step, mean, r.eval_loss, r.eval_ppl,
                 tok / double(n));
    } else if (i + 1 == rows.size()) {
      fmt::print("| {:>6} | {:>15.4f} | {:>8} | {:>8} | {:>9.0f} |\n", r.step, mean, "-", "-", tok / double(n));
    } else {
      continue;
    }
    sum = tok = 0;
    n = n_loss = 0;
  }
  fmt::print("mean train loss: over the steps since the previous row (`somnus train` prints each step's own loss; "
             "step {}: {:.4f})\n",
             rows.back().step, rows.back().loss);
  const auto skipped = std::count_if(rows.begin(), rows.end(), [](const Row& r) { return !std::isfinite(r.loss); });
  if (skipped > 0)
    fmt::print("{} step(s) without a finite loss (skipped by the training guard) are left out of the means and the plot\n",
               skipped);
}

void write_plot(const std::vector<Row>& rows, const ReportOptions& o) {
  const std::filesystem::path png(o.plot);
  const std::string stem = (png.parent_path() / png.stem()).string();
  const std::string train_csv = stem + "_train.csv", eval_csv = stem + "_eval.csv", script = stem + ".gp";
  bool any_eval = false;
  {
    std::ofstream tr(train_csv), ev(eval_csv);
    for (const Row& r : rows) {
      if (std::isfinite(r.loss)) tr << r.step << ',' << r.loss << '\n';  // a skipped step: a gap
      if (r.eval_loss >= 0) {
        ev << r.step << ',' << r.eval_loss << '\n';
        any_eval = true;
      }
    }
  }
  {
    std::ofstream gp(script);
    gp << "set terminal pngcairo size 900,520 noenhanced\n"
       << "set output " << gnuplot_quote(o.plot) << "\n"
       << "set datafile separator ','\n"
       << "set title " << gnuplot_quote(o.title) << "\n"
       << "set xlabel 'step'\nset ylabel 'cross-entropy (nats/token)'\nset grid\nset key top right\n";
    // One step: explicit ranges and a marker (autoscaling one point is an "empty x range" warning).
    const bool one = rows.front().step == rows.back().step;
    if (one) gp << "set xrange [" << rows.front().step - 1 << ":" << rows.front().step + 1 << "]\nset yrange [0:*]\n";
    gp << "plot " << gnuplot_quote(train_csv) << " using 1:2 with " << (one ? "points" : "lines")
       << " lc rgb '#9ecae1' title 'train (per step)'";
    // A run without evaluations has no validation curve (gnuplot warns on an empty data file).
    if (any_eval)
      gp << ", " << gnuplot_quote(eval_csv) << " using 1:2 with linespoints lw 2 lc rgb '#d62728' title 'validation'";
    gp << "\n";
  }
  const int rc = run_gnuplot(script);
  if (rc == 0) {
    fmt::print("plot: {}\n", o.plot);
  } else {
    fmt::print("plot: gnuplot failed (exit {}); the data is in {} and {}\n", rc, train_csv, eval_csv);
  }
}

}  // namespace

void add_report_command(CLI::App& app) {
  auto opts = std::make_shared<ReportOptions>();
  auto* cmd = app.add_subcommand("report", "Print a run's evaluation table and plot its loss curves");
  cmd->add_option("--metrics", opts->metrics, "metrics.jsonl written by `somnus train`")->required();
  cmd->add_option("--plot", opts->plot, "PNG to write (default: beside the metrics, loss.png)");
  cmd->add_option("--title", opts->title, "Plot title")->capture_default_str();
  cmd->callback([opts] {
    if (opts->plot.empty()) {
      opts->plot = (std::filesystem::path(opts->metrics).parent_path() / "loss.png").string();
    }
    const std::vector<Row> rows = read_metrics(opts->metrics);
    print_table(rows);
    write_plot(rows, *opts);
  });
}

}  // namespace somnus::tools
