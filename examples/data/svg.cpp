// svg.cpp — line and grouped bar charts as standalone SVG (see svg.hpp).
#include "svg.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>

#include "error.hpp"

namespace edgetune::svg {

namespace {

// Okabe-Ito: distinguishable with the common forms of color blindness.
constexpr const char* palette[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                   "#E69F00", "#56B4E9", "#F0E442", "#000000"};
const char* color(std::size_t i) {
    return palette[i % (sizeof palette / sizeof palette[0])];
}

std::string escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        switch (c) {
            case '&':
                out += "&amp;";
                break;
            case '<':
                out += "&lt;";
                break;
            case '>':
                out += "&gt;";
                break;
            case '"':
                out += "&quot;";
                break;
            default:
                out += c;
        }
    }
    return out;
}

std::string num(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", v);
    return buf;
}

std::string text(double x, double y, const std::string& s, const char* anchor = "middle",
                 int size = 12, const char* extra = "") {
    return "<text x=\"" + num(x) + "\" y=\"" + num(y) + "\" text-anchor=\"" + anchor +
           "\" font-size=\"" + std::to_string(size) + "\"" + extra + ">" + escape(s) + "</text>\n";
}

std::string line(double x1, double y1, double x2, double y2, const char* stroke,
                 const char* extra = "") {
    return "<line x1=\"" + num(x1) + "\" y1=\"" + num(y1) + "\" x2=\"" + num(x2) + "\" y2=\"" +
           num(y2) + "\" stroke=\"" + stroke + "\"" + extra + "/>\n";
}

// A tick step of 1, 2 or 5 x 10^k giving about `target` intervals over `range`.
double nice_step(double range, int target = 5) {
    if (!(range > 0.0)) return 1.0;
    const double raw = range / target;
    const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
    const double f = raw / magnitude;
    return magnitude * (f < 1.5 ? 1.0 : f < 3.5 ? 2.0 : f < 7.5 ? 5.0 : 10.0);
}

std::string tick_label(double v, double step) {
    const int decimals = std::max(0, -static_cast<int>(std::floor(std::log10(step) + 1e-9)));
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.*f", decimals, std::abs(v) < step * 1e-6 ? 0.0 : v);
    return buf;
}

// An axis range extended to whole steps, with its step.
struct Axis {
    double lo, hi, step;
    Axis(double min, double max, bool pad) {
        if (!std::isfinite(min) || !std::isfinite(max)) min = 0.0, max = 1.0;
        if (max <= min) {
            const double half = min == 0.0 ? 0.5 : std::abs(min) * 0.1;
            min -= half;
            max += half;
        }
        step = nice_step(max - min);
        lo = pad ? std::floor(min / step + 1e-9) * step : min;
        hi = pad ? std::ceil(max / step - 1e-9) * step : max;
    }
};

// The frame of one panel: plot area and the mapping of values to pixels.
struct Frame {
    double left, top, right, bottom;
    Axis x, y;
    double px(double v) const { return left + (v - x.lo) / (x.hi - x.lo) * (right - left); }
    double py(double v) const { return bottom - (v - y.lo) / (y.hi - y.lo) * (bottom - top); }
};

double legend_width(const std::vector<std::string>& names) {
    std::size_t longest = 0;
    for (const auto& n : names) longest = std::max(longest, n.size());
    return names.empty() ? 0.0 : std::min(200.0, 34.0 + 6.6 * static_cast<double>(longest));
}

std::string legend(double x, double y, const std::vector<std::string>& names,
                   const std::vector<bool>& dashed, bool boxes) {
    std::string s;
    for (std::size_t i = 0; i < names.size(); ++i) {
        const double row = y + 18.0 * static_cast<double>(i);
        if (boxes)
            s += "<rect x=\"" + num(x) + "\" y=\"" + num(row - 9) +
                 "\" width=\"18\" height=\"10\" fill=\"" + color(i) + "\"/>\n";
        else
            s += line(
                x, row - 4, x + 18, row - 4, color(i),
                dashed[i] ? " stroke-width=\"2\" stroke-dasharray=\"5,3\"" : " stroke-width=\"2\"");
        s += text(x + 24, row, names[i], "start", 11);
    }
    return s;
}

