#include "understudy/node/run_report.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <regex>

#include "understudy/core/errors.hpp"

namespace understudy {

namespace {

/// `text` with &, <, > and " escaped for HTML.
std::string escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
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

std::string fixed(double x, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, x);
  return buf;
}

/// A line without the "[node] " prefix `understudy launch` adds.
std::string unprefixed(const std::string& line) {
  static const std::regex prefix{R"(^\[[A-Za-z0-9_-]+\] )"};
  return std::regex_replace(line, prefix, "", std::regex_constants::format_first_only);
}

// The chart's geometry, in SVG user units.
constexpr double width = 960;
constexpr double height = 360;
constexpr double left = 60;
constexpr double right = 60;
constexpr double top = 20;
constexpr double bottom = 40;

} // namespace

void run_report::add_line(const std::string& raw) {
  static const std::regex progress{R"(step (\d+)/(\d+) loss (\S+) accuracy (\S+))"};
  static const std::regex fault{R"(^(crash|hang|straggler|chaos): (.*)$)"};
  // A node's log line of a crash its supervisor handles.
  static const std::regex exited{
      R"re(child_exited (\S+?)(#\d+)? action=restart.* reason="([^"]*)")re"};
  static const std::regex resumed{
      R"(job_resumed \S+ cost=([\d.]+)us reason="resumed from committed step (\d+); (\d+) steps? lost")"};
  const auto line = unprefixed(raw);
  std::smatch m;
  if (std::regex_search(line, m, progress)) {
    point p;
    p.step = std::stoull(m[1]);
    steps_ = std::max<uint64_t>(steps_, std::stoull(m[2]));
    p.loss = std::strtod(m[3].str().c_str(), nullptr);
    p.accuracy = m[4] == "-" ? -1.0 : std::strtod(m[4].str().c_str(), nullptr);
    if (!std::isfinite(p.loss))
      return;
    // One point per step: a later report of the same step (its evaluation) wins.
    if (!points_.empty() && points_.back().step == p.step)
      points_.back() = p;
    else
      points_.push_back(p);
    return;
  }
  if (std::regex_search(line, m, resumed)) {
    mark k;
    k.step = std::stoull(m[2]);
    k.cost_ms = std::strtod(m[1].str().c_str(), nullptr) / 1000.0;
    k.steps_lost = std::stoull(m[3]);
    k.what = "resumed from committed step " + m[2].str();
    marks_.push_back(std::move(k));
    return;
  }
  if (std::regex_search(line, m, fault) || std::regex_search(line, m, exited)) {
    const bool logged = m.size() == 4;
    mark k;
    k.step = points_.empty() ? 0 : points_.back().step;
    k.what = logged ? "crash: " + m[1].str() + ": " + m[3].str() : m[1].str() + ": " + m[2].str();
    // Actors that fail together (a lost node takes several) are one mark.
    if (logged && !marks_.empty() && !marks_.back().recovery() && marks_.back().step == k.step &&
        marks_.back().what.rfind("crash: ", 0) == 0) {
      ++marks_.back().also;
      return;
    }
    marks_.push_back(std::move(k));
    return;
  }
  if (line.rfind("final:", 0) == 0 || line.rfind("goodput:", 0) == 0)
    summary_.push_back(line);
}

std::string run_report::html() const {
  const uint64_t steps =
      std::max<uint64_t>({steps_, points_.empty() ? 1 : points_.back().step, uint64_t{1}});
  double max_loss = 0;
  for (const auto& p : points_)
    max_loss = std::max(max_loss, p.loss);
  if (max_loss <= 0)
    max_loss = 1;
  const double plot_w = width - left - right;
  const double plot_h = height - top - bottom;
  auto x_of = [&](uint64_t step) {
    return left + plot_w * static_cast<double>(step) / static_cast<double>(steps);
  };
  auto y_of = [&](double v, double max) { return top + plot_h * (1.0 - v / max); };

  std::string loss_pts, acc_pts;
  for (const auto& p : points_) {
    loss_pts += fixed(x_of(p.step), 1) + "," + fixed(y_of(p.loss, max_loss), 1) + " ";
    if (p.accuracy >= 0)
      acc_pts += fixed(x_of(p.step), 1) + "," + fixed(y_of(p.accuracy, 1.0), 1) + " ";
  }

  std::string svg;
  svg += "<svg id=\"curves\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 " +
         fixed(width, 0) + " " + fixed(height, 0) + "\" width=\"" + fixed(width, 0) +
         "\" height=\"" + fixed(height, 0) + "\">\n";
  // Axes, ticks and labels.
  svg += "<rect x=\"" + fixed(left, 0) + "\" y=\"" + fixed(top, 0) + "\" width=\"" +
         fixed(plot_w, 0) + "\" height=\"" + fixed(plot_h, 0) +
         "\" fill=\"#fcfcfc\" stroke=\"#999\"/>\n";
  for (int i = 0; i <= 4; ++i) {
    const double f = i / 4.0;
    const double y = top + plot_h * (1 - f);
    svg += "<line x1=\"" + fixed(left, 0) + "\" x2=\"" + fixed(width - right, 0) + "\" y1=\"" +
           fixed(y, 1) + "\" y2=\"" + fixed(y, 1) + "\" stroke=\"#e4e4e4\"/>\n";
    svg += "<text x=\"" + fixed(left - 6, 0) + "\" y=\"" + fixed(y + 4, 1) +
           "\" text-anchor=\"end\" fill=\"#1f77b4\">" + fixed(max_loss * f, 3) + "</text>\n";
    svg += "<text x=\"" + fixed(width - right + 6, 0) + "\" y=\"" + fixed(y + 4, 1) +
           "\" fill=\"#2ca02c\">" + fixed(f, 2) + "</text>\n";
    const uint64_t s = static_cast<uint64_t>(std::llround(f * static_cast<double>(steps)));
    svg += "<text x=\"" + fixed(x_of(s), 1) + "\" y=\"" + fixed(height - bottom + 16, 0) +
           "\" text-anchor=\"middle\">" + std::to_string(s) + "</text>\n";
  }
  svg += "<text x=\"" + fixed(left + plot_w / 2, 0) + "\" y=\"" + fixed(height - 6, 0) +
         "\" text-anchor=\"middle\">step</text>\n";
  // Faults (red) and recoveries (green, labelled with their cost), numbered as
  // in the table below.
  size_t n = 0;
  for (const auto& k : marks_) {
    ++n;
    const double x = x_of(k.step);
    const char* color = k.recovery() ? "#2ca02c" : "#d62728";
    svg += "<line class=\"" + std::string{k.recovery() ? "recovery" : "fault"} + "\" x1=\"" +
           fixed(x, 1) + "\" x2=\"" + fixed(x, 1) + "\" y1=\"" + fixed(top, 0) + "\" y2=\"" +
           fixed(top + plot_h, 0) + "\" stroke=\"" + color + "\" stroke-dasharray=\"4 3\"><title>" +
           escape(k.what) + "</title></line>\n";
    svg += "<text x=\"" + fixed(x + 3, 1) + "\" y=\"" + fixed(top + 12 + 12.0 * (n % 4), 1) +
           "\" fill=\"" + color + "\" font-size=\"11\">" + std::to_string(n) +
           (k.recovery() ? " (" + fixed(k.cost_ms, 0) + " ms)" : std::string{}) + "</text>\n";
  }
  svg += "<polyline id=\"loss\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"" +
         loss_pts + "\"/>\n";
  svg +=
      "<polyline id=\"accuracy\" fill=\"none\" stroke=\"#2ca02c\" stroke-width=\"2\" "
      "points=\"" +
      acc_pts + "\"/>\n";
  svg += "</svg>\n";

  std::string rows;
  n = 0;
  size_t incidents = 0;
  for (const auto& k : marks_) {
    ++n;
    if (k.recovery())
      ++incidents;
    rows += "<tr class=\"" + std::string{k.recovery() ? "recovery" : "fault"} + "\"><td>" +
            std::to_string(n) + "</td><td>" + std::to_string(k.step) + "</td><td>" +
            escape(k.what) +
            (k.also > 0 ? " (and " + std::to_string(k.also) + " more at this step)" : "") +
            "</td><td>" + (k.recovery() ? fixed(k.cost_ms, 1) + " ms" : std::string{"-"}) +
            "</td><td>" + (k.recovery() ? std::to_string(k.steps_lost) : std::string{"-"}) +
            "</td></tr>\n";
  }

  std::string page;
  page += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" +
          escape(title_) + "</title>\n";
  page +=
      "<style>body{font-family:sans-serif;margin:24px;color:#222}"
      "svg text{font-size:12px;font-family:sans-serif}"
      "table{border-collapse:collapse;margin-top:12px}"
      "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
      "tr.fault td{color:#a01c1c}tr.recovery td{color:#1b7a1b}"
      ".legend span{margin-right:18px}</style>\n</head>\n<body>\n";
  page += "<h1>" + escape(title_) + "</h1>\n";
  for (const auto& s : summary_)
    page += "<p class=\"summary\"><code>" + escape(s) + "</code></p>\n";
  page +=
      "<p class=\"legend\"><span style=\"color:#1f77b4\">&#9644; training loss (left axis)"
      "</span><span style=\"color:#2ca02c\">&#9644; held-out accuracy (right axis)</span>"
      "<span style=\"color:#d62728\">&#9482; fault</span><span style=\"color:#2ca02c\">"
      "&#9482; job running again, with what the incident cost</span></p>\n";
  page += svg;
  page += "<h2>Faults and recoveries (" + std::to_string(incidents) + " incidents)</h2>\n";
  page +=
      "<table id=\"incidents\"><tr><th>#</th><th>step</th><th>what</th><th>cost</th>"
      "<th>steps lost</th></tr>\n" +
      rows + "</table>\n";
  // The browser's own measure of the curves it drew, for readers and tests:
  // the drawn length of each curve in pixels.
  page +=
      "<script>window.addEventListener('load',function(){var s=document.getElementById("
      "'curves');['loss','accuracy'].forEach(function(id){var p=document.getElementById(id);"
      "s.setAttribute('data-'+id+'-length',Math.round(p.getTotalLength()));});});"
      "</script>\n";
  page += "</body>\n</html>\n";
  return page;
}

caf::error run_report::write(const std::string& path) const {
  std::ofstream out{path, std::ios::trunc};
  if (out)
    out << html();
  out.flush();
  if (!out)
    return make_error(state_errc::io_error,
                      "cannot write the report " + path + ": " + std::strerror(errno));
  return {};
}

} // namespace understudy
