// `somnus experiment`: the reproduction suite (sleep/experiment.h, PARADIGM.md §5).
//
//   somnus experiment --list
//   somnus experiment clinc150 [--config tiny|gpu|cfg.json] [--set key=value ...] [--out DIR]
//                              [--overwrite] [--no-plot]
//
// Writes DIR/result.json (every seed's metrics and the mean ± std), DIR/table.md, and the
// plots with gnuplot: bars.png (the first table metric per method, ± std), and when the
// experiment reports them curves.png (average accuracy over the seen tasks after each task:
// the forgetting curves) and heatmap.png (the accuracy matrix of each method, seed mean; chrF
// for translation), each with its .gp script and .dat data.
// A DIR that holds a previous run's files is refused (before the run) unless --overwrite,
// which removes them (after the run, before writing; only the files an experiment writes,
// is_experiment_output) so that the folder never mixes two runs.
// Prints the table and progress lines ("[done/total] label | elapsed").
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "nn/file_io.h"
#include "sleep/experiment.h"
#include "tensor/format.h"
#include "tools/cli_common.h"

namespace somnus::tools {

namespace {

using nlohmann::json;
namespace fs = std::filesystem;

struct ExperimentOptions {
  std::string name;
  std::string config = "tiny";
  std::vector<std::string> sets;
  std::string out;
  bool list = false;
  bool no_plot = false;
  bool overwrite = false;
  std::string device = "cpu";
};

// Whether `name` is a file `somnus experiment` writes into its output folder (write_plots and
// run): result.json, table.md, the plots' .png/.gp/.dat, curve_<method>.dat, matrix_<method>.dat,
// and atomic_write's temporary result.json.tmp.* / table.md.tmp.* left by a killed run.
bool is_experiment_output(const std::string& name) {
  static const std::set<std::string> fixed = {"result.json", "table.md",  "bars.dat",  "bars.gp",    "bars.png",
                                              "curves.gp",   "curves.png", "heatmap.gp", "heatmap.png"};
  if (fixed.count(name) != 0) return true;
  const auto framed = [&](const std::string& prefix, const std::string& suffix) {
    return name.size() > prefix.size() + suffix.size() && name.compare(0, prefix.size(), prefix) == 0 &&
           name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return framed("curve_", ".dat") || framed("matrix_", ".dat") || name.rfind("result.json.tmp.", 0) == 0 ||
         name.rfind("table.md.tmp.", 0) == 0;
}

// The files of a previous run in `dir` (none when it does not exist): result.json and table.md
// first, then the rest by name.
std::vector<std::string> previous_run_files(const fs::path& dir) {
  std::vector<std::string> out;
  if (!fs::is_directory(dir)) return out;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    if (e.is_directory()) continue;
    const std::string name = e.path().filename().string();
    if (is_experiment_output(name)) out.push_back(name);
  }
  const auto rank = [](const std::string& n) { return n == "result.json" ? 0 : n == "table.md" ? 1 : 2; };
  std::sort(out.begin(), out.end(), [&](const std::string& a, const std::string& b) {
    return rank(a) != rank(b) ? rank(a) < rank(b) : a < b;
  });
  return out;
}

// Runs gnuplot on `script`; a missing gnuplot is a warning (the data files stay).
void gnuplot(const fs::path& script) {
  const int rc = run_gnuplot(script);
  if (rc != 0) fmt::print("plot: gnuplot failed (exit {}) on {}\n", rc, script.string());
}

void write_plots(const sleep::ExperimentResult& r, const fs::path& dir) {
  std::vector<json> agg;
  for (const auto& m : r.methods) agg.push_back(m.aggregate());
  const std::string title = r.experiment;

  // Bars: the first table metric, mean ± std per method.
  if (!r.table_metrics.empty()) {
    const std::string key = r.table_metrics.front();
    const fs::path dat = dir / "bars.dat";
    double top = 0;  // the highest bar + error bar
    {
      std::ofstream f(dat);
      for (size_t i = 0; i < r.methods.size(); ++i) {
        if (!agg[i].contains(key)) continue;
        const double mean = agg[i][key]["mean"].get<double>(), sd = agg[i][key]["std"].get<double>();
        f << i << " \"" << r.methods[i].method << "\" " << mean << " " << sd << "\n";
        if (std::isfinite(mean + sd)) top = std::max(top, mean + sd);
      }
    }
    std::ofstream gp(dir / "bars.gp");
    // yrange [0:*] with every bar at 0 (e.g. all accuracies 0) is an empty range gnuplot warns about.
    gp << "set terminal pngcairo size 800,480 noenhanced\nset output " << gnuplot_quote((dir / "bars.png").string()) << "\n"
       << "set title " << gnuplot_quote(fmt::format("{}: {} (mean ± std over seeds)", title, key)) << "\n"
       << "set style fill solid 0.6\nset boxwidth 0.6\nset yrange [0:" << (top > 0 ? "*" : "1") << "]\nset grid ytics\n"
       << "plot " << gnuplot_quote(dat.string()) << " using 1:3:xtic(2) with boxes notitle, '' using 1:3:4 with yerrorbars lc rgb 'black' notitle\n";
    gp.close();
    gnuplot(dir / "bars.gp");
  }

  // Curves: avg_acc_curve per method.
  bool any_curve = false;
  for (const auto& a : agg) any_curve |= a.contains("avg_acc_curve");
  if (any_curve) {
    std::ofstream gp(dir / "curves.gp");
    gp << "set terminal pngcairo size 800,480 noenhanced\nset output " << gnuplot_quote((dir / "curves.png").string()) << "\n"
       << "set title " << gnuplot_quote(title + ": average accuracy over the tasks seen so far") << "\n"
       << "set xlabel 'tasks learned'\nset xtics 1\nset ylabel 'accuracy'\nset yrange [0:1]\nset grid\n"
       << "set key outside right\n";
    std::string plot = "plot ";
    for (size_t i = 0; i < r.methods.size(); ++i) {
      if (!agg[i].contains("avg_acc_curve")) continue;
      const fs::path dat = dir / fmt::format("curve_{}.dat", r.methods[i].method);
      std::ofstream f(dat);
      const json& c = agg[i]["avg_acc_curve"];
      for (size_t k = 0; k < c.size(); ++k) {
        if (c[k].is_object()) f << k + 1 << " " << c[k]["mean"].get<double>() << " " << c[k]["std"].get<double>() << "\n";
      }
      plot += fmt::format("{}{} using 1:2:3 with yerrorlines title {}", plot == "plot " ? "" : ", ", gnuplot_quote(dat.string()),
                          gnuplot_quote(r.methods[i].method));
    }
    gp << plot << "\n";
    gp.close();
    gnuplot(dir / "curves.gp");
  }

  // Heatmaps: the accuracy matrix (seed mean) of each method side by side, one box per measured
  // cell coloured by the palette (a task not yet learned has no cell: gnuplot's `matrix with
  // image` warned about those undefined cells, twice per method).
  bool any_matrix = false;
  for (const auto& a : agg) any_matrix |= a.contains("matrix");
  if (any_matrix) {
    std::ofstream gp(dir / "heatmap.gp");
    gp << "set terminal pngcairo size " << 360 * r.methods.size() << ",380 noenhanced\nset output "
       << gnuplot_quote((dir / "heatmap.png").string()) << "\n"
       << "set multiplot layout 1," << r.methods.size() << " title "
       << gnuplot_quote(title + ": " + r.matrix_label + " after task i (y) on task j (x)") << "\n"
       << "set cbrange [0:" << r.matrix_max << "]\nset palette defined (0 'white', 1 'dark-green')\n"
       << "set style fill solid 1.0 border lc rgb 'gray80'\n"
       << "set xlabel 'task j'\nset ylabel 'after task i'\nset xtics 1\nset ytics 1\n";
    for (size_t i = 0; i < r.methods.size(); ++i) {
      if (!agg[i].contains("matrix")) continue;
      const fs::path dat = dir / fmt::format("matrix_{}.dat", r.methods[i].method);
      std::ofstream f(dat);
      // "j i accuracy" per measured cell (i: after task i, j: on task j, from 0).
      const json& m = agg[i]["matrix"];
      const size_t rows = m.size();
      size_t cols = 0, cells = 0;
      for (size_t ri = 0; ri < m.size(); ++ri) {
        for (size_t ci = 0; ci < m[ri].size(); ++ci) {
          if (!m[ri][ci].is_object()) continue;  // not measured (a task not yet learned): no cell
          f << ci << " " << ri << " " << m[ri][ci]["mean"].get<double>() << "\n";
          ++cells;
        }
        cols = std::max(cols, m[ri].size());
      }
      f.close();
      if (cells == 0) continue;  // nothing measured: an empty data file is another gnuplot warning
      gp << "set title " << gnuplot_quote(r.methods[i].method) << "\n"
         << fmt::format("set xrange [-0.5:{}]\nset yrange [{}:-0.5]\n", static_cast<double>(cols) - 0.5,
                        static_cast<double>(rows) - 0.5)
         << "plot " << gnuplot_quote(dat.string())
         << " using 1:2:(0.5):(0.5):3 with boxxyerror fillcolor palette notitle, '' using 1:2:(sprintf('"
         << (r.matrix_max > 1 ? "%.1f" : "%.2f") << "',$3)) with labels notitle\n";
    }
    gp << "unset multiplot\n";
    gp.close();
    gnuplot(dir / "heatmap.gp");
  }
}

void run(const ExperimentOptions& o) {
  // The experiments build their models and batches on the CPU (sleep/exp_*.cpp); the gpu
  // configs are sized for one GPU but have not been wired to a device yet.
  SOMNUS_CHECK(o.device.rfind("cuda", 0) != 0,
               "experiment: --device {}: the experiments run on the CPU only (their models are built there; "
               "--config gpu sizes them for a GPU but still runs on the CPU); use --device cpu",
               o.device);
  (void)parse_device_option(o.device);
  if (o.list || o.name.empty()) {
    for (const std::string& n : sleep::experiment_names())
      fmt::print("{:<16} {}\n", n, sleep::find_experiment(n).description);
    if (!o.list) fmt::print("(give an experiment name)\n");
    return;
  }
  json config;
  if (o.config == "tiny" || o.config == "gpu") {
    config = o.config;
  } else {
    config = json::parse(somnus::read_file(o.config), nullptr, /*allow_exceptions=*/false);
    SOMNUS_CHECK(!config.is_discarded(), "experiment: {} is not valid JSON", o.config);
  }
  std::vector<std::pair<std::string, std::string>> overrides;
  for (const std::string& s : o.sets) {
    const size_t eq = s.find('=');
    SOMNUS_CHECK(eq != std::string::npos && eq > 0, "experiment: --set expects key=value, got '{}'", s);
    overrides.emplace_back(s.substr(0, eq), s.substr(eq + 1));
  }
  // A bad config value or --set (against the schema) is reported before the output folder is
  // looked at or made; a row or method the experiment cannot build is found only when the run
  // starts, after the folder is made (a folder this run made is removed again when the run
  // fails with it still empty). A config file is checked on its own first, so that its errors
  // name the file (the library's name it "experiment <name> config").
  if (!config.is_string()) {
    try {
      (void)sleep::resolve_experiment_config(o.name, config, {});
    } catch (const Error& e) {
      fail("experiment: --config {}: {}", o.config, e.what());
    }
  }
  (void)sleep::resolve_experiment_config(o.name, config, overrides);
  const fs::path dir = o.out.empty() ? fs::path("runs/experiments") / o.name : fs::path(o.out);
  if (!o.overwrite) {
    const std::vector<std::string> old = previous_run_files(dir);
    if (!old.empty()) {
      // Every name, not the first few: --overwrite removes them all, a file of the user's that
      // happens to share a name (a table.md of their own) included.
      std::string names;
      for (size_t i = 0; i < old.size(); ++i) names += (i > 0 ? ", " : "") + old[i];
      fail("experiment: --out {}{} holds a previous run's files ({}); pass --overwrite to replace them (only the "
           "files an experiment writes are removed; other files stay), or give another --out",
           dir.string(), o.out.empty() ? " (the default)" : "", names);
    }
  }
  // Made before the run, so that a folder that cannot be made fails now, not after the run.
  const bool made_here = !fs::exists(dir);
  fs::create_directories(dir);
  const auto t0 = std::chrono::steady_clock::now();
  const sleep::ExperimentResult r = [&] {
    try {
      return sleep::run_experiment(o.name, config, overrides,
                                   [&](const std::string& label, int64_t done, int64_t total) {
                                     const double s =
                                         std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                                     fmt::print("[{}/{}] {} | {:.0f}s\n", done, total, label, s);
                                     std::fflush(stdout);
                                   });
    } catch (...) {
      std::error_code ec;
      if (made_here && fs::is_empty(dir, ec) && !ec) fs::remove(dir, ec);
      throw;
    }
  }();
  // --overwrite: the previous run's files go only now that this run has its result (a run
  // that fails leaves them), so that none of them (plots of rows this run lacks, or every plot
  // under --no-plot) stays next to the new result.
  if (o.overwrite) {
    const std::vector<std::string> old = previous_run_files(dir);
    for (const std::string& name : old) fs::remove(dir / name);
    if (!old.empty()) fmt::print("removed the previous run's {} files in {}\n", old.size(), dir.string());
  }
  somnus::atomic_write((dir / "result.json").string(), r.to_json().dump(2) + "\n");
  const std::string table = r.markdown_table();
  somnus::atomic_write((dir / "table.md").string(),
                   fmt::format("{} ({}; {:.0f} s; seeds {})\n\n{}", r.experiment, r.date, r.seconds,
                               r.config.contains("seeds") ? r.config["seeds"].dump() : "?", table));
  fmt::print("\n{} — {}, {:.0f} s\n\n{}\n", r.experiment, r.date, r.seconds, table);
  if (!o.no_plot) write_plots(r, dir);
  fmt::print("wrote {}/result.json{}\n", dir.string(), o.no_plot ? " and table.md" : ", table.md and the plots");
}

}  // namespace

void add_experiment_command(CLI::App& app) {
  auto opts = std::make_shared<ExperimentOptions>();
  CLI::App* cmd = app.add_subcommand("experiment", "Run a reproduction experiment (PARADIGM §5) over methods and seeds");
  cmd->add_option("name", opts->name, "Experiment name (see --list)");
  cmd->add_flag("--list", opts->list, "List the experiments");
  cmd->add_option("--config", opts->config, "tiny (CPU, default), gpu, or a JSON file merged over tiny");
  cmd->add_option("--set", opts->sets, "Override a config key: --set seeds=[0,1] --set model.n_layer=4");
  cmd->add_option("--out", opts->out,
                  "Output folder (default runs/experiments/<name>); one that holds a previous run's files is "
                  "refused unless --overwrite");
  cmd->add_flag("--overwrite", opts->overwrite,
                "Replace a previous run's files in the output folder: removes only the files an experiment writes "
                "(result.json, table.md, bars/curves/heatmap .png and .gp, bars.dat, curve_*.dat, matrix_*.dat); "
                "other files stay");
  cmd->add_flag("--no-plot", opts->no_plot, "Skip the gnuplot plots");
  add_device_option(cmd, opts->device)->description("cpu (the experiments run on the CPU only)");
  cmd->callback([opts] { run(*opts); });
}

}  // namespace somnus::tools
