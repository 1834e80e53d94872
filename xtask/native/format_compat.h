// Supplies `std::format` for `{}` placeholders on standard libraries that
// lack `<format>` (GCC 12). Force-included into the mlx-c build by
// `cargo xtask build-mlx`; it does nothing where `<format>` exists.
#pragma once
#include <version>

#if !defined(__cpp_lib_format)
#include <sstream>
#include <string>
#include <string_view>

namespace mlx_infer_format_compat {

inline void write(std::ostringstream& out, std::string_view fmt) {
  out << fmt;
}

template <typename T, typename... Rest>
void write(
    std::ostringstream& out,
    std::string_view fmt,
    const T& value,
    const Rest&... rest) {
  const auto pos = fmt.find("{}");
  if (pos == std::string_view::npos) {
    out << fmt;
    return;
  }
  out << fmt.substr(0, pos) << value;
  write(out, fmt.substr(pos + 2), rest...);
}

} // namespace mlx_infer_format_compat

namespace std {
template <typename... Args>
string format(string_view fmt, const Args&... args) {
  ostringstream out;
  mlx_infer_format_compat::write(out, fmt, args...);
  return out.str();
}
} // namespace std
#endif