// Title, grid, ticks and axis labels of a frame.
std::string axes(const Frame& f, double ox, double height, const std::string& title,
                 const std::string& x_label, const std::string& y_label, bool x_ticks) {
    std::string s;
    s += text((f.left + f.right) / 2, 22, title, "middle", 14, " font-weight=\"bold\"");
    for (double v = f.y.lo; v <= f.y.hi + f.y.step * 1e-6; v += f.y.step) {
        const double y = f.py(v);
        s += line(f.left, y, f.right, y, "#e0e0e0");
        s += text(f.left - 6, y + 4, tick_label(v, f.y.step), "end", 11);
    }
    if (x_ticks)
        for (double v = f.x.lo; v <= f.x.hi + f.x.step * 1e-6; v += f.x.step) {
            const double x = f.px(v);
            s += line(x, f.bottom, x, f.bottom + 4, "#333");
            s += text(x, f.bottom + 17, tick_label(v, f.x.step), "middle", 11);
        }
    s += line(f.left, f.bottom, f.right, f.bottom, "#333");
    s += line(f.left, f.top, f.left, f.bottom, "#333");
    if (!x_label.empty()) s += text((f.left + f.right) / 2, height - 8, x_label, "middle", 12);
    if (!y_label.empty()) {
        const double x = ox + 16, y = (f.top + f.bottom) / 2;
        s += text(x, y, y_label, "middle", 12,
                  (" transform=\"rotate(-90 " + num(x) + " " + num(y) + ")\"").c_str());
    }
    return s;
}

std::string render_line(const LineChart& c, double ox, double w, double h) {
    double x_min = std::numeric_limits<double>::infinity(), x_max = -x_min;
    double y_min = x_min, y_max = -x_min;
    std::vector<std::string> names;
    std::vector<bool> dashed;
    for (const Series& s : c.series) {
        names.push_back(s.name);
        dashed.push_back(s.dashed);
        for (std::size_t i = 0; i < std::min(s.x.size(), s.y.size()); ++i) {
            if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
            x_min = std::min(x_min, s.x[i]);
            x_max = std::max(x_max, s.x[i]);
            y_min = std::min(y_min, s.y[i]);
            y_max = std::max(y_max, s.y[i]);
        }
    }
    if (c.y_min) y_min = *c.y_min;
    if (c.y_max) y_max = *c.y_max;
    const double lw = legend_width(names);
    Frame f{ox + 64,
            40,
            ox + w - 16 - (lw > 0 ? lw + 8 : 0),
            h - 44,
            Axis(x_min, x_max, false),
            Axis(y_min, y_max, !c.y_min && !c.y_max)};
    if (c.y_min) f.y.lo = *c.y_min;
    if (c.y_max) f.y.hi = *c.y_max;
    // Whole-number x values (epochs, sessions) get whole-number ticks.
    bool integral = true;
    for (const Series& ser : c.series)
        for (double v : ser.x) integral = integral && (!std::isfinite(v) || v == std::round(v));
    if (integral && f.x.step < 1.0) f.x.step = 1.0;
    std::string s = axes(f, ox, h, c.title, c.x_label, c.y_label, true);
    for (std::size_t k = 0; k < c.series.size(); ++k) {
        const Series& ser = c.series[k];
        std::string points;
        std::size_t count = 0;
        for (std::size_t i = 0; i < std::min(ser.x.size(), ser.y.size()); ++i) {
            if (!std::isfinite(ser.x[i]) || !std::isfinite(ser.y[i])) continue;
            points += num(f.px(ser.x[i])) + "," + num(f.py(ser.y[i])) + " ";
            ++count;
        }
        s += "<polyline fill=\"none\" stroke=\"" + std::string(color(k)) + "\" stroke-width=\"2\"" +
             (ser.dashed ? " stroke-dasharray=\"5,3\"" : "") + " points=\"" + points + "\"/>\n";
        if (c.markers && count <= 60)
            for (std::size_t i = 0; i < std::min(ser.x.size(), ser.y.size()); ++i)
                if (std::isfinite(ser.x[i]) && std::isfinite(ser.y[i]))
                    s += "<circle cx=\"" + num(f.px(ser.x[i])) + "\" cy=\"" + num(f.py(ser.y[i])) +
                         "\" r=\"3\" fill=\"" + color(k) + "\"/>\n";
    }
    s += legend(f.right + 12, f.top + 10, names, dashed, false);
    return s;
}

