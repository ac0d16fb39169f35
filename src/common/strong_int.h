// StrongInt: an integer that is one thing only (a sequence number, a file offset), so
// that passing one where the other is expected does not compile.
#pragma once

#include <compare>
#include <cstdint>
#include <functional>
#include <ostream>

namespace tidepool {

template <typename Tag, typename Rep = uint64_t>
struct StrongInt {
  Rep value{};

  constexpr StrongInt() = default;
  constexpr explicit StrongInt(Rep v) : value(v) {}

  constexpr auto operator<=>(const StrongInt&) const = default;
  constexpr StrongInt operator+(Rep n) const { return StrongInt(value + n); }
  constexpr StrongInt operator-(Rep n) const { return StrongInt(value - n); }
  constexpr Rep operator-(StrongInt other) const { return value - other.value; }
  constexpr StrongInt& operator++() {
    ++value;
    return *this;
  }
  constexpr StrongInt& operator+=(Rep n) {
    value += n;
    return *this;
  }
  friend std::ostream& operator<<(std::ostream& os, StrongInt v) { return os << v.value; }
};

}  // namespace tidepool

template <typename Tag, typename Rep>
struct std::hash<tidepool::StrongInt<Tag, Rep>> {
  size_t operator()(tidepool::StrongInt<Tag, Rep> v) const noexcept {
    return std::hash<Rep>{}(v.value);
  }
};
