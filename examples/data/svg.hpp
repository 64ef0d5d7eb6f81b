// svg.hpp — a tiny, dependency-free SVG writer for the charts the examples and benchmarks
// draw: line charts (learning curves, several series) and grouped bar charts (before/after).
//
//   svg::LineChart curve{.title = "Fashion-MNIST", .x_label = "epoch", .y_label = "accuracy"};
//   curve.series.push_back({.name = "test", .x = {1, 2, 3}, .y = {0.81, 0.85, 0.87}});
//   svg::write_file("curve.svg", {curve});           // one or more panels, side by side
//
// The output is one standalone file (no scripts, no external fonts or stylesheets) that any
// browser or image viewer opens. Axes get "nice" ticks (1, 2, 5 x 10^k); colors come from the
// Okabe-Ito palette (readable with color blindness). Non-finite values are skipped.
// Limits: linear axes only; no log scale, no dual y axis (draw two panels instead).
#pragma once

#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace edgetune::svg {

struct Series {
    std::string name{};
    std::vector<double> x{}, y{};  // same length; points are joined in order
    bool dashed = false;
};

struct LineChart {
    std::string title{}, x_label{}, y_label{};
    std::vector<Series> series{};
    std::optional<double> y_min{}, y_max{};  // unset: fitted to the data (with a nice margin)
    bool markers = true;                     // a dot at every point (skipped past 60 points)
};

// groups[g].values[s] is the bar of series s in group g (e.g. groups "new", "old", "all";
// series "before", "after").
struct BarGroup {
    std::string label{};
    std::vector<double> values{};
};

struct BarChart {
    std::string title{}, y_label{};
    std::vector<std::string> series{};  // legend names, one per value of a group
    std::vector<BarGroup> groups{};
    std::optional<double> y_max{};  // the axis starts at 0 (or the smallest negative value)
    int value_decimals = 1;         // the number printed above each bar; < 0: none
};

using Chart = std::variant<LineChart, BarChart>;

// How panels are laid out: left to right, `columns` per row (0 = all in one row).
struct Layout {
    int panel_width = 560;
    int panel_height = 360;
    int columns = 0;
};

// The SVG text of the panels.
std::string render(const std::vector<Chart>& panels, const Layout& layout = {});

// render() written to `path`. Throws edgetune::StorageError if the file cannot be written.
void write_file(const std::string& path, const std::vector<Chart>& panels,
                const Layout& layout = {});

}  // namespace edgetune::svg
