// Argument checks of the bindings with their messages built by hand, not through std::ostream.
//
// The extension can be compiled with another C++ library's headers than the libstdc++ the process loads (a GPU
// image whose newer GCC sits beside the system one). Built that way on an H200 image, the first failed check that
// wrote a number into its message crashed the process (SIGSEGV) instead of raising, while messages of strings and
// devices (formatted inside libc10) raised as they should. So numbers, shapes and dtypes are written here with
// snprintf / std::to_string, in the same text std::ostream gives, and torch receives one finished string.
#pragma once

#include <ATen/ATen.h>

#include <cstdio>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "qvgen/common.h"

namespace qvgen {
namespace message {

template <typename T>
void append(std::string& s, const T& v);

inline void append_list(std::string& s, c10::IntArrayRef v) {
  s += '[';
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(v[i]);
  }
  s += ']';
}

template <typename T>
void append(std::string& s, const T& v) {
  if constexpr (std::is_convertible_v<const T&, std::string_view>) {
    s += std::string_view(v);
  } else if constexpr (std::is_same_v<T, char>) {
    s += v;
  } else if constexpr (std::is_same_v<T, bool>) {
    s += v ? '1' : '0';  // std::ostream's default
  } else if constexpr (std::is_integral_v<T>) {
    s += std::to_string(v);
  } else if constexpr (std::is_floating_point_v<T>) {
    char buf[32];  // std::ostream's default: %g, 6 significant digits
    std::snprintf(buf, sizeof buf, "%g", static_cast<double>(v));
    s += buf;
  } else if constexpr (std::is_same_v<T, c10::ScalarType>) {
    s += c10::toString(v);
  } else if constexpr (std::is_same_v<T, c10::Device>) {
    s += v.str();  // formatted in libc10
  } else if constexpr (std::is_convertible_v<const T&, c10::IntArrayRef>) {
    append_list(s, c10::IntArrayRef(v));
  } else {
    static_assert(sizeof(T) == 0, "qvgen::message::append: no text for this type");
  }
}

}  // namespace message

template <typename... Args>
std::string message_of(const Args&... args) {
  std::string s;
  (message::append(s, args), ...);
  return s;
}

}  // namespace qvgen

// torch's checks, the message built only when the condition fails.
#define QVGEN_CHECK(cond, ...) TORCH_CHECK(cond, ::qvgen::message_of(__VA_ARGS__))
#define QVGEN_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, ::qvgen::message_of(__VA_ARGS__))
#define QVGEN_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, ::qvgen::message_of(__VA_ARGS__))

namespace qvgen {

// A code width argument of an op: 3, 4 or 8 bits.
inline void check_bits(const char* op, const char* arg, int64_t bits) {
  QVGEN_CHECK_VALUE(is_packed_bits(static_cast<int>(bits)), op, ": argument '", arg,
                    "' expected one of (3, 4, 8), got ", bits);
}

}  // namespace qvgen