std::string render_bars(const BarChart& c, double ox, double w, double h) {
    double y_min = 0.0, y_max = 0.0;
    for (const BarGroup& g : c.groups)
        for (double v : g.values)
            if (std::isfinite(v)) y_min = std::min(y_min, v), y_max = std::max(y_max, v);
    if (c.y_max) y_max = *c.y_max;
    const double lw = legend_width(c.series);
    Frame f{ox + 64,
            40,
            ox + w - 16 - (lw > 0 ? lw + 8 : 0),
            h - 44,
            Axis(0.0, std::max<double>(1.0, static_cast<double>(c.groups.size())), false),
            Axis(y_min, y_max, !c.y_max)};
    if (c.y_max) f.y.hi = *c.y_max;
    std::string s = axes(f, ox, h, c.title, "", c.y_label, false);
    const double group_w =
        (f.right - f.left) / std::max<double>(1.0, static_cast<double>(c.groups.size()));
    const double bar_w =
        group_w * 0.8 / std::max<double>(1.0, static_cast<double>(c.series.size()));
    const double zero = f.py(std::max(f.y.lo, 0.0));
    for (std::size_t g = 0; g < c.groups.size(); ++g) {
        const double gx = f.left + group_w * static_cast<double>(g);
        s += text(gx + group_w / 2, f.bottom + 17, c.groups[g].label, "middle", 12);
        for (std::size_t k = 0; k < c.groups[g].values.size(); ++k) {
            const double v = c.groups[g].values[k];
            if (!std::isfinite(v)) continue;
            const double x = gx + group_w * 0.1 + bar_w * static_cast<double>(k);
            const double y = f.py(std::min(v, f.y.hi));
            s += "<rect x=\"" + num(x) + "\" y=\"" + num(std::min(y, zero)) + "\" width=\"" +
                 num(bar_w * 0.92) + "\" height=\"" + num(std::abs(zero - y)) + "\" fill=\"" +
                 color(k) + "\"/>\n";
            if (c.value_decimals >= 0) {
                char buf[32];
                std::snprintf(buf, sizeof buf, "%.*f", c.value_decimals, v);
                s += text(x + bar_w * 0.46, std::min(y, zero) - 3, buf, "middle",
                          bar_w < 26 ? 8 : 10);
            }
        }
    }
    s +=
        legend(f.right + 12, f.top + 10, c.series, std::vector<bool>(c.series.size(), false), true);
    return s;
}

}  // namespace

std::string render(const std::vector<Chart>& panels, const Layout& layout) {
    const double w = layout.panel_width, h = layout.panel_height;
    const std::size_t n = std::max<std::size_t>(1, panels.size());
    const std::size_t columns =
        layout.columns > 0 ? std::min(n, static_cast<std::size_t>(layout.columns)) : n;
    const std::size_t rows = (n + columns - 1) / columns;
    const std::string width = std::to_string(layout.panel_width * static_cast<int>(columns));
    const std::string height = std::to_string(layout.panel_height * static_cast<int>(rows));
    std::string s = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
    s += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + width + "\" height=\"" + height +
         "\" viewBox=\"0 0 " + width + " " + height +
         "\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n";
    s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    for (std::size_t i = 0; i < panels.size(); ++i) {
        // Each panel draws at x offset ox in a group shifted down to its row.
        const double ox = w * static_cast<double>(i % columns);
        s += "<g transform=\"translate(0 " + num(h * static_cast<double>(i / columns)) + ")\">\n";
        if (const auto* lc = std::get_if<LineChart>(&panels[i]))
            s += render_line(*lc, ox, w, h);
        else
            s += render_bars(std::get<BarChart>(panels[i]), ox, w, h);
        s += "</g>\n";
    }
    return s + "</svg>\n";
}

void write_file(const std::string& path, const std::vector<Chart>& panels, const Layout& layout) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << render(panels, layout);
    out.close();
    if (!out) throw StorageError("[svg] cannot write '" + path + "'");
}

}  // namespace edgetune::svg
